"""What a linear model finds in untrained features of the demo's mammograms (docs/experiments.md,
"What a pooled encoder sees first").

An experiment, not part of the package. Command (from the repository root, ~1 minute on 2
cores):
  python docs/experiments/mammogram_features.py

The cohort of docs/experiments/mammogram_learning_curve.py (its seed 100, the demo's 64 x 32
preprocessing), 1,124 patients: a logistic regression on the first 124 (the demo's number of
training mammograms), AUROC on the last 1,000 (validation / test halves), for
* single statistics (no fit): the mean and median intensity inside the breast, and the mean
  over the whole image (what a global average pool of the input computes);
* the features of the demo's 2D ResNet18 (configs/iMGrhpc.py:tiny) at random initialisation,
  batch statistics from the images themselves, globally average pooled (three seeds);
* one random 7 x 7 stride-2 convolution of 64 filters, standardised, ReLU, then averaged over
  the whole image (as a global average pool does) or over the breast only (pixels > 0).
"""

import jax
import numpy as np
from absl import app
from jax import lax
from jax import numpy as jnp
from mammogram_learning_curve import cohort
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mrp_jax import configuration, models

TRAIN, HELD_OUT = 124, 1000


def report(name, features, y, train, held):
  for c in (0.1, 1.0, 10.0):
    fit = LogisticRegression(C=c, max_iter=5000).fit(features[train], y[train])
    print(f"  {name}, C {c:g}: " + " / ".join(
        f"{roc_auc_score(y[h], fit.decision_function(features[h])):.3f}" for h in held))


def main(argv):
  del argv
  x, y, _ = cohort(TRAIN + HELD_OUT, 100, "minmax")
  n = len(y)
  train = np.arange(TRAIN)
  held = (np.arange(n - HELD_OUT, n - HELD_OUT // 2), np.arange(n - HELD_OUT // 2, n))
  inside = [image[image > 0] for image in x]
  print("single statistics, AUROC of minus the value (validation / test):")
  for name, values in (("mean inside the breast", [v.mean() for v in inside]),
                       ("median inside the breast", [np.median(v) for v in inside]),
                       ("mean over the whole image", x.reshape(n, -1).mean(axis=1))):
    values = -np.asarray(values)
    print(f"  {name}: " + " / ".join(f"{roc_auc_score(y[h], values[h]):.3f}" for h in held))

  config = configuration.load("configs/iMGrhpc.py:tiny")
  resnet = models.ResNet(**models.encoder_kwargs(config.model.encoder, 2, config.model.dtype))
  print("logistic regression on 124, validation / test:")
  for seed in range(3):
    variables = resnet.init(jax.random.PRNGKey(seed), jnp.zeros((2, *x.shape[1:], 1)),
                            train=False)
    features = np.concatenate([
        np.asarray(resnet.apply(variables, x[i:i + 256, ..., None], train=True,
                                mutable=["batch_stats"])[0]) for i in range(0, n, 256)])
    report(f"random ResNet18, seed {seed}", features, y, train, held)
  kernel = np.random.default_rng(0).standard_normal((7, 7, 1, 64)).astype(np.float32) / 7
  z = np.asarray(lax.conv_general_dilated(jnp.asarray(x[..., None]), jnp.asarray(kernel), (2, 2),
                                          [(3, 3), (3, 3)],
                                          dimension_numbers=("NHWC", "HWIO", "NHWC")))
  z = np.maximum((z - z.mean(axis=(0, 1, 2))) / z.std(axis=(0, 1, 2)), 0)
  report("random 7x7 stem, ReLU, average pool over the image", z.mean(axis=(1, 2)), y, train,
         held)
  breast = (x[:, ::2, ::2] > 0)[..., None]  # the stem's output grid
  report("the same, average pool over the breast only",
         (z * breast).sum(axis=(1, 2)) / breast.sum(axis=(1, 2)), y, train, held)


if __name__ == "__main__":
  app.run(main)

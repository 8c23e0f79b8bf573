"""A generic self-supervised starting point for the mammogram encoder, judged by a linear probe
(docs/experiments.md, "A contrastive starting point").

An experiment, not part of the package. Commands (from the repository root, ~3 minutes each on 2
cores, plus ~1 minute to draw the cohort):
  python docs/experiments/mammogram_pretext.py --pretext_steps 4000
  python docs/experiments/mammogram_pretext.py --pretext_steps 2000 --views crops

The learning-curve cohort (docs/experiments/mammogram_learning_curve.py, seed 100, 5,000
patients at the demo's 64 x 32): the first 124 are the labelled training set, the last 1,000 are
held out (validation / test halves), and the 3,876 in between are used without their labels.
The demo's 2D ResNet18 (configs/iMGrhpc.py:tiny) with a two-layer projection is trained with a
SimCLR loss (NT-Xent, temperature 0.2, 64 pairs per step): two views of each image by vertical
flips and shifts (``--views flips``) or by flips and SimCLR's random resized crops (``crops``:
25-100% of the area, aspect 3/4-4/3, resized back), no intensity change (an intensity jitter
would teach the encoder to ignore brightness). A logistic regression on the frozen, globally
pooled features of the 124 is scored on the held-out halves at initialisation and four times
during pretraining. Then, as the demo would use the starting point, a linear pCR head on the
pretrained encoder is trained on the 124 (batch 16, flips, AdamW with warm-up and cosine) with
the encoder's learning rate at 1x, 0.1x or 0 (frozen) the head's, two seeds each.
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import mammogram_supervision
import numpy as np
import optax
from absl import app, flags
from mammogram_learning_curve import cohort
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mrp_jax import configuration, models

_STEPS = flags.DEFINE_integer("pretext_steps", 4000, "Contrastive steps.")
_VIEWS = flags.DEFINE_enum("views", "flips", ["flips", "crops"], "How the two views differ.")
TRAIN, HELD_OUT, PATIENTS, PAIRS = 124, 1000, 5000, 64


class Contrastive(nn.Module):
  encoder: dict

  @nn.compact
  def __call__(self, x, train):
    features = models.ResNet(**self.encoder)(x[..., None], train=train)
    return features, nn.Dense(64)(nn.relu(nn.Dense(128)(features)))


@jax.jit
def _resize_crops(images, scale, translation):
  resize = lambda image, s, t: jax.image.scale_and_translate(image, image.shape, (0, 1), s, t,
                                                             "linear")
  return jax.vmap(resize)(images, scale, translation)


def two_views(rng, images):
  flipped = np.where(rng.random(len(images))[:, None, None] < 0.5, images[:, ::-1], images)
  if _VIEWS.value == "flips":
    return np.stack([np.roll(image, (rng.integers(-6, 7), rng.integers(-3, 4)), axis=(0, 1))
                     for image in flipped])
  rows, cols = images.shape[1:]
  area = rng.uniform(0.25, 1.0, len(images))
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), len(images)))
  height = np.clip(np.sqrt(area * aspect) * rows, 4, rows)
  width = np.clip(np.sqrt(area / aspect) * cols, 4, cols)
  corner = np.stack([rng.uniform(0, rows - height), rng.uniform(0, cols - width)], axis=1)
  scale = np.stack([rows / height, cols / width], axis=1)
  return np.asarray(_resize_crops(jnp.asarray(flipped), jnp.asarray(scale, jnp.float32),
                                  jnp.asarray(-corner * scale, jnp.float32)))


def main(argv):
  del argv
  x, y, _ = cohort(PATIENTS, 100, "minmax")
  n = len(y)
  train = np.arange(TRAIN)
  held = (np.arange(n - HELD_OUT, n - HELD_OUT // 2), np.arange(n - HELD_OUT // 2, n))
  unlabelled = np.arange(TRAIN, n - HELD_OUT)
  config = configuration.load("configs/iMGrhpc.py:tiny")
  net = Contrastive(models.encoder_kwargs(config.model.encoder, 2, config.model.dtype))
  variables = net.init(jax.random.PRNGKey(0), jnp.zeros((2, *x.shape[1:])), False)
  params, stats = variables["params"], variables["batch_stats"]
  steps = _STEPS.value
  optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0, 1e-3, 50, steps),
                          weight_decay=1e-4)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, stats, opt_state, a, b):
    def loss(p):
      (_, z), update = net.apply({"params": p, "batch_stats": stats}, jnp.concatenate([a, b]),
                                 True, mutable=["batch_stats"])
      z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
      logits = z @ z.T / 0.2 - 1e9 * jnp.eye(2 * PAIRS)  # never its own pair
      partner = jnp.concatenate([jnp.arange(PAIRS, 2 * PAIRS), jnp.arange(PAIRS)])
      return (optax.softmax_cross_entropy_with_integer_labels(logits, partner).mean(),
              update["batch_stats"])
    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, value

  features = jax.jit(lambda p, s, xb: net.apply({"params": p, "batch_stats": s}, xb, False)[0])

  def probe(when: str) -> None:
    pooled = np.concatenate([np.asarray(features(params, stats, x[i:i + 512]))
                             for i in range(0, n, 512)])
    cells = []
    for c in (0.01, 0.1, 1.0):
      fit = LogisticRegression(C=c, max_iter=5000).fit(pooled[train], y[train])
      cells.append(" / ".join(f"{roc_auc_score(y[h], fit.decision_function(pooled[h])):.3f}"
                              for h in held))
    print(f"{when}: linear probe on 124, C 0.01 / 0.1 / 1, validation / test: "
          + ", ".join(cells), flush=True)

  rng = np.random.default_rng(0)
  probe("initialisation")
  start = time.time()
  for i in range(1, steps + 1):
    batch = x[rng.choice(unlabelled, PAIRS, replace=False)]
    params, stats, opt_state, value = step(params, stats, opt_state, two_views(rng, batch),
                                           two_views(rng, batch))
    if i % max(1, steps // 4) == 0:
      probe(f"step {i} (loss {float(value):.3f}, {time.time() - start:.0f} s)")
  pretrained = {"params": {"trunk": params["ResNet_0"]},
                "batch_stats": {"trunk": stats["ResNet_0"]}}
  for scale in (1.0, 0.1, 0.0):
    for seed in range(2):
      _, (fitted, *out) = mammogram_supervision.train(x, y, train, held, seed, start=pretrained,
                                                      encoder_scale=scale)
      print(f"fine-tuned on 124, encoder learning rate x{scale}, seed {seed}: training "
            f"{fitted:.3f}, validation / test {out[0]:.3f} / {out[1]:.3f}", flush=True)


if __name__ == "__main__":
  app.run(main)

"""The pretrain job's encoder and the encoder options at the demo's scale (docs/pretraining.md).

An experiment, not part of the package. Command (from the repository root, ~15 minutes per seed
on 2 shared cores, plus ~1 minute to draw the cohort):
  python docs/experiments/mammogram_pretraining.py --init_seeds 0
  python docs/experiments/mammogram_pretraining.py --init_seeds 1,2 --conditions 0,4,5,6

The learning-curve cohort (docs/experiments/mammogram_learning_curve.py, seed 100) at the
demo's 64 x 32, 1,450 patients: the first 450 are the labelled training set (the demo trains on
448), the last 1,000 are held out (validation / test halves). The mammogram's own evidence is
the latent mass contrast's AUROC on each half (what the image can tell at most).

Pretraining runs the pretrain job's own step (mrp_jax/training/pretrain.py ``make_step`` with
configs/pretrain.py:tiny: SimCLR, random resized crops and flips, batch 64, AdamW 1e-3) on all
1,450 images without labels; a logistic regression on its frozen pooled features of the 450
(C 0.01) is reported as a linear probe. Each condition then trains the demo's image encoder
(configs/iMGrhpc.py:tiny) with the knowledge predictor's image-only pCR head (Dense 32, ELU,
Dense 1) on the 450 as the demo trains iMGrhpc (200 steps of 16, vertical flips, AdamW 1e-3
with warm-up and cosine, weight decay 1e-4, gradient clipping 1), the optimiser from
``train_step.create_optimizer`` with the condition's encoder fields. Reported: training AUROC,
held-out validation / test AUROC at the last step, and the test AUROC of the step with the best
validation AUROC (checked every 25 steps: the checkpoint choice of train.best_metric).
"""

import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import linen as nn
from mammogram_learning_curve import cohort
from pretext import pretrain_on_images
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mrp_jax import configuration, models
from mrp_jax.core import train_step
from mrp_jax.models.resnet import ResNet

_SEEDS = flags.DEFINE_list("init_seeds", ["0"], "Initialisation seeds (pretraining and training).")
_PRETEXT = flags.DEFINE_integer("pretext_steps", 2000, "Pretraining steps.")
_CONDITIONS = flags.DEFINE_list("conditions", [], "Numbers (0-7) of the conditions to run, in "
                                "CONDITIONS' order; empty: all.")
TRAIN, HELD_OUT, DATA_SEED = 450, 1000, 100
STEPS, BATCH, EVERY = 200, 16, 25

# name -> (pretrained start, train fields, feature dropout)
CONDITIONS = {
    "from scratch (the demo)": (False, {}, 0.0),
    "from scratch, encoder lr x0.1": (False, {"encoder_learning_rate_scale": 0.1}, 0.0),
    "from scratch, encoder weight decay 0.1": (False, {"encoder_weight_decay": 0.1}, 0.0),
    "from scratch, feature dropout 0.5": (False, {}, 0.5),
    "pretrained": (True, {}, 0.0),
    "pretrained, encoder lr x0.1": (True, {"encoder_learning_rate_scale": 0.1}, 0.0),
    "pretrained, encoder frozen": (True, {"encoder_learning_rate_scale": 0.0}, 0.0),
    "pretrained, encoder lr x0.1, feature dropout 0.5": (
        True, {"encoder_learning_rate_scale": 0.1}, 0.5),
}


class ImageOnly(nn.Module):
  """The image encoder and the knowledge predictor's image-only pCR head."""
  encoder: dict
  head_dim: int = 32
  feature_dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train):
    features = ResNet(**self.encoder, name="image_encoder")(x[..., None], train=train)
    if train and self.feature_dropout > 0:
      features = nn.Dropout(self.feature_dropout, deterministic=False)(features)
    hidden = nn.elu(nn.Dense(self.head_dim, name="knowledge_0")(features))
    return nn.Dense(1, name="knowledge_response")(hidden)[:, 0]


def pooled_features(state, model, x):
  """The pretrained encoder's globally pooled features of every image."""
  variables = {"params": state.params["image_encoder"],
               "batch_stats": state.batch_stats["image_encoder"]}
  encoder = ResNet(**model.encoder)
  return np.asarray(jax.jit(lambda v: encoder.apply(variables, v[..., None], train=False))(x))


def train_one(x, y, train_idx, held, seed, start, fields, dropout):
  config = configuration.load("configs/iMGrhpc.py:tiny")
  net = ImageOnly(flax.core.FrozenDict(models.encoder_kwargs(config.model.encoder, 2,
                                                             config.model.dtype)),
                  feature_dropout=dropout)
  variables = net.init(jax.random.key(seed), jnp.zeros((2, *x.shape[1:])), False)
  params, stats = dict(variables["params"]), dict(variables["batch_stats"])
  if start is not None:
    params["image_encoder"] = start.params["image_encoder"]
    stats["image_encoder"] = start.batch_stats["image_encoder"]
  t = dict(config.train.to_dict(), num_steps=STEPS, learning_rate=1e-3,
           warmup_steps=STEPS // 15, **fields)
  optimizer = train_step.create_optimizer(t)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, stats, opt_state, xb, yb, key):
    def loss(p):
      logit, update = net.apply({"params": p, "batch_stats": stats}, xb, True,
                                mutable=["batch_stats"], rngs={"dropout": key})
      return optax.sigmoid_binary_cross_entropy(logit, yb).mean(), update["batch_stats"]
    (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  predict = jax.jit(lambda p, s, xb: net.apply({"params": p, "batch_stats": s}, xb, False))

  def auroc(idx):
    scores = np.concatenate([np.asarray(predict(params, stats, x[idx[i:i + 500]]))
                             for i in range(0, len(idx), 500)])
    return roc_auc_score(y[idx], scores)

  rng = np.random.default_rng(seed)
  best = (-1.0, None)
  for i in range(1, STEPS + 1):
    idx = rng.choice(train_idx, BATCH, replace=False)
    xb = np.where(rng.random(BATCH)[:, None, None] < 0.5, x[idx][:, ::-1], x[idx])
    params, stats, opt_state = step(params, stats, opt_state, xb, y[idx],
                                    jax.random.key(seed * 100_000 + i))
    if i % EVERY == 0:
      validation = auroc(held[0])
      if validation > best[0]:
        best = (validation, (i, auroc(held[1])))
  return [auroc(train_idx), auroc(held[0]), auroc(held[1]), *best[1]]


def main(argv):
  del argv
  start = time.time()
  x, y, contrast = cohort(TRAIN + HELD_OUT, DATA_SEED, "minmax")
  n = len(y)
  train_idx = np.arange(TRAIN)
  held = (np.arange(n - HELD_OUT, n - HELD_OUT // 2), np.arange(n - HELD_OUT // 2, n))
  oracle = [roc_auc_score(y[h], contrast[h]) for h in held]
  print(f"{n} mammograms, pCR rate {y.mean():.3f}, {time.time() - start:.0f} s; the image's "
        f"evidence (latent mass contrast) validation / test {oracle[0]:.3f} / {oracle[1]:.3f}")
  for seed in map(int, _SEEDS.value):
    clock = time.time()
    state, model, losses = pretrain_on_images(x, _PRETEXT.value, seed)
    pooled = pooled_features(state, model, x)
    fit = LogisticRegression(C=0.01, max_iter=5000).fit(pooled[train_idx], y[train_idx])
    probe = [roc_auc_score(y[h], fit.decision_function(pooled[h])) for h in held]
    print(f"seed {seed}: pretraining {len(losses)} steps, loss {np.mean(losses[:50]):.3f} -> "
          f"{np.mean(losses[-50:]):.3f}, {time.time() - clock:.0f} s; linear probe on the 450 "
          f"(C 0.01) validation / test {probe[0]:.3f} / {probe[1]:.3f}", flush=True)
    chosen = [int(c) for c in _CONDITIONS.value] or range(len(CONDITIONS))
    for name, (pretrained, fields, dropout) in (list(CONDITIONS.items())[c] for c in chosen):
      clock = time.time()
      fitted, validation, test, best_step, best_test = train_one(
          x, y, train_idx, held, seed, state if pretrained else None, fields, dropout)
      print(f"  seed {seed} | {name:50s} | training {fitted:.3f} | held-out {validation:.3f} / "
            f"{test:.3f} | best validation at step {best_step}: test {best_test:.3f} | "
            f"{time.time() - clock:.0f} s", flush=True)
  print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)

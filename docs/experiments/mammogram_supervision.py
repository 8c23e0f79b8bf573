"""What the demo's mammogram encoder learns from 124 labelled mammograms, by kind of target
(docs/experiments.md, "What 124 labels can teach the encoder").

An experiment, not part of the package. Command (from the repository root, ~4 minutes on 2
cores, plus ~1 minute to draw the cohort):
  python docs/experiments/mammogram_supervision.py

The learning-curve cohort (docs/experiments/mammogram_learning_curve.py, seed 100, 5,000
patients at the demo's 64 x 32); the demo's encoder (configs/iMGrhpc.py:tiny) with a linear head
trained on the first 124 images as the learning curve trains it (200 steps of 16, flips, AdamW
1e-3); held-out AUROC on the last 1,000 (validation / test halves). Targets:

* structural, one label per image that the image decides: tumour radius above the cohort's
  median, fibroglandular fraction above its median;
* a cue of known strength carried by the same structure: a label drawn from the
  fibroglandular fraction's logit (slope 1.0 or 1.5), so the image alone decides it no better
  than the printed "oracle" AUROC, as pCR is decided by the mass contrast;
* pCR itself (the mass contrast's oracle: the latent's AUROC);
* pCR after supervised pretraining on the 3,876 other labelled mammograms (1,000 steps, the
  same recipe), then a new head on the 124 with the encoder's learning rate at 1x or 0.1x the
  head's, or frozen: a starting point from a larger labelled collection;
* the gland-drawn label again, with the gland fraction itself as an auxiliary regression
  target beside it (as the knowledge predictor learns a table variable from the image), known
  for all or half of the 124: what a cue gains when the table records what carries it.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from flax import linen as nn
from mammogram_learning_curve import HELD_OUT, cohort
from sklearn.metrics import roc_auc_score

from input_pipeline.synthetic import export
from mrp_jax import configuration, models

PATIENTS, TRAIN, SEED = 5000, 124, 100


class ImageOnly(nn.Module):
  encoder: dict

  @nn.compact
  def __call__(self, x, train):
    features = models.ResNet(**self.encoder, name="trunk")(x[..., None], train=train)
    return nn.Dense(1, name="head")(features)[:, 0], nn.Dense(1, name="aux")(features)[:, 0]


def train(x, y, train_idx, held, seed, steps=200, lr=1e-3, start=None, encoder_scale=1.0,
          aux=None):
  """(trained variables, [AUROC on train_idx, on each held-out half]).

  ``aux``: an auxiliary regression target per image (NaN: unknown), learnt beside the label
  with weight 1; None: the label alone."""
  config = configuration.load("configs/iMGrhpc.py:tiny")
  net = ImageOnly(models.encoder_kwargs(config.model.encoder, 2, config.model.dtype))
  variables = net.init(jax.random.PRNGKey(seed), jnp.zeros((2, *x.shape[1:])), False)
  params, stats = dict(variables["params"]), dict(variables["batch_stats"])
  if start is not None:  # a pretrained trunk, a new head
    params["trunk"], stats["trunk"] = start["params"]["trunk"], start["batch_stats"]["trunk"]
  schedule = lambda peak: optax.warmup_cosine_decay_schedule(0, peak, steps // 15, steps)
  decay = config.train.weight_decay
  optimizer = optax.multi_transform(
      {"head": optax.adamw(schedule(lr), weight_decay=decay),
       "trunk": (optax.adamw(schedule(lr * encoder_scale), weight_decay=decay)
                 if encoder_scale > 0 else optax.set_to_zero())},
      {"head": "head", "aux": "head", "trunk": "trunk"})
  aux = np.full(len(y), np.nan, np.float32) if aux is None else aux.astype(np.float32)
  opt_state = optimizer.init(params)
  frozen = encoder_scale == 0  # a frozen trunk keeps its batch statistics too

  @jax.jit
  def step(params, stats, opt_state, xb, yb, ab):
    def loss(p):
      if frozen:
        (logit, guess), new_stats = net.apply({"params": p, "batch_stats": stats}, xb, False), stats
      else:
        (logit, guess), update = net.apply({"params": p, "batch_stats": stats}, xb, True,
                                           mutable=["batch_stats"])
        new_stats = update["batch_stats"]
      known = ~jnp.isnan(ab)
      aux_loss = jnp.sum(jnp.where(known, (guess - jnp.nan_to_num(ab)) ** 2, 0.0))
      return (optax.sigmoid_binary_cross_entropy(logit, yb).mean()
              + aux_loss / jnp.maximum(known.sum(), 1)), new_stats
    (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  predict = jax.jit(lambda p, s, xb: net.apply({"params": p, "batch_stats": s}, xb, False)[0])
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(train_idx, 16, replace=False)
    xb = np.where(rng.random(16)[:, None, None] < 0.5, x[idx][:, ::-1], x[idx])
    params, stats, opt_state = step(params, stats, opt_state, xb, y[idx], aux[idx])

  def auroc(idx):
    scores = np.concatenate([np.asarray(predict(params, stats, x[idx[i:i + 512]]))
                             for i in range(0, len(idx), 512)])
    return roc_auc_score(y[idx], scores)
  return {"params": params, "batch_stats": stats}, [auroc(i) for i in (train_idx, *held)]


def show(name: str, aurocs: list[float]) -> None:
  print(f"  {name:58s} training {aurocs[0]:.3f}, held-out {aurocs[1]:.3f} / {aurocs[2]:.3f}",
        flush=True)


def main(argv):
  del argv
  start = time.time()
  x, y, contrast = cohort(PATIENTS, SEED, "minmax")
  latents = [export.draw_patient(SEED, index, "tiny")[1] for index in range(PATIENTS)]
  radius = np.array([latent.radius_mm[0] for latent in latents])
  gland = np.array([latent.gland_fraction for latent in latents])
  n = len(y)
  held = (np.arange(n - HELD_OUT, n - HELD_OUT // 2), np.arange(n - HELD_OUT // 2, n))
  first = np.arange(TRAIN)
  oracle = lambda score, label: " / ".join(f"{roc_auc_score(label[h], score[h]):.3f}"
                                           for h in held)
  print(f"{n} mammograms, {time.time() - start:.0f} s; held-out AUROC validation / test")
  print("Structural targets (the image decides the label):")
  for name, target in (("radius above the median", radius), ("gland above the median", gland)):
    label = (target > np.median(target)).astype(np.float32)
    for seed in range(2):
      show(f"{name}, seed {seed}", train(x, label, first, held, seed)[1])
  print("The gland fraction as a cue of known strength (label drawn from its logit):")
  z = (np.log(gland) - np.log(gland).mean()) / np.log(gland).std()
  for slope in (1.0, 1.5):
    rng = np.random.default_rng(0)
    label = (rng.random(n) < 1 / (1 + np.exp(-(slope * z - 1.0)))).astype(np.float32)
    print(f"  slope {slope}: rate {label.mean():.2f}, the image decides it at most "
          f"{oracle(z, label)}")
    for seed in range(2):
      show(f"slope {slope}, seed {seed}", train(x, label, first, held, seed)[1])
  print(f"pCR (the mass contrast decides it at most {oracle(contrast, y)}):")
  for seed in range(2):
    show(f"pCR, seed {seed}", train(x, y, first, held, seed)[1])
  others = np.arange(TRAIN, n - HELD_OUT)
  pretrained, fitted = train(x, y, others, held, 0, steps=1000)
  show(f"pCR, trained on the other {len(others)} (1,000 steps)", fitted)
  for scale in (1.0, 0.1, 0.0):
    for seed in range(2):
      show(f"then a new head on the 124, encoder x{scale}, seed {seed}",
           train(x, y, first, held, seed, start=pretrained, encoder_scale=scale)[1])
  print("The gland-drawn label (slope 1.5) with the gland fraction as an auxiliary target:")
  rng = np.random.default_rng(0)
  label = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * z - 1.0)))).astype(np.float32)
  for share in (1.0, 0.5):
    known = np.where(np.random.default_rng(1).random(n) < share, z, np.nan)
    for seed in range(2):
      show(f"auxiliary target known for {share:.0%} of the 124, seed {seed}",
           train(x, label, first, held, seed, aux=known)[1])
  print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)

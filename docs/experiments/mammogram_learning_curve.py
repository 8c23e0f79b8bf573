"""How many labelled mammograms a 2D ResNet18 trained from scratch needs to find the synthetic
cohort's mammogram evidence (docs/experiments.md, "How many mammograms it needs").

An experiment, not part of the package. Command (from the repository root, ~10 minutes on 2
cores):
  python docs/experiments/mammogram_learning_curve.py --patients 5000 --train 124,500,1000,4000

It draws patients as the synthetic export draws them, writes each one's CC view as a DICOM file,
preprocesses it as `prepare` does at the demo's size (64 x 32; segmentation, crop, min-max inside
the breast), and trains the demo's iMGrhpc image encoder (configs/iMGrhpc.py:tiny: ResNet18 at
width 8) with a linear pCR head on the first N patients (flips, AdamW, warm-up + cosine, as the
demo trains). The last 1,000 patients are held out: half 'validation', half 'test'. Reported per
run: AUROC on the training patients and on both held-out halves at four points of training,
beside image statistics that need no training (99th / 50th percentile inside the breast, the
maximum), the latent mass contrast itself (the ceiling), and a logistic regression on each
image's intensity histogram trained on the same N patients. `--normalisation fixed` divides by a
fixed constant instead of min-max, to show what the paper's min-max step keeps of the cue.
"""

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import linen as nn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from input_pipeline.ingestion import mammogram
from input_pipeline.synthetic import export
from input_pipeline.synthetic.dicom_writer import MammogramFileOptions, write_mammogram
from input_pipeline.synthetic.images import render_mammogram
from mrp_jax import configuration, models

_PATIENTS = flags.DEFINE_integer("patients", 5000, "Patients drawn (the last 1,000 held out).")
_TRAIN = flags.DEFINE_list("train", ["124", "500", "1000", "4000"], "Training set sizes.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps per run (the demo: 200).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size (the demo: 16).")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (the demo: 1e-3).")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Initialisation seeds per size.")
_NORM = flags.DEFINE_enum("normalisation", "minmax", ["minmax", "fixed"],
                          "minmax: as prepare does; fixed: divide by a constant instead.")
_DATA_SEED = flags.DEFINE_integer("data_seed", 100, "Cohort seed (the demo uses 0..2).")

HELD_OUT = 1000
SIZE = (64, 32)  # the demo's mammogram


def _fixed_scale(path: Path) -> np.ndarray:
  """prepare's segmentation and crop, then a fixed scale instead of min-max."""
  image, _ = mammogram._decode(path)
  mask = mammogram.segment_breast(image)
  if mammogram._chest_wall_on_right(mask):
    image, mask = image[:, ::-1], mask[:, ::-1]
  rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
  crop = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  return np.clip(mammogram._fit(np.where(mask[crop], image[crop] / 8000.0, 0.0), SIZE), 0, 2)


def cohort(patients: int, seed: int, normalisation: str):
  spec = export.GEOMETRIES["tiny"]
  options = mammogram.MammogramOptions(size=SIZE, dtype="float16")
  images, labels, contrast = [], [], []
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "cc.dcm"
    for index in range(patients):
      clinical, latent, _ = export.draw_patient(seed, index, "tiny")
      rng = np.random.default_rng([seed, index, 6])
      pixels, _ = render_mammogram(rng, latent, spec.mammogram_shape, spec.mammogram_spacing_mm,
                                   "CC")
      write_mammogram(path, pixels, laterality="", view="",
                      tags={"StudyInstanceUID": f"1.2.826.0.1.3680043.8.498.{index + 1}"},
                      options=MammogramFileOptions(bits_stored=14))
      images.append(mammogram.preprocess_mammogram(path, options).astype(np.float32)
                    if normalisation == "minmax" else _fixed_scale(path).astype(np.float32))
      labels.append(clinical.label)
      contrast.append(latent.mass_contrast)
  return np.stack(images), np.asarray(labels, np.float32), np.asarray(contrast)


class ImageOnly(nn.Module):
  encoder: dict

  @nn.compact
  def __call__(self, x, train):
    return nn.Dense(1)(models.ResNet(**self.encoder)(x[..., None], train=train))[:, 0]


def train_once(x, y, train_idx, held, steps, batch, lr, seed):
  config = configuration.load("configs/iMGrhpc.py:tiny")
  model = ImageOnly(models.encoder_kwargs(config.model.encoder, 2, config.model.dtype))
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((2,) + SIZE), False)
  params, stats = variables["params"], variables["batch_stats"]
  optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0, lr, max(1, steps // 15), steps),
                          weight_decay=config.train.weight_decay)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, stats, opt_state, xb, yb):
    def loss(p):
      logit, update = model.apply({"params": p, "batch_stats": stats}, xb, True,
                                  mutable=["batch_stats"])
      return optax.sigmoid_binary_cross_entropy(logit, yb).mean(), update["batch_stats"]
    (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  predict = jax.jit(lambda p, s, xb: model.apply({"params": p, "batch_stats": s}, xb, False))

  def aurocs():
    out = []
    for idx in (train_idx, *held):
      scores = np.concatenate([np.asarray(predict(params, stats, x[idx[i:i + 256]]))
                               for i in range(0, len(idx), 256)])
      out.append(roc_auc_score(y[idx], scores))
    return out

  rng = np.random.default_rng(seed)
  history = []
  for i in range(1, steps + 1):
    idx = rng.choice(train_idx, min(batch, len(train_idx)), replace=False)
    xb = np.where(rng.random(len(idx))[:, None, None] < 0.5, x[idx][:, ::-1], x[idx])
    params, stats, opt_state = step(params, stats, opt_state, xb, y[idx])
    if i % max(1, steps // 4) == 0:
      history.append((i, aurocs()))
  return history


def main(argv):
  del argv
  start = time.time()
  x, y, contrast = cohort(_PATIENTS.value, _DATA_SEED.value, _NORM.value)
  n = len(y)
  held = (np.arange(n - HELD_OUT, n - HELD_OUT // 2), np.arange(n - HELD_OUT // 2, n))
  print(f"{n} mammograms ({_NORM.value}), pCR rate {y.mean():.3f}, {time.time() - start:.0f} s")
  inside = [im[im > 0] for im in x]
  statistics = {
      "latent mass contrast (ceiling)": contrast,
      "99th / 50th percentile": np.array([np.percentile(v, 99) / np.percentile(v, 50)
                                          for v in inside]),
      "maximum": np.array([v.max() for v in inside]),
  }
  for name, value in statistics.items():
    print(f"  {name:32s} AUROC all {roc_auc_score(y, value):.3f}, validation "
          f"{roc_auc_score(y[held[0]], value[held[0]]):.3f}, test "
          f"{roc_auc_score(y[held[1]], value[held[1]]):.3f}")
  # A simple learner on the same training patients: logistic regression on each image's
  # intensity histogram inside the breast (and its cumulative sums).
  top = 1.0 if _NORM.value == "minmax" else float(max(v.max() for v in inside))
  counts = np.stack([np.histogram(v, bins=np.linspace(0, top, 41))[0] / len(v) for v in inside])
  features = np.hstack([counts, np.cumsum(counts, axis=1)])
  for size in map(int, _TRAIN.value):
    cells = []
    for c in (0.1, 1.0, 10.0):
      fit = LogisticRegression(C=c, max_iter=5000).fit(features[:size], y[:size])
      cells.append(" / ".join(f"{roc_auc_score(y[h], fit.decision_function(features[h])):.3f}"
                              for h in held))
    print(f"  histogram regression, N {size:5d}, C 0.1 / 1 / 10: validation / test "
          + ", ".join(cells))
  print("train N | seed | step: AUROC train / validation / test")
  for size in map(int, _TRAIN.value):
    for seed in range(_SEEDS.value):
      history = train_once(x, y, np.arange(min(size, n - HELD_OUT)), held, _STEPS.value,
                           _BATCH.value, _LR.value, seed)
      cells = "  ".join(f"{i}: {a:.3f} / {b:.3f} / {c:.3f}" for i, (a, b, c) in history)
      print(f"{size:7d} | {seed} | {cells}", flush=True)
  print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)

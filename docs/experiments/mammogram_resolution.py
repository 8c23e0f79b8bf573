"""Whether the mammogram's evidence survives the demo's 64 x 32 preprocessing, and what the
demo's encoder learns from it at larger sizes (docs/experiments.md, "The mammogram's size").

An experiment, not part of the package. Commands (from the repository root; --cache keeps the
rendered images for the next command). The size study, with the mass at the gland's signal as
the cohort had it then (~14 + 16 minutes on 2 cores):
  python docs/experiments/mammogram_resolution.py --train 800 --cache /tmp/mg --mass_signal 2600
  python docs/experiments/mammogram_resolution.py --train 800 --cache /tmp/mg --mass_signal 2600 \
      --targets spiculated,calcifications,irregular --exports 0.73 --sizes 128x64,256x128
The mass's density and the encoder's start at the demo's size (~2-4 minutes each):
  python docs/experiments/mammogram_resolution.py --train 448,800,2000 --cache /tmp/mg \
      --targets irregular,pcr --exports 1.82 --sizes 64x32 [--mass_signal 2600] [--aux] \
      [--pretrain_steps 2000] [--encoder_lr_scale 0.1]

Patients are drawn as the synthetic export draws them (seed 100, the 'tiny' cohort: tumours at
1.5x their radius); each one's CC view is rendered at one export resolution, written as a DICOM
file and preprocessed as `prepare` does (segmentation, crop, min-max inside the breast) to each
size. The label's mammogram evidence is a phenotype: the mass's margin (spicules 0.6 mm wide),
its outline irregularity (harmonics 2-6 of its outline, a few per cent to a third of its
radius) and punctate calcifications, all fine structure. Per export resolution and size:

* the truth: the AUROC of the oracle's image evidence (the log-odds the iMGrhpc oracle adds to
  the rhpc oracle's, as the demo's report computes it) on the held-out patients;
* what the demo's encoder (configs/iMGrhpc.py:tiny, ResNet18 at width 8) with a linear pCR head
  learns from the first N patients, trained as the demo trains (flips, AdamW with warm-up and
  cosine, batch 16), held-out AUROC on the last 1,000 (validation / test halves). With --aux
  the head is the knowledge predictor's shape (a 64-unit ELU layer) and also predicts the
  subtype's phenotype group (luminal, HER2-positive, triple negative; cross-entropy, weight 1):
  the table variable the mammogram's phenotypes show; with --pretrain_steps the encoder starts
  from the pretrain job's SimCLR step run on every patient's image, labels unused.
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
from scipy import special
from pretext import pretrain_on_images
from sklearn.metrics import roc_auc_score

from input_pipeline.ingestion import mammogram
from input_pipeline.synthetic import export, oracle, phenotypes
from input_pipeline.synthetic import images as images_module
from input_pipeline.synthetic.dicom_writer import MammogramFileOptions, write_mammogram
from input_pipeline.synthetic.images import render_mammogram
from mrp_jax import configuration, models

_PATIENTS = flags.DEFINE_integer("patients", 3000, "Patients drawn (the last 1,000 held out).")
_TRAIN = flags.DEFINE_list("train", ["800", "2000"], "Training set sizes.")
_SIZES = flags.DEFINE_list("sizes", ["64x32", "128x64", "256x128"], "Prepared sizes.")
_EXPORTS = flags.DEFINE_list("exports", ["1.82", "0.73"],
                             "Export pixel sizes (mm); the field of view stays 233 x 175 mm.")
_EPOCHS = flags.DEFINE_integer("epochs", 25, "Passes over the training patients.")
_SEED = flags.DEFINE_integer("data_seed", 100, "Cohort seed.")
_TARGETS = flags.DEFINE_list(
    "targets", ["pcr"], "Labels to train on: pcr; spiculated (margin), calcifications, "
    "irregular (outline irregularity above its median): phenotypes the image decides, so their "
    "AUROC says whether the preprocessed image still shows them.")
_MASS = flags.DEFINE_float("mass_signal", None, "The mass's signal (images.MASS_SIGNAL) for "
                           "the rendering; default: the cohort's (5200; 2600 before).")
_AUX = flags.DEFINE_bool("aux", False, "Also train on each patient's subtype phenotype group "
                         "(a second head on a shared hidden layer, as the knowledge predictor).")
_PRETRAIN = flags.DEFINE_integer(
    "pretrain_steps", 0, "Pretrain the encoder first (the pretrain job's SimCLR step, "
    "configs/pretrain.py:tiny, batch 64) on every patient's image, labels unused; 0: none.")
_ENCODER_LR = flags.DEFINE_float("encoder_lr_scale", 1.0, "The encoder's learning rate as a "
                                 "multiple of the heads' (0: frozen weights).")
_CACHE = flags.DEFINE_string("cache", "", "Folder keeping the preprocessed images between runs.")

HELD_OUT = 1000
FIELD_MM = (233.0, 175.0)  # the 'tiny' export's mammogram: 128 x 96 pixels at 1.82 mm


def _draw(patients: int, seed: int):
  """Clinical draws, latents and the oracle's image evidence (log-odds) per patient."""
  draws, latents, evidence = [], [], []
  rates = export.Rates()
  for index in range(patients):
    clinical, latent, _ = export.draw_patient(seed, index, "tiny", rates)
    truth = oracle.patient_oracle(clinical, latent, ["pre"], True, rates)
    evidence.append(special.logit(truth["iMGrhpc"]["pre"]) - special.logit(truth["rhpc"]["pre"]))
    draws.append(clinical)
    latents.append(latent)
  return draws, latents, np.asarray(evidence)


def _images(latents, seed: int, spacing_mm: float, sizes) -> dict[tuple[int, int], np.ndarray]:
  """{size: [patients, rows, cols] float32}: each CC view rendered at ``spacing_mm``, written as
  DICOM and preprocessed to every size."""
  name = f"{len(latents)}_{seed}_{spacing_mm:g}_{images_module.MASS_SIGNAL:g}.npz"
  cached = Path(_CACHE.value) / name if _CACHE.value else None
  if cached and cached.exists():
    with np.load(cached) as saved:
      if all(f"{r}x{c}" in saved for r, c in sizes):
        return {(r, c): saved[f"{r}x{c}"] for r, c in sizes}
  out = _render(latents, seed, spacing_mm, sizes)
  if cached:
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cached, **{f"{r}x{c}": v for (r, c), v in out.items()})
  return out


def _render(latents, seed: int, spacing_mm: float, sizes) -> dict[tuple[int, int], np.ndarray]:
  shape = tuple(round(f / spacing_mm) for f in FIELD_MM)
  out = {size: [] for size in sizes}
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "cc.dcm"
    for index, latent in enumerate(latents):
      pixels, _ = render_mammogram(np.random.default_rng([seed, index, 6]), latent, shape,
                                   spacing_mm, "CC")
      write_mammogram(path, pixels, laterality="", view="",
                      tags={"StudyInstanceUID": f"1.2.826.0.1.3680043.8.498.{index + 1}"},
                      options=MammogramFileOptions(bits_stored=14))
      for size in sizes:
        options = mammogram.MammogramOptions(size=size, dtype="float16")
        out[size].append(mammogram.preprocess_mammogram(path, options).astype(np.float32))
  return {size: np.stack(v) for size, v in out.items()}


class ImageOnly(nn.Module):
  """The encoder, a hidden layer as the knowledge predictor has, a pCR (or phenotype) logit
  and, when ``groups``, the subtype's phenotype group's logits from the same hidden layer."""
  encoder: dict
  groups: int = 0

  @nn.compact
  def __call__(self, x, train):
    features = models.ResNet(**self.encoder)(x[..., None], train=train)
    hidden = nn.elu(nn.Dense(64)(features)) if self.groups else features
    logit = nn.Dense(1)(hidden)[:, 0]
    return (logit, nn.Dense(self.groups)(hidden)) if self.groups else (logit, None)


def pretrain_encoder(x, steps: int, seed: int) -> dict:
  """The encoder's variables after ``steps`` of the pretrain job's own step on all of ``x``."""
  state, _, losses = pretrain_on_images(x, steps, seed)
  print(f"  pretrained {steps} steps, NT-Xent {losses[-1]:.2f}", flush=True)
  return {"params": state.params["image_encoder"],
          "batch_stats": state.batch_stats["image_encoder"]}


def train(x, y, train_idx, held, epochs: int, seed: int, group=None, start=None) -> list[float]:
  """AUROC on the training patients and each held-out half after ``epochs`` passes; with
  ``group`` (each patient's phenotype group), its cross-entropy is a second loss (weight 1)."""
  config = configuration.load("configs/iMGrhpc.py:tiny")
  model = ImageOnly(models.encoder_kwargs(config.model.encoder, 2, config.model.dtype),
                    groups=0 if group is None else 3)
  group = np.zeros(len(y), np.int32) if group is None else group
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((2, *x.shape[1:])), False)
  params, stats = variables["params"], variables["batch_stats"]
  if start is not None:  # the pretrained encoder (ResNet_0 inside ImageOnly)
    params = {**params, "ResNet_0": start["params"]}
    stats = {**stats, "ResNet_0": start["batch_stats"]}
  steps = epochs * len(train_idx) // 16
  optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0, 1e-3, steps // 15, steps),
                          weight_decay=config.train.weight_decay)
  if _ENCODER_LR.value != 1.0:
    optimizer = optax.multi_transform(
        {"encoder": optax.chain(optimizer, optax.scale(_ENCODER_LR.value)), "head": optimizer},
        {k: "encoder" if k == "ResNet_0" else "head" for k in params})
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, stats, opt_state, xb, yb, gb):
    def loss(p):
      (logit, groups), update = model.apply({"params": p, "batch_stats": stats}, xb, True,
                                            mutable=["batch_stats"])
      total = optax.sigmoid_binary_cross_entropy(logit, yb).mean()
      if groups is not None:
        total += optax.softmax_cross_entropy_with_integer_labels(groups, gb).mean()
      return total, update["batch_stats"]
    (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  predict = jax.jit(lambda p, s, xb: model.apply({"params": p, "batch_stats": s}, xb, False)[0])
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(train_idx, 16, replace=False)
    xb = np.where(rng.random(16)[:, None, None] < 0.5, x[idx][:, ::-1], x[idx])
    params, stats, opt_state = step(params, stats, opt_state, xb, y[idx], group[idx])

  def auroc(idx):
    scores = np.concatenate([np.asarray(predict(params, stats, x[idx[i:i + 256]]))
                             for i in range(0, len(idx), 256)])
    return roc_auc_score(y[idx], scores)
  return [auroc(idx) for idx in (train_idx, *held)]


def main(argv):
  del argv
  start = time.time()
  if _MASS.value is not None:
    images_module.MASS_SIGNAL = _MASS.value
  draws, latents, evidence = _draw(_PATIENTS.value, _SEED.value)
  irregularity = np.asarray([latent.irregularity for latent in latents])
  labels = {"pcr": np.asarray([d.label for d in draws], np.float32),
            "spiculated": np.asarray([lat.margin == "spiculated" for lat in latents], np.float32),
            "calcifications": np.asarray([lat.calcifications for lat in latents], np.float32),
            "irregular": (irregularity > np.median(irregularity)).astype(np.float32)}
  y = labels["pcr"]
  group = np.asarray([phenotypes.GROUP_OF_SUBTYPE[d.code("molecular_subtype")] for d in draws],
                     np.int32)
  n = len(y)
  held = (np.arange(n - HELD_OUT, n - HELD_OUT // 2), np.arange(n - HELD_OUT // 2, n))
  print(f"{n} patients, pCR rate {y.mean():.3f}; the oracle's image evidence, held-out AUROC "
        + " / ".join(f"{roc_auc_score(y[h], evidence[h]):.3f}" for h in held), flush=True)
  sizes = [tuple(int(v) for v in s.split("x")) for s in _SIZES.value]
  for name in _TARGETS.value:
    print(f"  {name}: rate {labels[name].mean():.3f}")
  print("target | export mm | size | train N: AUROC training / validation / test | seconds")
  for spacing in map(float, _EXPORTS.value):
    images = _images(latents, _SEED.value, spacing, sizes)
    starts = {size: pretrain_encoder(images[size], _PRETRAIN.value, 0) if _PRETRAIN.value
              else None for size in sizes}
    for name in _TARGETS.value:
      for size in sizes:
        for count in map(int, _TRAIN.value):
          began = time.time()
          a = train(images[size], labels[name], np.arange(min(count, n - HELD_OUT)), held,
                    _EPOCHS.value, 0, group if _AUX.value else None, starts[size])
          print(f"{name} | {spacing:.2f} | {size[0]}x{size[1]} | {count:5d}: {a[0]:.3f} / "
                f"{a[1]:.3f} / {a[2]:.3f} | {time.time() - began:.0f}", flush=True)
  print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)

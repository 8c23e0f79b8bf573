"""What holds the demo's MRI encoder back: the noisy pCR label, or the network and the records?
(docs/experiments.md, "The MRI encoder")

An experiment, not part of the package. Command (from the repository root, after a finished
demo in runs/demo; ~3 minutes per condition on 2 cores):
  python docs/experiments/mri_supervision.py --demo runs/demo

The demo's MRI network (configs/iMRrhpc.py:tiny: the Siamese 3D ResNet18 at width 8, the time
embedding, the knowledge predictor's hidden layer) trained on the demo's records as the demo
trains iMRrhpc (1,800 steps of 8 patients, AdamW 1e-3 with warm-up and cosine, weight decay
1e-4, clip 1, the tiny configs' on-device augmentation), but on its image-only output alone
(the rhpc input zero, no auxiliary targets, no modality dropout), each step's patients in one
of the three evaluated inputs (Pre; Pre + Mid; Pre + Post, the phase drawn among those the
patient has). A condition is its target and changes, joined by '+':

* ``label``: pCR, binary cross-entropy (what the demo's image-only head learns from);
* ``evidence``: the oracle's image evidence at that input (the log-odds the MRI adds to the
  table's, ``records/synthetic_oracle.json``, standardised on train), squared error: the same
  information without the label's noise, which no hospital has;
* ``noaug``: the augmentation off; ``geometric``: its geometric part alone (flips and affine;
  no bias field, gamma, scale or noise); ``noaffine``: no rotation, zoom or translation (the
  flips and intensity changes kept); ``half``: a random half of the training patients (a
  learning-curve point); ``wN``: encoder width N (the demo's: 8); ``sN``: N steps (the demo's:
  1,800); ``lrX``: peak learning rate X (the demo's: 1e-3); ``bN``: N patients a step (8);
  ``medicalnet`` or ``monai``: that encoder layout (the demo's: ``resnet``; models/resnet.py);
  ``pretrained``: the encoder starts from the pretrain run ``--encoder_init`` (the pretrain job,
  configs/pretrain.py:tiny,mri on the same records: SimCLR, no labels); ``frozen``: and its
  weights stay (learning rate 0; batch statistics still update), a probe of its features;
  ``emaX``: predict with an exponential moving average of the weights, decay X (e.g.
  ``ema0.998``; min(X, (1 + t) / (10 + t)) at step t, so the start's weights fade early).

``--seeds 0,1,2`` trains each condition once per seed and adds a row for the ensemble of those
runs (the mean of their image-only logits).

Records of another geometry preset (a demo run with ``--config.demo.geometry=demo``: 4 mm voxels)
train the same network on their box, the translation kept at 8 mm.

Printed per condition, at Pre / Mid / Post: AUROC against pCR and Spearman correlation with the
oracle evidence on train (memorising, or not even fitting?), AUROC on validation and test, the
Spearman correlation on test; beside the oracle evidence's own AUROC on the same patients.
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from mri_features import PHASES, load  # and its --demo flag
from scipy import stats
from sklearn.metrics import roc_auc_score

from input_pipeline import encoding, geometries
from mrp_jax import configuration, models
from mrp_jax.core import augment
from mrp_jax.training import pretrain

flags.DEFINE_list("conditions", ["label", "evidence", "label+noaug", "label+half"],
                  "Which conditions to train (module docstring).")
flags.DEFINE_list("seeds", ["0"], "Initialisation, data order and augmentation; several: "
                  "one run each and their ensemble.")
flags.DEFINE_string("encoder_init", None, "A pretrain run's workdir (conditions 'pretrained').")
FLAGS = flags.FLAGS
# The demo's iMRrhpc (configs/demo.py, configs/iMRrhpc.py:tiny).
DEFAULTS = {"target": "label", "augmented": True, "intensity": True, "affine": True,
            "half": False, "width": 8, "steps": 1800, "learning_rate": 1e-3, "batch": 8,
            "layout": "resnet", "pretrained": False, "frozen": False, "ema": 0.0}


def parse(condition: str) -> dict:
  """'evidence+noaug+w16+s3600' -> the settings it changes from DEFAULTS."""
  out = dict(DEFAULTS)
  for token in condition.split("+"):
    if token in ("label", "evidence"):
      out["target"] = token
    elif token in models.LAYOUTS:
      out["layout"] = token
    elif token == "noaug":
      out["augmented"] = False
    elif token == "geometric":
      out["intensity"] = False
    elif token == "noaffine":
      out["affine"] = False
    elif token in ("half", "pretrained"):
      out[token] = True
    elif token == "frozen":
      out["pretrained"] = out["frozen"] = True
    elif token[:3] == "ema":
      out["ema"] = float(token[3:])
    elif token[:2] == "lr":
      out["learning_rate"] = float(token[2:])
    elif token[:1] in "wsb" and token[1:].isdigit():
      out[{"w": "width", "s": "steps", "b": "batch"}[token[0]]] = int(token[1:])
    else:
      raise ValueError(f"condition {condition!r}: unknown part {token!r}")
  return out


def arrays(patients):
  """Volumes [N, 3, z, y, x] (zero where absent), presence [N, 3], evidence [N, 3] (NaN)."""
  n, shape = len(patients), patients[0].mri["pre"].shape
  volumes = np.zeros((n, 3, *shape), np.float32)
  has = np.zeros((n, 3), bool)
  evidence = np.full((n, 3), np.nan, np.float32)
  for i, p in enumerate(patients):
    for k, ph in enumerate(PHASES):
      if ph in p.mri:
        volumes[i, k], has[i, k], evidence[i, k] = p.mri[ph], True, p.evidence[ph]
  return volumes, has, evidence


def batch_of(volumes, index, phase):
  """The model's batch: slot 0 the Pre volume, slot 1 Mid or Post (phase 1, 2) or absent (0)."""
  b = len(index)
  follow = volumes[index, np.maximum(phase, 1)] * (phase > 0)[:, None, None, None]
  return {"mri": np.stack([volumes[index, 0], follow], 1),
          "mri_mask": np.stack([np.ones(b, bool), phase > 0], 1),
          "mri_phase": np.stack([np.zeros(b, np.int32), phase.astype(np.int32)], 1),
          "rhpc": np.zeros((b, encoding.INPUT_DIM), np.float32)}


def train(volumes, has, label, target, train_idx, settings, seed):
  """Trained variables of the demo's iMRrhpc network on its image-only output."""
  config = configuration.load("configs/iMRrhpc.py:tiny")
  config.model.modality_dropout = 0.0
  config.model.encoder.width = settings["width"]
  config.model.encoder.layout = settings["layout"]
  regression, augmented = settings["target"] == "evidence", settings["augmented"]
  steps, batch_size = settings["steps"], settings["batch"]
  net = models.create_model(config.model)
  init = batch_of(volumes, train_idx[:2], np.array([0, 1]))
  variables = net.init(jax.random.PRNGKey(seed), init, train=False)
  params, stats_ = variables["params"], variables["batch_stats"]
  if settings["pretrained"]:
    if not FLAGS.encoder_init:
      raise ValueError("condition 'pretrained' needs --encoder_init=<pretrain run>")
    params, stats_ = pretrain.encoder_from(FLAGS.encoder_init, "iMRrhpc", params, stats_)
  schedule = optax.warmup_cosine_decay_schedule(0, settings["learning_rate"],
                                                max(1, steps // 15), steps)
  optimizer = optax.chain(optax.clip_by_global_norm(config.train.grad_clip_norm),
                          optax.adamw(schedule, weight_decay=config.train.weight_decay))
  if settings["frozen"]:  # the encoder's weights stay; the heads train
    optimizer = optax.multi_transform(
        {"train": optimizer, "frozen": optax.set_to_zero()},
        {k: "frozen" if k == pretrain.ENCODER_MODULE else "train" for k in params})
  opt_state = optimizer.init(params)
  # The tiny configs shift by 1 voxel of 8 mm; records of another preset the same 8 mm.
  spacing = next(g.mri_spacing_mm[0] for g in geometries.GEOMETRIES.values()
                 if tuple(g.mri_box) == volumes.shape[2:])
  config.augment.mri_translation_voxels = 8.0 / spacing
  if not settings["intensity"]:
    for name in ("bias_field", "gamma", "intensity_scale", "noise"):
      config.augment[f"mri_{name}_probability"] = 0.0
  if not settings["affine"]:
    config.augment.mri_affine_probability = 0.0
  options = augment.AugmentOptions.from_config(config.augment)

  @jax.jit
  def average(ema, params, i):
    decay = jnp.minimum(settings["ema"], (1.0 + i) / (10.0 + i))
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)

  @jax.jit
  def step(params, stats_, opt_state, batch, y, key):
    batch = augment.prepare_images(batch)
    if augmented:
      batch = augment.augment_batch(batch, key, options)

    def loss(p):
      out, update = net.apply({"params": p, "batch_stats": stats_}, batch, train=True,
                              mutable=["batch_stats"])
      guess = out["image_logit"]
      value = (jnp.mean((guess - y) ** 2) if regression
               else optax.sigmoid_binary_cross_entropy(guess, y).mean())
      return value, update["batch_stats"]
    (_, stats_), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats_, opt_state

  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(seed + 1)
  ema = params
  for i in range(steps):
    index = rng.choice(train_idx, batch_size, replace=False)
    phase = np.array([rng.choice(np.flatnonzero(has[j])) for j in index])
    y = (target[index, phase] if regression else label[index]).astype(np.float32)
    params, stats_, opt_state = step(params, stats_, opt_state,
                                     batch_of(volumes, index, phase), y,
                                     jax.random.fold_in(key, i))
    if settings["ema"]:
      ema = average(ema, params, i)
  return net, {"params": ema if settings["ema"] else params, "batch_stats": stats_}


def scores(predict, volumes, has, index):
  """Image-only logits [len(index), 3] at Pre / Mid / Post (NaN where the phase is absent)."""
  out = np.full((len(index), 3), np.nan, np.float32)
  for k in range(3):
    for start in range(0, len(index), 64):
      rows = index[start:start + 64]
      phase = np.full(len(rows), k)
      values = np.asarray(predict(batch_of(volumes, rows, phase)))
      out[start:start + 64, k] = np.where(has[rows, k], values, np.nan)
  return out


def main(argv):
  del argv
  start = time.time()
  patients = load(Path(FLAGS.demo), box=None)  # any geometry's records
  split = np.array([p.split for p in patients])
  label = np.array([p.label for p in patients], np.float32)
  volumes, has, evidence = arrays(patients)
  train_idx = np.flatnonzero(split == "train")
  z = (evidence - np.nanmean(evidence[train_idx])) / np.nanstd(evidence[train_idx])
  held = {s: np.flatnonzero(split == s) for s in ("validation", "test")}
  print(f"{len(patients)} labelled patients with MRI ({len(train_idx)} train, "
        f"{len(held['validation'])} validation, {len(held['test'])} test); "
        f"{time.time() - start:.0f} s to read")

  def aurocs(score, index):
    return [roc_auc_score(label[index][~np.isnan(score[:, k])],
                          score[:, k][~np.isnan(score[:, k])]) for k in range(3)]

  def fmt(values):
    return " / ".join(f"{v:.3f}" for v in values)

  def rho(score, index):
    return [stats.spearmanr(score[:, k], evidence[index, k], nan_policy="omit")[0]
            for k in range(3)]

  for s, index in (("train", train_idx), *held.items()):
    print(f"oracle image evidence, {s}: {fmt(aurocs(evidence[index], index))}")
  print("condition | train AUROC | train Spearman with evidence | validation AUROC | test AUROC | "
        "test Spearman with evidence | s")

  def report(name, run, seconds):
    print(f"{name} (n {len(run['subset'])}) | {fmt(aurocs(run['train'], run['subset']))} | "
          f"{fmt(rho(run['train'], run['subset']))} | "
          f"{fmt(aurocs(run['validation'], held['validation']))} | "
          f"{fmt(aurocs(run['test'], held['test']))} | "
          f"{fmt(rho(run['test'], held['test']))} | {seconds:.0f}", flush=True)

  seeds = [int(s) for s in FLAGS.seeds]
  for condition in FLAGS.conditions:
    settings = parse(condition)
    runs = []
    for seed in seeds:
      t0 = time.time()
      subset = train_idx
      if settings["half"]:
        subset = np.sort(np.random.default_rng(seed).choice(
            train_idx, len(train_idx) // 2, replace=False))
      net, variables = train(volumes, has, label, z, subset, settings, seed)
      predict = jax.jit(lambda b, v=variables, n=net:
                        n.apply(v, augment.prepare_images(b))["image_logit"])
      runs.append({"subset": subset, "train": scores(predict, volumes, has, subset),
                   **{s: scores(predict, volumes, has, index) for s, index in held.items()}})
      report(f"{condition} seed {seed}", runs[-1], time.time() - t0)
    if len(runs) > 1:
      ensemble = {s: np.mean([r[s] for r in runs], axis=0) for s in held}
      print(f"{condition} ensemble of {len(runs)} | - | - | "
            f"{fmt(aurocs(ensemble['validation'], held['validation']))} | "
            f"{fmt(aurocs(ensemble['test'], held['test']))} | "
            f"{fmt(rho(ensemble['test'], held['test']))} | -", flush=True)


if __name__ == "__main__":
  app.run(main)

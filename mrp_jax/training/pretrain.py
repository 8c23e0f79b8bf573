"""The `pretrain` job: a self-supervised start for an image encoder, from a records folder.

The paper starts its encoders from pretrained backbones (ImageNet-style 2D, MedicalNet 3D); a
hospital can make its own from the images of its archive, without labels. This job trains the
encoder of ``config.model.name`` (iMGrhpc: the 2D mammogram ResNet; iMRrhpc: the 3D MRI ResNet)
with SimCLR's contrastive loss (Chen et al. 2020, NT-Xent): two random views of each image (a
random resized crop and a flip, drawn on the device), a two-layer projection, and each view
taught to pick its partner out of the batch. Views keep the grey levels as they are: SimCLR's
colour jitter is left out because in these images intensity is the signal (density in a
mammogram, contrast uptake in a subtraction volume) and an encoder taught to ignore it would
discard what the fused model needs.

Reads the patients the train pipeline reads for that model (a mammogram, each of its views an
image of its own; or an MRI in one of its drawn combinations of phases, every slot an image) in
the splits of ``config.pretrain.splits``; their labels are never used. Writes
WORKDIR/checkpoints (Orbax, resumable: state and data position),
WORKDIR/encoder (Orbax: the encoder's 'params' and 'batch_stats', written at the last step),
WORKDIR/encoder.json (what it fits) and metrics.jsonl. A fused model starts from it with
``--config.model.encoder_init=WORKDIR`` (:func:`encoder_from`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from input_pipeline import cli
from input_pipeline import records as records_lib
from input_pipeline.feed import pipeline
from mrp_jax import configuration as cfg
from mrp_jax import console, models
from mrp_jax.core import augment, checkpoint, sharding, train_step
from mrp_jax.core import state as state_lib
from mrp_jax.models.resnet import ResNet
from mrp_jax.training.metric_log import MetricLog

ENCODER_DIR, ENCODER_INFO = "encoder", "encoder.json"
ENCODER_MODULE = "image_encoder"  # the fused models' name for it (models/fusion.py)
# Per model: its image key and the spatial axis a flip mirrors (the mammogram's rows, cranial
# <-> caudal, as its augmentation does; the volume's x, left <-> right).
_IMAGES = {"iMGrhpc": ("mg", 0), "iMRrhpc": ("mri", 2)}


class ContrastiveEncoder(nn.Module):
  """The image encoder (named as in the fused models) and SimCLR's projection."""
  encoder: Mapping[str, Any]  # a FrozenDict of ResNet arguments (models.encoder_kwargs)
  hidden_dim: int = 128
  projection_dim: int = 64

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, mask: jax.Array | None = None
               ) -> jax.Array:
    """images [N, *spatial] -> projections [N, projection_dim] (float32)."""
    features = ResNet(**self.encoder, name=ENCODER_MODULE)(images[..., None], train=train,
                                                           mask=mask)
    hidden = nn.relu(nn.Dense(self.hidden_dim, name="projection_0")(features))
    return nn.Dense(self.projection_dim, name="projection_1")(hidden)


def random_views(images: jax.Array, key: jax.Array, min_area: float, flip_axis: int
                 ) -> jax.Array:
  """One random view of each image: a resized crop and a flip (SimCLR's geometry).

  Args:
    images: [N, *spatial] float32.
    key: the views' randomness; image i draws from ``fold_in(key, i)``.
    min_area: the crop covers a fraction of the image uniform in [min_area, 1] (of the volume
      in 3D), with each side's share jittered by an aspect factor in [3/4, 4/3] (clipped to
      the image), and is resized back to the full size (linear interpolation).
    flip_axis: the spatial axis mirrored with probability 1/2.
  """
  n, spatial = images.shape[0], images.shape[1:]
  dims = len(spatial)

  def one(image, k):
    area_key, aspect_key, corner_key, flip_key = jax.random.split(k, 4)
    area = jax.random.uniform(area_key, (), minval=min_area, maxval=1.0)
    aspect = jnp.exp(jax.random.uniform(aspect_key, (dims,), minval=-0.5, maxval=0.5)
                     * np.log(4 / 3))
    share = jnp.clip(area ** (1 / dims) * aspect, 0.1, 1.0)
    size = jnp.asarray(spatial, jnp.float32)
    corner = jax.random.uniform(corner_key, (dims,)) * size * (1 - share)
    scale = 1 / share
    view = jax.image.scale_and_translate(image, spatial, tuple(range(dims)), scale,
                                         -corner * scale, "linear", antialias=False)
    return jnp.where(jax.random.bernoulli(flip_key), jnp.flip(view, flip_axis), view)

  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
  return jax.vmap(one)(images, keys)


def nt_xent(a: jax.Array, b: jax.Array, valid: jax.Array, temperature: float) -> jax.Array:
  """SimCLR's loss: each of the 2N projections must find its partner among the other 2N - 1
  by cosine similarity / temperature; rows and columns of invalid images (empty slots) are left
  out. Mean over valid rows (0 when none is valid)."""
  n = a.shape[0]
  z = jnp.concatenate([a, b]).astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  ok = jnp.concatenate([valid, valid])
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool) | ~ok[None, :], -1e9, logits)
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, partner)
  return jnp.sum(jnp.where(ok, losses, 0.0)) / jnp.maximum(jnp.sum(ok), 1)


def _images(batch: Mapping[str, Any], model_name: str) -> tuple[jax.Array, jax.Array]:
  """The batch's images [B * slots, *spatial] and which are real [B * slots] bool."""
  key, _ = _IMAGES[model_name]
  images = batch[key]
  valid = batch[f"{key}_mask"].astype(bool) & (batch["example_mask"][:, None] > 0)
  return images.reshape((-1,) + images.shape[2:]), valid.reshape(-1)


def create_model(config: ml_collections.ConfigDict) -> ContrastiveEncoder:
  spatial_dims = 2 if config.model.name == "iMGrhpc" else 3
  return ContrastiveEncoder(
      encoder=flax.core.FrozenDict(models.encoder_kwargs(config.model.encoder, spatial_dims,
                                                         config.model.dtype)),
      hidden_dim=config.pretrain.projection_hidden_dim,
      projection_dim=config.pretrain.projection_dim)


def _init_state(model, shape, optimizer, rng) -> train_step.TrainState:
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((2, *shape), jnp.float32), train=False)
  return train_step.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=optimizer.init(variables["params"]),
      rng=jax.random.key_data(state_rng), lr_scale=jnp.ones((), jnp.float32),
      plateau=jnp.asarray([-jnp.inf, 0.0], jnp.float32))


def make_step(model: ContrastiveEncoder, optimizer: optax.GradientTransformation,
              config: ml_collections.ConfigDict):
  """``(state, batch) -> (state, metrics)``: two views of every image, NT-Xent, one update."""
  schedule = train_step.learning_rate_schedule(config.train)
  model_name, (_, flip_axis) = config.model.name, _IMAGES[config.model.name]
  p = config.pretrain

  def step(state: train_step.TrainState, batch):
    images, valid = _images(augment.prepare_images(batch), model_name)
    first_key, second_key = jax.random.split(state.step_key())
    n = images.shape[0]
    both = jnp.concatenate([random_views(images, first_key, p.crop_min_area, flip_axis),
                            random_views(images, second_key, p.crop_min_area, flip_axis)])

    def loss_fn(params):
      z, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, both,
                               train=True, mask=jnp.concatenate([valid, valid]),
                               mutable=["batch_stats"])
      return nt_xent(z[:n], z[n:], valid, p.temperature), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "learning_rate": schedule(state.step),
               "norm/grads": optax.tree.norm(grads), "images": jnp.sum(valid)}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics

  return step


def pretrain(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Trains the encoder (resuming from WORKDIR/checkpoints); writes WORKDIR/encoder."""
  workdir = Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  stage = console.current("pretrain").stage
  t = config.train
  if (workdir / ENCODER_INFO).exists():
    info = json.loads((workdir / ENCODER_INFO).read_text())
    stage(f"pretrain: done before ({info['steps']} steps), reusing {workdir / ENCODER_DIR}")
    return info
  mesh = sharding.make_mesh()
  records = Path(config.data.records)
  manifest = records_lib.read_manifest(records)
  key, _ = _IMAGES[config.model.name]
  shape = tuple(manifest["mammogram" if key == "mg" else "mri"]["shape"])
  paths = [path for split in config.pretrain.splits for path in _split_paths(records, split)]
  data = pipeline.train_iterator(paths, pipeline.TrainFeed(
      model_name=config.model.name, batch_size=sharding.local_batch_size(t.batch_size),
      seed=config.seed, shuffle_window=config.data.shuffle_window,
      process_index=jax.process_index(), process_count=jax.process_count(),
      workers=config.data.workers, every_view=True))
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))

  model = create_model(config)
  optimizer = train_step.create_optimizer(t)
  init = lambda rng: _init_state(model, shape, optimizer, rng)
  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = sharding.state_shardings(abstract, mesh, config.mesh.fsdp, config.mesh.fsdp_min_size)
  checkpoints = checkpoint.Checkpoints(workdir, keep=t.keep_checkpoints)
  if checkpoints.latest_step() is not None:
    abstract_sharded = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    state = checkpoints.restore(abstract_sharded, data)
    stage(f"pretrain {config.model.name} encoder: resumed from step {int(state.step)} of "
          f"{t.num_steps} in {workdir}")
  else:
    stage(f"pretrain {config.model.name} encoder: {t.num_steps} steps of {t.batch_size} "
          f"patients' images ({', '.join(config.pretrain.splits)}) in {workdir}")
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
  step_fn = jax.jit(make_step(model, optimizer, config),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  log = MetricLog(workdir)
  bar = cli.progress(total=t.num_steps, initial=int(state.step), desc="pretrain", unit="step",
                     enabled=jax.process_index() == 0)
  clock, clock_step = time.perf_counter(), int(state.step)
  try:
    for step in range(int(state.step) + 1, t.num_steps + 1):
      state, metrics = step_fn(state, sharding.global_batch(next(data), mesh))
      bar.update(1)
      if step % t.log_every_steps == 0 or step == t.num_steps:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values["loss"]):
          raise FloatingPointError(f"pretrain step {step}: loss {values['loss']}; lower "
                                   "config.train.learning_rate or check the records")
        now = time.perf_counter()
        values["perf/steps_per_s"] = (step - clock_step) / (now - clock)
        clock, clock_step = now, step
        log.write(step, values)
        bar.set_postfix_str(f"loss {values['loss']:.4g}", refresh=False)
      if step % t.checkpoint_every_steps == 0 or step == t.num_steps:
        checkpoints.save(step, state, data)
  finally:
    bar.close()
    checkpoints.wait()
  checkpoints.close()
  log.close()
  best = workdir / "best"  # the checkpoint class's manager of best states, unused here
  if jax.process_index() == 0 and best.is_dir() and not any(best.iterdir()):
    best.rmdir()
  encoder = jax.device_get({"params": state.params[ENCODER_MODULE],
                            "batch_stats": state.batch_stats[ENCODER_MODULE]})
  with ocp.StandardCheckpointer() as saver:
    saver.save(workdir / ENCODER_DIR, encoder, force=True)
  info = {"model": config.model.name, "steps": int(state.step), "image_shape": list(shape),
          "encoder": config.model.encoder.to_dict(),
          "splits": list(config.pretrain.splits)}
  if jax.process_index() == 0:
    (workdir / ENCODER_INFO).write_text(json.dumps(info, indent=1))
  stage(f"pretrain: {info['steps']} steps; encoder in {workdir / ENCODER_DIR}")
  return info


def _split_paths(records: Path, split: str) -> list[str]:
  try:
    return pipeline.split_paths(records, split)
  except ValueError:  # a split without shards (a test quota of 0) adds no images
    return []


def encoder_from(workdir: str | Path, model_name: str, params: Any, batch_stats: Any
                 ) -> tuple[Any, Any]:
  """``params`` and ``batch_stats`` of a fused model with its image encoder taken from a
  pretrain run's WORKDIR/encoder (config.model.encoder_init).

  Raises:
    FileNotFoundError: the workdir holds no finished pretrain run.
    ValueError: the run pretrained another model's encoder, or one of another shape.
  """
  workdir = Path(workdir).resolve()
  info_path = workdir / ENCODER_INFO
  if not info_path.exists():
    raise FileNotFoundError(f"config.model.encoder_init: {workdir} holds no finished pretrain "
                            f"run (no {ENCODER_INFO}); run --config.job=pretrain there first")
  info = json.loads(info_path.read_text())
  if info["model"] != model_name:
    raise ValueError(f"config.model.encoder_init: {workdir} pretrained the {info['model']} "
                     f"encoder, not {model_name}'s")
  with ocp.StandardCheckpointer() as reader:
    restored = reader.restore(workdir / ENCODER_DIR)
  target = {"params": params[ENCODER_MODULE], "batch_stats": batch_stats[ENCODER_MODULE]}
  ours = {"/".join(str(getattr(k, "key", k)) for k in path): np.shape(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(target)}
  theirs = {"/".join(str(getattr(k, "key", k)) for k in path): np.shape(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(restored)}
  problems = sorted({*ours} ^ {*theirs}) + [
      f"{k}: {theirs[k]} vs {ours[k]}" for k in sorted(ours)
      if k in theirs and ours[k] != theirs[k]]
  if problems:
    raise ValueError(f"config.model.encoder_init: {workdir / ENCODER_DIR} does not fit this "
                     "model's encoder (pretrain with the same config.model.encoder): "
                     + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))
  cast = lambda new, old: np.asarray(new, dtype=np.asarray(old).dtype)
  params = dict(params, **{ENCODER_MODULE: jax.tree.map(cast, restored["params"],
                                                         target["params"])})
  batch_stats = dict(batch_stats, **{ENCODER_MODULE: jax.tree.map(
      cast, restored["batch_stats"], target["batch_stats"])})
  return params, batch_stats


# config.pretrain, and the fields of config.train and config.data the pretrain loop reads
# beside those of its state (core/state.py: model, optimiser, geometry).
CONFIG_RULES: dict[str, cfg.Rule] = {
    "pretrain.temperature": cfg.POSITIVE,
    "pretrain.projection_dim": cfg.POSITIVE_INT,
    "pretrain.projection_hidden_dim": cfg.POSITIVE_INT,
    "pretrain.crop_min_area": (lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
                               "must be in (0, 1]"),
    "pretrain.splits": cfg.tuple_of(*records_lib.SPLITS),
    "train.batch_size": cfg.POSITIVE_INT,
    "train.log_every_steps": cfg.POSITIVE_INT,
    "train.checkpoint_every_steps": cfg.POSITIVE_INT,
    "train.keep_checkpoints": cfg.POSITIVE_INT,
    "data.shuffle_window": cfg.POSITIVE_INT,
    "data.workers": cfg.COUNT,
}

# The fields with which the train job starts a fused model's encoder from a pretrain run and
# picks its best checkpoint (training/checks.py gathers them).
ENCODER_START_RULES: dict[str, cfg.Rule] = {
    "model.encoder_init": (lambda v: v == "" or (Path(v) / ENCODER_INFO).is_file(),
                           "must be '' or the workdir of a finished pretrain run (with "
                           + ENCODER_INFO + ")"),
    "train.best_metric": cfg.one_of(*train_step.BEST_METRICS),
}


def image_model_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The pretrain job trains an image encoder: config.model.name must name one."""
  name = cfg.lookup(config, "model.name")
  if name is cfg.MISSING or name in _IMAGES:
    return []
  return [(f"config.model.name: the pretrain job trains an image encoder: must be one of "
           f"{list(_IMAGES)} (got {name!r})")]


def best_metric_problems(config: ml_collections.ConfigDict) -> list[str]:
  """train.best_metric='image_auroc' needs an image-only output: a fused model's."""
  if (cfg.lookup(config, "train.best_metric") == "image_auroc"
      and cfg.lookup(config, "model.name") == "rhpc"):
    return [("config.train.best_metric: 'image_auroc' needs a fused model (iMGrhpc or "
             "iMRrhpc); rhpc has no image-only output")]
  return []


CONFIG_CHECKS: tuple[cfg.Check, ...] = (cfg.RULES, *state_lib.CONFIG_CHECKS, CONFIG_RULES,
                                        image_model_problems)

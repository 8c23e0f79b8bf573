"""The `train` job: records -> a trained model, its best checkpoint and validation metrics.

Reads top to bottom: mesh, input, model and optimizer, state (resumed, pretrained or fresh),
compiled steps, the loop (log, validate, checkpoint), the end. The same code runs on one CPU,
on N local devices and on several hosts (main.py initialises jax.distributed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from sklearn.metrics import roc_auc_score

from input_pipeline import cli
from input_pipeline import records as records_lib
from input_pipeline.feed import pipeline
from input_pipeline.geometries import GeometryMismatch
from input_pipeline.records import preprocessing
from mrp_jax import console
from mrp_jax.core import checkpoint, inference, runs, sharding, train_step
from mrp_jax.core import state as state_lib
from mrp_jax.models import pretrained
from mrp_jax.training import pretrain
from mrp_jax.training.metric_log import MetricLog


class NonFiniteLossError(FloatingPointError):
  """A loss term or norm became NaN or infinite."""


def _check_finite(step: int, metrics: dict[str, float]) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    name = next(iter(sorted(bad, key=lambda k: (not k.startswith("loss"), k))))
    raise NonFiniteLossError(f"step {step}: {name} = {bad[name]} (non-finite: {sorted(bad)}); "
                             "training stopped; lower the learning rate or check the inputs")


def _check_records(config: ml_collections.ConfigDict, manifest: dict[str, Any]) -> None:
  """The records' manifest is the one source of the geometry: a preset the config names must
  be the records' own."""
  problem = preprocessing.config_disagreement(config.data, manifest)
  if problem:
    raise GeometryMismatch(
        f"{Path(config.data.records) / records_lib.MANIFEST}: {problem}; prepare records with "
        f"that geometry, or set --config.data.geometry='' to train at the records' own")


def validate(eval_step, state, mesh, paths: list[str], config) -> dict[str, float]:
  """Validation AUROC per phase and their mean ('val/auroc', NaN when no phase has both
  classes); for the fused models also their image-only output's ('val/image_auroc/<phase>',
  over the patients with the image, and the mean 'val/image_auroc')."""
  out, aurocs, image_aurocs = {}, [], []
  for phase in config.validation.phases:
    predictions = inference.predict(eval_step, state, mesh, paths,
                                    model_name=config.model.name, phase=phase,
                                    batch_size=config.validation.batch_size)
    out[f"val/n/{phase}"] = len(predictions.label)
    if len(set(predictions.label.tolist())) == 2:
      auroc = roc_auc_score(predictions.label, predictions.probability)
      out[f"val/auroc/{phase}"] = auroc
      aurocs.append(auroc)
    if predictions.image_probability is not None:
      seen = predictions.image_present
      if len(set(predictions.label[seen].tolist())) == 2:
        auroc = roc_auc_score(predictions.label[seen], predictions.image_probability[seen])
        out[f"val/image_auroc/{phase}"] = auroc
        image_aurocs.append(auroc)
  out["val/auroc"] = float(np.mean(aurocs)) if aurocs else math.nan
  if predictions.image_probability is not None:
    out["val/image_auroc"] = float(np.mean(image_aurocs)) if image_aurocs else math.nan
  return out


def _plateau(state: train_step.TrainState, auroc: float, config) -> train_step.TrainState:
  """The paper's ReduceLROnPlateau(factor, patience) on validation AUROC, in the state."""
  best, bad = (float(v) for v in jax.device_get(state.plateau))
  if math.isnan(auroc):
    return state
  if auroc > best:
    best, bad = auroc, 0
  else:
    bad += 1
  scale = state.lr_scale
  if bad > config.train.plateau_patience:
    scale, bad = scale * config.train.plateau_factor, 0
  return state.replace(lr_scale=scale, plateau=jnp.asarray([best, bad], jnp.float32))


def rhpc_parts_from(workdir: str | Path, params: Any) -> Any:
  """``params`` with the rhpc parts taken from a trained rhpc run's checkpoint: its encoder
  ('rhpc_encoder'), and its classifier as the fused model's 'rhpc_classifier' when the model
  has that skip connection (config.model.rhpc_skip).

  The fused models then start from an rhpc representation that saw far more steps than their
  own few hundred, and with the skip connection they start as the rhpc model itself
  (docs/experiments.md, "The fused models on small cohorts"). Shapes must match: the rhpc run
  and this model need the same rhpc_embed_dim and rhpc_hidden_dim.
  """
  source = runs.load_run(workdir, sharding.make_mesh(jax.devices()[:1]))
  if "rhpc_encoder" not in params:
    raise ValueError(f"config.model.rhpc_init: model {source.model_name} has no rhpc_encoder")
  donor = jax.device_get(source.state.params)
  parts = {"rhpc_encoder": "rhpc_encoder"}
  if "rhpc_classifier" in params:
    if "classifier" not in donor:
      raise ValueError(f"config.model.rhpc_init: {workdir} is not an rhpc run (no classifier)")
    parts["rhpc_classifier"] = "classifier"
  out = dict(params)
  for ours, theirs in parts.items():
    mismatched = [
        f"{ours}/{'/'.join(str(getattr(k, 'key', k)) for k in path)}: {a.shape} vs {b.shape}"
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params[ours]),
                                jax.tree.leaves(donor[theirs])) if a.shape != b.shape]
    if jax.tree.structure(donor[theirs]) != jax.tree.structure(params[ours]) or mismatched:
      raise ValueError(f"config.model.rhpc_init: {workdir}'s {theirs} does not fit this model "
                       f"(same rhpc_embed_dim and rhpc_hidden_dim needed): {mismatched}")
    out[ours] = donor[theirs]
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Trains config.model on config.data.records; returns the final summary (also final.json)."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  log = MetricLog(workdir)

  # ---- mesh -----------------------------------------------------------------------------------
  mesh = sharding.make_mesh()
  logging.info("mesh: %d devices on %d processes", mesh.size, jax.process_count())

  # ---- input ----------------------------------------------------------------------------------
  records = Path(config.data.records)
  manifest = records_lib.read_manifest(records)
  _check_records(config, manifest)
  if jax.process_index() == 0:
    # What evaluation and prediction need to rebuild the model and preprocess new patients.
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    (workdir / "preprocessing.json").write_text(json.dumps(
        {"mri": manifest["mri"], "mammogram": manifest["mammogram"]}, indent=1))
  train_paths = pipeline.split_paths(records, "train")
  val_paths = pipeline.split_paths(records, "validation")
  local_batch = sharding.local_batch_size(config.train.batch_size)
  data = pipeline.train_iterator(train_paths, pipeline.TrainFeed(
      model_name=config.model.name, batch_size=local_batch, seed=config.seed,
      shuffle_window=config.data.shuffle_window, process_index=jax.process_index(),
      process_count=jax.process_count(), workers=config.data.workers,
      views=uses_views(config.data, mesh, manifest)))

  # ---- model, optimizer and the state's shapes and shardings -----------------------------------
  recipe = state_lib.build_state(config, mesh, pipeline.batch_spec(records))
  shardings = recipe.shardings

  # ---- state: resume > pretrained (PyTorch, or a pretrain run: encoder_init) > scratch --------
  checkpoints = checkpoint.Checkpoints(workdir, keep=config.train.keep_checkpoints,
                                       best_metric=config.train.get("best_metric", "auroc"))
  if checkpoints.latest_step() is not None:
    try:
      state = checkpoints.restore(recipe.abstract_sharded, data)
    except checkpoint.CheckpointError:
      checkpoints.close()
      raise
    console.current("train").stage(
        f"train {config.model.name}: resumed from step {int(state.step)} of "
        f"{config.train.num_steps} in {workdir}")
  else:
    console.current("train").stage(
        f"train {config.model.name}: {config.train.num_steps} steps of "
        f"{config.train.batch_size} in {workdir}")
    state = recipe.create(config.seed)
    if config.model.pretrained:
      variables = pretrained.load_encoder(
          config.model.pretrained, {"params": jax.device_get(state.params),
                                    "batch_stats": jax.device_get(state.batch_stats)})
      state = jax.device_put(state.replace(params=variables["params"],
                                           batch_stats=variables["batch_stats"]), shardings)
    if config.model.get("encoder_init"):
      params, batch_stats = pretrain.encoder_from(
          config.model.encoder_init, config.model.name, jax.device_get(state.params),
          jax.device_get(state.batch_stats))
      state = jax.device_put(state.replace(params=params, batch_stats=batch_stats), shardings)
    if config.model.rhpc_init:
      state = jax.device_put(state.replace(params=rhpc_parts_from(
          config.model.rhpc_init, jax.device_get(state.params))), shardings)

  # ---- compiled steps -------------------------------------------------------------------------
  step_fn = state_lib.jit_train_step(recipe, config, mesh, config.augment)
  eval_step = inference.jit_eval_step(recipe.model)

  # ---- loop -----------------------------------------------------------------------------------
  bar = cli.progress(total=config.train.num_steps, initial=int(state.step),
                     desc=f"train {config.model.name}", unit="step",
                     enabled=jax.process_index() == 0)
  try:
    state = _loop(config, state, data, _Steps(step_fn, eval_step, mesh, val_paths),
                  _Sinks(checkpoints, log, bar))
  finally:
    bar.close()  # its last line says how far a run that stopped came
    checkpoints.wait()  # a save in flight completes, even when the loop raised

  # ---- end ------------------------------------------------------------------------------------
  best_step = checkpoints.best_step()
  summary = {"model": config.model.name, "steps": int(state.step),
             "best_step": best_step,
             "best_validation": checkpoints.best.metrics(best_step) if best_step else None}
  if jax.process_index() == 0:
    (workdir / "final.json").write_text(json.dumps(summary, indent=1))
  checkpoints.close()
  log.close()
  console.current("train").stage(f"train {config.model.name}: {summary['steps']} steps, best "
                                 f"{describe_best(summary)}")
  return summary


def uses_views(data: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               manifest: Mapping[str, Any] | None = None) -> bool:
  """Whether training images travel as the pipeline's views (``config.data.transfer``):
  'auto' takes them on one device, without worker processes, from records whose volumes are
  aligned (the records' ``manifest`` says format 2; unaligned volumes would be copied one by
  one, slower than one batch; None: records of this code's format).

  Raises:
    ValueError: 'views' asked for with worker processes (their batches come through shared
      memory, not as views of this process's maps).
  """
  if data.transfer == "views" and data.workers:
    raise ValueError(f"config.data.transfer='views' needs config.data.workers=0 (got "
                     f"{data.workers}): worker processes hand batches over in shared memory")
  if data.transfer == "auto":
    record_format = (records_lib.FORMAT_VERSION if manifest is None
                     else manifest.get("format_version", 1))
    return mesh.size == 1 and not data.workers and record_format >= 2
  return data.transfer == "views"


def describe_best(summary: dict[str, Any]) -> str:
  """'step 300, validation AUROC 0.812' from a final summary (final.json)."""
  if summary["best_step"] is None:
    return "no checkpoint kept"
  auroc = summary["best_validation"]["auroc"]  # -1: NaN (no validation phase had both classes)
  return (f"step {summary['best_step']}, validation AUROC "
          + (f"{auroc:.3f}" if auroc >= 0 else "undefined (no validation phase has both classes)"))


@dataclasses.dataclass(frozen=True)
class _Steps:
  """What the loop computes with: the compiled steps, the mesh they run on and the
  validation records."""
  train: Callable[..., Any]  # (state, batch) -> (state, metrics)
  eval: Callable[..., Any]  # inference.jit_eval_step
  mesh: jax.sharding.Mesh
  val_paths: list[str]


@dataclasses.dataclass(frozen=True)
class _Sinks:
  """Where the loop's results go: checkpoints, the metric log (metrics.jsonl and TensorBoard)
  and the console's progress bar."""
  checkpoints: checkpoint.Checkpoints
  log: MetricLog
  bar: Any  # cli.progress


def _loop(config, state, data, steps: _Steps, sinks: _Sinks):
  """Steps from state.step to config.train.num_steps: log, validate, checkpoint.

  ``sinks.bar`` (the console's progress bar) shows the step, the last logged loss and the last
  validation AUROC; every logged value goes to metrics.jsonl and TensorBoard.
  """
  checkpoints, log, bar = sinks.checkpoints, sinks.log, sinks.bar
  t = config.train
  first = int(state.step)
  pending: tuple[int, Any] | None = None
  clock, clock_step = time.perf_counter(), first
  shown: dict[str, str] = {}  # the bar's figures
  for step in range(first + 1, t.num_steps + 1):
    batch = sharding.global_batch(next(data), steps.mesh)
    state, metrics = steps.train(state, batch)
    bar.update(1)
    if pending is not None:  # one step late, so the host never waits for the device
      _check_finite(*pending)
    pending = (step, metrics)
    if step % t.log_every_steps == 0 or step == t.num_steps:
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_finite(step, values)
      pending = None
      now = time.perf_counter()
      values["perf/examples_per_s"] = (step - clock_step) * t.batch_size / (now - clock)
      clock, clock_step = now, step
      log.write(step, values)
      shown["loss"] = f"{values['loss']:.4g}"
    if step % t.eval_every_steps == 0 or step == t.num_steps:
      if pending is not None:
        _check_finite(pending[0], {k: float(v) for k, v in jax.device_get(pending[1]).items()})
        pending = None
      val = validate(steps.eval, state, steps.mesh, steps.val_paths, config)
      log.write(step, val)
      auroc = val["val/auroc"]
      shown["val AUROC"] = f"{auroc:.3f}"
      if t.optimizer == "paper":
        state = _plateau(state, auroc, config)
      image_auroc = val.get("val/image_auroc", math.nan)
      checkpoints.save_best(step, state, {
          "auroc": -1.0 if math.isnan(auroc) else auroc,
          "image_auroc": -1.0 if math.isnan(image_auroc) else image_auroc,
          **{k: v for k, v in val.items() if not math.isnan(v)}})
    if step % t.checkpoint_every_steps == 0 or step == t.num_steps:
      checkpoints.save(step, state, data)
    bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in shown.items()), refresh=False)
  return state

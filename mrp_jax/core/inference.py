"""Predictions for every patient of a split at one phase, on any number of devices and hosts.

Each process reads its share of the records (pipeline.eval_batches), the jitted eval step runs
on global arrays, and the per-patient results are gathered on every process. Patients travel as
integers (their pseudonym 'P' + 12 hex digits read as a number) so they can be gathered like any
other array.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from input_pipeline.feed import pipeline
from input_pipeline.schema import PHASE_NAMES
from mrp_jax.core import augment, sharding
from mrp_jax.models import resnet


@dataclasses.dataclass(frozen=True)
class Predictions:
  """patient_ids [N] str; logit [N] (pCR log-odds, float64 from the model's float32);
  probability [N] (pCR, sigmoid of the logit); label [N] (1/0); image_probability [N] (the
  knowledge predictor's image-only estimate) and image_present [N] bool, None for rhpc."""
  patient_ids: np.ndarray
  logit: np.ndarray
  probability: np.ndarray
  label: np.ndarray
  image_probability: np.ndarray | None
  image_present: np.ndarray | None


def patient_number(patient_id: str) -> int:
  return int(patient_id[1:], 16) if patient_id else -1


def patient_string(number: int) -> str:
  return f"P{number:012x}"


def make_eval_step(model: nn.Module) -> Callable[..., Any]:
  """``(params, batch_stats, batch) -> outputs``: the model in evaluation mode on a stored
  batch (images scaled as in training, no augmentation): its outputs ('logit', features, ...)
  plus 'probability' (pCR) and, for the fused models, 'image_probability'."""
  def eval_step(params, batch_stats, batch):
    outputs = model.apply({"params": params, "batch_stats": batch_stats},
                          augment.prepare_images(batch), train=False)
    outputs = dict(outputs, logit=outputs["logit"].astype(jnp.float32),
                   probability=jax.nn.sigmoid(outputs["logit"]))
    if "image_logit" in outputs:
      outputs["image_probability"] = jax.nn.sigmoid(outputs["image_logit"])
    return outputs
  return eval_step


def jit_eval_step(model: nn.Module, in_shardings: Any = None,
                  compiler_options: dict[str, str] | None = None) -> Callable[..., Any]:
  """The jitted :func:`make_eval_step` (``in_shardings`` as jax.jit takes them, if given),
  compiled with ``compiler_options`` (default: this backend's options for forward-only
  programs, :func:`mrp_jax.models.resnet.forward_compiler_options`)."""
  options = resnet.forward_compiler_options() if compiler_options is None else compiler_options
  kwargs = {} if in_shardings is None else {"in_shardings": in_shardings}
  return jax.jit(make_eval_step(model), compiler_options=options or None, **kwargs)


# What prediction keeps of the eval step's outputs (gathered from every process).
PREDICTION_KEYS = ("logit", "probability", "image_probability", "image_present")


def predict(eval_step: Callable[..., Any], state: Any, mesh, paths: list[str], *,
            model_name: str, phase: str, batch_size: int) -> Predictions:
  """Runs ``eval_step`` (jitted) over every eligible patient of ``paths`` at ``phase``.

  On a one-device mesh the images reach the device as the records' views (no host batch:
  input_pipeline/feed/pipeline.py, "Views"), stacked inside the eval step.
  """
  if phase not in PHASE_NAMES:
    raise ValueError(f"phase must be one of {PHASE_NAMES}, got {phase!r}")
  local = sharding.local_batch_size(batch_size)
  rows = []
  for batch, ids in pipeline.eval_batches(paths, model_name=model_name, phase=phase,
                                          batch_size=local,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count(),
                                          views=mesh.size == 1):
    numbers = np.asarray([patient_number(i) for i in ids], np.int64)
    out = eval_step(state.params, state.batch_stats, sharding.global_batch(batch, mesh))
    out = {k: multihost_utils.process_allgather(out[k], tiled=True)
           for k in PREDICTION_KEYS if k in out}
    gathered = multihost_utils.process_allgather(
        {"id": numbers, "label": batch["label"], "mask": batch["example_mask"]}, tiled=True)
    rows.append({**{k: np.asarray(v) for k, v in out.items()}, **gathered})
  if not rows:
    return Predictions(np.zeros((0,), str), np.zeros((0,)), np.zeros((0,)), np.zeros((0,)),
                       None, None)
  merged = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  keep = merged["mask"] > 0
  order = np.argsort(merged["id"][keep], kind="stable")
  pick = lambda k: merged[k][keep][order]
  return Predictions(
      patient_ids=np.asarray([patient_string(n) for n in pick("id")]),
      logit=pick("logit").astype(np.float64),
      probability=pick("probability").astype(np.float64),
      label=pick("label").astype(np.int64),
      image_probability=(pick("image_probability").astype(np.float64)
                         if "image_probability" in merged else None),
      image_present=pick("image_present").astype(bool) if "image_present" in merged else None)

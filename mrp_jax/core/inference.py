"""Predictions for every patient of a split at one phase, on any number of devices and hosts.

Each process reads its share of the records (pipeline.eval_batches), the jitted eval step runs
on global arrays, and the per-patient results are gathered on every process. Patients travel as
integers (their pseudonym 'P' + 12 hex digits read as a number) so they can be gathered like any
other array. A patient scored on several rows (iMGrhpc: one per mammogram view) gets the mean of
their probabilities (:func:`per_patient`): one prediction per patient and phase for every model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from scipy import special

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
  input_pipeline/feed/pipeline.py, "Views"), stacked inside the eval step. An iMGrhpc patient
  with several mammogram views is scored on each; its prediction is their average
  (:func:`per_patient`).
  """
  if phase not in PHASE_NAMES:
    raise ValueError(f"phase must be one of {PHASE_NAMES}, got {phase!r}")
  local = sharding.local_batch_size(batch_size)
  rows = []
  feed = pipeline.EvalFeed(model_name=model_name, phase=phase, batch_size=local,
                           process_index=jax.process_index(),
                           process_count=jax.process_count(), views=mesh.size == 1)
  for batch, ids in pipeline.eval_batches(paths, feed):
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
  return per_patient({k: v[keep] for k, v in merged.items() if k != "mask"})


def per_patient(rows: dict[str, np.ndarray]) -> Predictions:
  """The predictions of scored rows, one per patient, sorted by patient.

  Args:
    rows: per row 'id' (:func:`patient_number`), 'label', 'logit', 'probability' and, for the
      fused models, 'image_probability' and 'image_present'; a patient may have several rows
      (one per mammogram view).

  Returns:
    Per patient: a patient with one row keeps its outputs as they are. A patient with several
    has the mean of its rows' probabilities (each the sigmoid of its float64 logit) as its
    probability, their log-odds as its logit (what calibration and MRP read), and the mean of
    its rows' image-only probabilities, as the paper averages probabilities per patient.
  """
  image = "image_probability" in rows
  order = np.argsort(rows["id"], kind="stable")
  ids = rows["id"][order]
  if not len(ids):
    empty = np.zeros((0,))
    return Predictions(np.zeros((0,), str), empty, empty, empty, empty if image else None,
                       np.zeros((0,), bool) if image else None)
  starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
  counts = np.diff(np.r_[starts, len(ids)])
  several = counts > 1

  def column(key: str, dtype=np.float64) -> np.ndarray:
    return rows[key][order].astype(dtype)

  def mean(values: np.ndarray) -> np.ndarray:
    return np.add.reduceat(values, starts) / counts

  logit, probability = column("logit"), column("probability")
  averaged = mean(special.expit(logit))
  return Predictions(
      patient_ids=np.asarray([patient_string(n) for n in ids[starts]]),
      logit=np.where(several, special.logit(averaged), logit[starts]),
      probability=np.where(several, averaged, probability[starts]),
      label=column("label", np.int64)[starts],
      image_probability=mean(column("image_probability")) if image else None,
      image_present=(np.maximum.reduceat(column("image_present", bool), starts) if image
                     else None))

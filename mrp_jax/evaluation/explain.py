"""Integrated Gradients attributions of the MRP models (paper Fig. 4; docs/background.md section 3).

Integrated Gradients (Sundararajan et al. 2017) attributes f(x) - f(x') to the inputs:

  IG_i(x) = (x_i - x'_i) * integral_0^1 df/dx_i (x' + a (x - x')) da,

and the attributions sum to f(x) - f(x') (completeness). The integral is a quadrature over path
points a_k with weights w_k: Gauss-Legendre on [0, 1] with 50 nodes and a zero baseline by
default, as captum's ``IntegratedGradients`` does, or a Riemann rule. ``delta``, the sum of the
attributions minus f(x) - f(x'), measures the quadrature error.

Path points are batched: the gradient is vmapped over a chunk of points, and chunks run one after
another in a ``lax.scan`` that carries only the running weighted sum of gradients. Memory is
therefore that of one gradient evaluation of ``chunk_size`` path points times the batch, never of
all ``steps`` points, which is what makes 3D volumes feasible (docs/design.md, "Explanations").

Every example's output must depend on that example's inputs only (the models in eval mode:
BatchNorm uses its running statistics), so one gradient of the batch sum gives every example's
gradient at once.

The model-level functions then sum attributions per rhpc variable (its one-hot slice of the
input vector, ``encoding.INPUT_SLICES``) and per image (each MRI slot, the mammogram), combine the
models of the MRP ensemble per case as the ensemble itself does (its weights, or the one model
whose image the case has), and rank features over cases as the paper's Fig. 4 does.

The baseline is chosen by the caller. The evaluate job and `predict` use the *reference patient*
(the training split's most common value of every rhpc variable, evaluation/cohort.py) for the
rhpc input and black images: a variable at its most common value then gets exactly no
attribution, so a variable that hardly varies (sex) cannot rank for carrying no information,
and every path point is a one-hot input the model was trained on. An all-zero rhpc baseline
would mean "no category at all", an input no patient has.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import encoding, schema
from mrp_jax.core import augment

METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
           "riemann_trapezoid")
# Entries of an attribution dict that are diagnostics, not features.
DIAGNOSTICS = ("delta", "output_difference")
# Per-slot MRI entries: parts of 'MRI', left out of rankings where 'MRI' is present so the
# image is not counted twice.
MRI_SLOTS = ("MRI baseline", "MRI follow-up")
IMAGE_LABELS = {"mg": "MG", "mri": "MRI"}
# Image voxels (path points x examples x voxels per example) evaluated at once when
# model_attributions picks the chunk size: about 2 full-size MRI pairs (176 x 176 x 352 each).
# Float32 gradients of the default 3D ResNet18 take roughly 1 GB per 10^7 voxels
# (docs/design.md, "Explanations").
AUTO_CHUNK_VOXELS = 2 ** 25
# ... and at most this many examples (path points x batch) at once: XLA:CPU's 3D convolutions
# slow down by far more than the batch grows beyond a training-sized batch (tiny iMRrhpc, 8
# cases x 16 points: 142 s as one chunk of 128, 4.9 s as 4 chunks of 32; docs/performance.md,
# "Integrated Gradients on XLA:CPU").
AUTO_CHUNK_EXAMPLES = 32


# --------------------------------------------------------------------------------------------
# Integrated Gradients of any function
# --------------------------------------------------------------------------------------------
def path_nodes(steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
  """Quadrature nodes and weights on [0, 1], as captum's IntegratedGradients defines them.

  Args:
    steps: number of path points (>= 1; >= 2 for 'riemann_trapezoid').
    method: 'gausslegendre' (exact for polynomials of degree 2 * steps - 1 along the path),
      'riemann_left', 'riemann_right', 'riemann_middle' or 'riemann_trapezoid'.

  Returns:
    (alphas [steps], weights [steps]) float64; the weights sum to 1.
  """
  if steps < 1 or (method == "riemann_trapezoid" and steps < 2):
    least = 2 if method == "riemann_trapezoid" else 1
    raise ValueError(f"Integrated Gradients needs steps >= {least}"
                     f" for method {method!r}, got {steps}")
  n = steps
  if method == "gausslegendre":
    nodes, weights = np.polynomial.legendre.leggauss(n)  # on [-1, 1], weights sum to 2
    return 0.5 * (nodes + 1.0), 0.5 * weights
  if method == "riemann_trapezoid":
    weights = np.full(n, 1.0 / (n - 1))
    weights[[0, -1]] *= 0.5
    return np.linspace(0.0, 1.0, n), weights
  offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
  if method not in offsets:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  return (np.arange(n) + offsets[method]) / n, np.full(n, 1.0 / n)


def integrated_gradients(
    f: Callable[[dict[str, jax.Array]], jax.Array],
    inputs: Mapping[str, jax.Array],
    baseline: Mapping[str, Any] | None = None,
    *,
    steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int | None = None,
) -> tuple[dict[str, jax.Array], jax.Array]:
  """Integrated Gradients of a per-example scalar function; jit the caller.

  Args:
    f: ``inputs -> [B]``, one scalar per example (a logit, a probability), where example b's
      value depends on example b's inputs only. Inputs not attributed are closed over.
    inputs: name -> float array [B, ...] (shared leading batch axis B).
    baseline: None (zeros, captum's default) or name -> array broadcastable to that input;
      names left out get zeros.
    steps: path points of the quadrature (captum's default 50).
    method: see :func:`path_nodes`.
    chunk_size: path points evaluated together (vmapped); chunks run sequentially in a scan,
      so memory is that of ``chunk_size`` x B examples. None: all steps at once. When it does
      not divide ``steps`` the last chunk is padded with zero-weight points (extra compute).

  Returns:
    (attributions, delta): attributions name -> [B, ...] like ``inputs``; delta [B] =
    sum of every attribution of the example - (f(inputs) - f(baseline)), the completeness error.
  """
  inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
  for k, v in inputs.items():
    if not jnp.issubdtype(v.dtype, jnp.floating):
      raise TypeError(f"integrated_gradients: input {k!r} must be floating point, got {v.dtype}"
                      " (convert images with augment.prepare_images first)")
  baseline = dict(baseline or {})
  unknown = set(baseline) - set(inputs)
  if unknown:
    raise ValueError(f"baseline has keys {sorted(unknown)} that are not inputs {sorted(inputs)}")
  base = {k: jnp.broadcast_to(jnp.asarray(baseline.get(k, 0.0), v.dtype), v.shape)
          for k, v in inputs.items()}
  diff = {k: inputs[k] - base[k] for k in inputs}
  alphas, weights = path_nodes(steps, method)

  def total(point):
    return jnp.sum(f(point))

  def gradient_at(alpha):
    point = {k: base[k] + alpha.astype(base[k].dtype) * diff[k] for k in inputs}
    return jax.grad(total)(point)

  def weighted_sum(alpha_chunk, weight_chunk):
    grads = jax.vmap(gradient_at)(alpha_chunk)  # name -> [C, B, ...]
    return {k: jnp.tensordot(weight_chunk.astype(g.dtype), g, axes=1) for k, g in grads.items()}

  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
  chunk_size = steps if chunk_size is None else min(chunk_size, steps)
  chunks = math.ceil(steps / chunk_size)
  pad = chunks * chunk_size - steps
  alphas = np.concatenate([alphas, np.zeros(pad)]).reshape(chunks, chunk_size)
  weights = np.concatenate([weights, np.zeros(pad)]).reshape(chunks, chunk_size)

  def body(carry, chunk):
    part = weighted_sum(*chunk)
    return jax.tree.map(jnp.add, carry, part), None

  # A single chunk goes through the scan too: XLA:CPU ran the unscanned program (the path points
  # as constants) 50 times slower (16 points of one demo iMRrhpc patient: 25 s instead of 0.5 s,
  # compiled in 35 s instead of 6 s; docs/performance.md, "Integrated Gradients on XLA:CPU").
  zero = jax.tree.map(jnp.zeros_like, inputs)
  mean_grad, _ = jax.lax.scan(
      body, zero, (jnp.asarray(alphas, jnp.float32), jnp.asarray(weights, jnp.float32)))

  attributions = {k: diff[k] * mean_grad[k] for k in inputs}
  attribution_sum = sum(_per_example_sum(a) for a in attributions.values())
  delta = attribution_sum - (f(inputs) - f(base))
  return attributions, delta


def _per_example_sum(x: jax.Array) -> jax.Array:
  """[B, ...] -> [B]."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


# --------------------------------------------------------------------------------------------
# Attributions of the MRP models, per rhpc variable and per image
# --------------------------------------------------------------------------------------------
def _float32_model(model: nn.Module) -> nn.Module:
  """The model with float32 computation (parameters are float32 already).

  bfloat16 gradients along 50 path points make completeness errors of several percent; float32
  explains the same function up to rounding.
  """
  encoder = getattr(model, "encoder", None)
  if encoder is not None and jnp.dtype(encoder.get("dtype", jnp.float32)) != jnp.float32:
    return model.clone(encoder=flax.core.FrozenDict({**encoder, "dtype": jnp.float32}))
  return model


def auto_chunk_size(steps: int, batch_size: int, voxels_per_example: int) -> int:
  """Path points per chunk keeping points x examples x voxels near AUTO_CHUNK_VOXELS and
  points x examples at most AUTO_CHUNK_EXAMPLES, spread evenly over the chunks so padding stays
  below one point per chunk. Models without images take every point at once."""
  if voxels_per_example == 0:
    return steps
  limit = max(1, min(AUTO_CHUNK_VOXELS // max(1, batch_size * voxels_per_example),
                     AUTO_CHUNK_EXAMPLES // max(1, batch_size)))
  chunks = math.ceil(steps / min(limit, steps))
  return math.ceil(steps / chunks)


@dataclasses.dataclass(frozen=True)
class AttributionOptions:
  """How :func:`model_attributions` integrates: the explained output, the quadrature and the
  baseline.

  A pytree: ``rhpc_baseline`` and ``calibration`` are its leaves (traced arrays under jit), the
  other fields its static metadata (part of the compiled program's cache key).

  Attributes:
    target: 'logit' (pCR log-odds) or 'probability' (sigmoid(slope * logit + intercept) with
      ``calibration`` = (slope, intercept): the calibrated probability the MRP ensemble
      averages; (1, 0) is the model's own probability).
    steps, method: quadrature (see :func:`path_nodes`).
    chunk_size: path points per chunk; None chooses one from the image size
      (:func:`auto_chunk_size`).
    float32: compute in float32 even when the model is configured for bfloat16.
    rhpc_baseline: [INPUT_DIM] or [B, INPUT_DIM] rhpc baseline (e.g. the reference patient's
      ``encoding.model_inputs``); None: zeros.
    calibration: (slope, intercept) of the 'probability' target: scalars, or [B] each (one
      map per example: `predict` batches patients at different phases).
  """
  target: str = "logit"
  steps: int = 50
  chunk_size: int | None = None
  method: str = "gausslegendre"
  float32: bool = True
  rhpc_baseline: Any = None
  calibration: Any = (1.0, 0.0)


jax.tree_util.register_dataclass(
    AttributionOptions, data_fields=["rhpc_baseline", "calibration"],
    meta_fields=["target", "steps", "chunk_size", "method", "float32"])


@functools.partial(jax.jit, static_argnames=("model",))
def _model_attributions(variables, fixed, inputs, options, *, model):
  """Jitted core of model_attributions: per-label sums [B] (on the device, so full volumes of
  attributions never travel to the host). ``options`` has its chunk size chosen, its rhpc
  baseline (or None) broadcast to ``inputs['rhpc']`` and its calibration an array."""

  def f(attributed):
    logit = model.apply(variables, {**fixed, **attributed}, train=False)["logit"]
    logit = logit.astype(jnp.float32)
    if options.target == "logit":
      return logit
    return jax.nn.sigmoid(options.calibration[0] * logit + options.calibration[1])

  baseline = {} if options.rhpc_baseline is None else {"rhpc": options.rhpc_baseline}
  attributions, delta = integrated_gradients(f, inputs, baseline, steps=options.steps,
                                             method=options.method,
                                             chunk_size=options.chunk_size)
  out = {}
  rhpc = attributions["rhpc"]
  for variable, (start, stop) in zip(schema.VARIABLES, encoding.INPUT_SLICES):
    out[variable.label] = jnp.sum(rhpc[:, start:stop], axis=1)
  if "mri" in attributions:
    slots = jnp.sum(attributions["mri"].reshape(*attributions["mri"].shape[:2], -1), axis=2)
    out["MRI"] = jnp.sum(slots, axis=1)
    out["MRI baseline"], out["MRI follow-up"] = slots[:, 0], slots[:, 1]
  if "mg" in attributions:
    out["MG"] = _per_example_sum(attributions["mg"])
  out["delta"] = delta
  # sum(attributions) - delta is f(x) - f(baseline) without two more forward passes.
  out["output_difference"] = sum(_per_example_sum(a) for a in attributions.values()) - delta
  out["output"] = f(inputs)
  out["baseline_output"] = out["output"] - out["output_difference"]
  return out


def model_attributions(model: nn.Module, variables: Mapping[str, Any],
                       batch: Mapping[str, Any],
                       options: AttributionOptions = AttributionOptions()
                       ) -> dict[str, np.ndarray]:
  """Integrated Gradients of one MRP model's pCR output, summed per feature.

  The rhpc vector and the model's images are attributed together against a baseline: the rhpc
  vector ``options.rhpc_baseline`` (default zeros, captum's default) and black images; phases,
  masks and the other batch entries are held fixed. A missing image slot is zero in the input
  and in the baseline, so its attribution is exactly 0; so is a variable whose value is the
  baseline's.

  Args:
    model: rhpc, iMGrhpc or iMRrhpc module (``models.create_model``).
    variables: {'params': ..., 'batch_stats': ...}; the model runs in eval mode.
    batch: as ``input_pipeline.examples.collate`` makes it: 'rhpc' [B, encoding.INPUT_DIM] and,
      for image models, 'mri' [B, 2, z, y, x] or 'mg' [B, 1, rows, cols] with their masks and
      phases (raw dtypes: ``augment.prepare_images`` scales them first).
    options: the explained output (target, calibration), the quadrature (steps, method,
      chunk_size), float32 and the rhpc baseline (:class:`AttributionOptions`).

  Returns:
    label -> float32 [B]: one entry per rhpc variable (``Variable.label``); 'MRI', 'MRI
    baseline', 'MRI follow-up' (iMRrhpc) or 'MG' (iMGrhpc); 'delta' (completeness error),
    'output_difference' (f(x) - f(baseline)), 'output' (f(x)) and 'baseline_output'
    (f(baseline)).
  """
  if options.target not in ("logit", "probability"):
    raise ValueError(f"target must be 'logit' or 'probability', got {options.target!r}")
  if options.float32:
    model = _float32_model(model)
  batch = augment.prepare_images(batch)
  image_key = getattr(model, "image_key", None)
  attributed = ["rhpc"] + ([image_key] if image_key in batch else [])
  inputs = {k: jnp.asarray(batch[k], jnp.float32) for k in attributed}
  fixed = {k: jnp.asarray(v) for k, v in batch.items()
           if k not in inputs and np.asarray(v).dtype.kind in "biuf"}
  chunk_size = options.chunk_size
  if chunk_size is None:
    voxels = sum(math.prod(inputs[k].shape[1:]) for k in attributed if k != "rhpc")
    chunk_size = auto_chunk_size(options.steps, inputs["rhpc"].shape[0], voxels)
  rhpc_baseline = None if options.rhpc_baseline is None else jnp.broadcast_to(
      jnp.asarray(options.rhpc_baseline, jnp.float32), inputs["rhpc"].shape)
  traced = dataclasses.replace(options, chunk_size=chunk_size, rhpc_baseline=rhpc_baseline,
                               calibration=jnp.asarray(options.calibration, jnp.float32))
  out = _model_attributions(dict(variables), fixed, inputs, traced, model=model)
  return {k: np.asarray(v, np.float32) for k, v in jax.device_get(out).items()}


# --------------------------------------------------------------------------------------------
# Combining, picking and ranking (plain numpy)
# --------------------------------------------------------------------------------------------
# Entries combined like features (linear in the function) but never ranked.
_OUTPUTS = ("output", "baseline_output")


def combine_attributions(per_model: Mapping[str, Mapping[str, np.ndarray]],
                         weights: Mapping[str, Any],
                         output: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """An ensemble's attributions: per case, the sum over models of its weight x attributions.

  IG is linear in the function for a fixed baseline, so IG(W1 F1 + W2 F2) = W1 IG(F1) +
  W2 IG(F2) case by case, also when the weights differ per case (the MRP ensemble falls back to
  the model whose image a case has: ensemble.case_weights). A feature a model lacks (MG for
  iMRrhpc) counts as 0 for it. 'output' and 'baseline_output' combine the same way.

  Args:
    per_model: model name -> label -> [B] (the same B patients in every model).
    weights: model name -> weight, a scalar or [B] per case, for every model of
      ``per_model``.
    output: [B] the ensemble's own output for these cases (e.g. the MRP probability the
      evaluation reports). Given, 'output' is it, and 'delta' and 'output_difference' are
      recomputed against it, so completeness is checked against what the ensemble really
      outputs, not against the mixture of the models' outputs. Else they combine linearly.
  """
  missing = set(per_model) - set(weights)
  if missing:
    raise ValueError(f"combine_attributions: no weight for {sorted(missing)}")
  features: list[str] = []
  for attributions in per_model.values():
    features += [k for k in attributions if k not in features]
  combined = {}
  for feature in features:
    parts = [np.asarray(weights[name], np.float64) * np.asarray(a[feature], np.float64)
             for name, a in per_model.items() if feature in a]
    combined[feature] = np.sum(np.broadcast_arrays(*parts), axis=0)
  if output is not None:
    if "baseline_output" not in combined:
      raise ValueError("combine_attributions: checking against an output needs each model's "
                       "'baseline_output' (model_attributions returns it)")
    combined["output"] = np.asarray(output, np.float64)
    combined["output_difference"] = combined["output"] - combined["baseline_output"]
    total = sum(combined[k] for k in _feature_keys(combined))
    combined["delta"] = total - combined["output_difference"]
  return combined


def _feature_keys(attributions: Mapping[str, Any]) -> list[str]:
  """Features to rank: no diagnostics or outputs, and no per-slot MRI entries when 'MRI' is
  present (they are parts of it)."""
  return [k for k in attributions if k not in DIAGNOSTICS and k not in _OUTPUTS
          and not (k in MRI_SLOTS and "MRI" in attributions)]


def top_features(attributions: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
  """The k features of ONE example with the largest |attribution|, largest first.

  Args:
    attributions: label -> scalar or array of length 1.

  Returns:
    [{'feature': label, 'attribution': float}] (positive pushes towards pCR).
  """
  values = {}
  for key in _feature_keys(attributions):
    value = np.asarray(attributions[key], np.float64).reshape(-1)
    if value.size != 1:
      raise ValueError(f"top_features explains one example; {key!r} has {value.size} values")
    values[key] = float(value[0])
  ordered = sorted(values, key=lambda key: -abs(values[key]))
  return [{"feature": key, "attribution": values[key]} for key in ordered[:k]]


# How rank_attributions summarises cases: 'signed' is the paper's Fig. 4, 'magnitude' ranks
# importance whatever its direction.
RANKINGS = ("signed", "magnitude")
_GROUP_OF = {v.label: v.group.value for v in schema.VARIABLES}


def feature_group(feature: str) -> str:
  """'r', 'h', 'p', 'c' for an rhpc variable's label (the paper's colours), 'image' else."""
  return _GROUP_OF.get(feature, "image")


def rank_attributions(per_case: Mapping[str, np.ndarray],
                      ranking: str = "signed") -> list[dict[str, Any]]:
  """Features summarised over cases and ranked, as the paper's Fig. 4 does.

  'signed' (Fig. 4): per feature the mean over cases of its signed attribution ("averaged
  contributing values among cases") and their standard deviation, both divided by the sum of
  |mean| over the features ("normalized across the included attributes"); sorted by the signed
  value, largest first, so features that push towards non-pCR come last with negative bars.

  'magnitude': each case's |attributions| divided by their sum over the features (every case
  weighs the same), then mean and standard deviation over cases; sorted by the mean.

  Args:
    per_case: label -> [N] attributions of N cases (diagnostics, outputs and per-slot MRI
      entries are left out as in :func:`top_features`).
    ranking: one of RANKINGS.

  Returns:
    [{'feature', 'group', 'value', 'std', 'rank'}] in the figure's order; 'value' is the bar
    (normalised signed mean, or mean normalised magnitude), 'std' its error bar, 'rank' the
    feature's place by |value| (1: most important). Empty when there are no cases.
  """
  if ranking not in RANKINGS:
    raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
  keys = _feature_keys(per_case)
  if not keys:
    return []
  values = np.stack([np.asarray(per_case[k], np.float64).reshape(-1) for k in keys], axis=1)
  if values.shape[0] == 0:
    return []
  if ranking == "signed":
    mean, std = values.mean(0), values.std(0)
    scale = np.abs(mean).sum()
    # Every case with f(x) == f(baseline): no direction anywhere, all bars 0.
    value, spread = ((mean / scale, std / scale) if scale > 0
                     else (np.zeros_like(mean), np.zeros_like(std)))
  else:
    scale = np.sum(np.abs(values), axis=1, keepdims=True)
    # A case with every attribution 0 (f(x) == f(baseline)) carries no ranking information.
    normalised = np.abs(np.divide(values, scale, out=np.zeros_like(values), where=scale > 0))
    value, spread = normalised.mean(0), normalised.std(0)
  importance = np.argsort(np.argsort(-np.abs(value), kind="stable"), kind="stable") + 1
  rows = [{"feature": key, "group": feature_group(key), "value": float(value[j]),
           "std": float(spread[j]), "rank": int(importance[j])} for j, key in enumerate(keys)]
  return sorted(rows, key=lambda row: -row["value"])

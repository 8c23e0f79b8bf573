"""Platt scaling: each model's pCR probability as a calibrated risk, fitted on the fit split;
and reliability diagrams (:func:`calibration_curve`), which show how calibrated it is.

The decision curves, every threshold and the MRP ensemble read a model's output as the risk of
pCR, but a fused model trained with weighted losses and modality dropout need not be calibrated:
one model may say 0.0001 where another says 0.08 for the same patient, and averaging such
numbers (MRP) or reading them against a 10% threshold (the decision curves) is meaningless.
Each model's logit z is therefore mapped to

  p = sigmoid(a z + b),  a > 0,

with (a, b) fitted per model and phase on the fit split (Platt 1999, with his smoothed targets
(N+ + 1) / (N+ + 2) and 1 / (N- + 2), which keep the fit finite when the fit split is separable).
The map is strictly increasing, so it leaves every AUROC, ROC and DeLong test unchanged.

Why Platt and not temperature scaling (a only, b = 0): temperature scaling keeps logit 0 at
probability 0.5 and only sharpens or softens around it, so it cannot correct a model whose
logits are shifted as a whole (all its patients below 1%), which is how the fused models are
miscalibrated; Platt's intercept does. Two parameters on the ~100 patients of a validation split
are well determined; isotonic regression (a free monotone step function) would need many more
and is not strictly increasing (its ties would change the AUROC).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import optimize, special

from mrp_jax.evaluation.statistics import (
    PERCENTILES,
    Bootstrap,
    check_predictions,
    divide,
    multiplicities,
)

# Smallest slope allowed: a model that ranks the fit split backwards gets the flattest
# increasing map instead of a decreasing one (its ranking, and so its AUROC, is kept).
MIN_SLOPE = 1e-6
METHOD = "platt"
# The fit stops when each component of the mean score (gradient of the mean log-likelihood)
# is below this.
GRADIENT_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class PlattMap:
  """p = sigmoid(slope * logit + intercept), fitted on n cases of which n_pcr pCR.

  Attributes:
    slope, intercept: the map.
    n, n_pcr: the fit cases.
    at_bound: the fit wanted a slope <= MIN_SLOPE (the model ranks the fit split no better
      than chance); its calibrated probabilities are nearly constant.
  """
  slope: float
  intercept: float
  n: int
  n_pcr: int
  at_bound: bool = False

  def __call__(self, logit: Any) -> np.ndarray:
    """Calibrated probabilities, float64, same shape as ``logit``."""
    return special.expit(self.slope * np.asarray(logit, np.float64) + self.intercept)


IDENTITY = PlattMap(1.0, 0.0, 0, 0)  # sigmoid(logit): the model's own probability


def fit_platt(y_true: Any, logit: Any) -> PlattMap:
  """Fits the Platt map of logits [N] to labels [N] (1 pCR) by maximum likelihood.

  Without both classes there is nothing to fit: the identity map is returned (n says so).
  """
  y = np.asarray(y_true, bool)
  z = np.asarray(logit, np.float64)
  if y.shape != z.shape or z.ndim != 1:
    raise ValueError(f"labels {y.shape} and logits {z.shape} must both have shape [N]")
  if not np.isfinite(z).all():
    raise ValueError("logits must be finite")
  positives, negatives = int(y.sum()), int((~y).sum())
  if positives == 0 or negatives == 0:
    return dataclasses.replace(IDENTITY, n=int(y.size), n_pcr=positives)
  target = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))

  def loss(params):
    slope, intercept = params
    u = slope * z + intercept
    # Cross-entropy with soft targets: softplus(u) - target * u, and its gradient.
    value = np.sum(np.logaddexp(0.0, u) - target * u)
    residual = special.expit(u) - target
    return value, np.array([residual @ z, residual.sum()])

  prior = math.log((positives + 1) / (negatives + 1))
  # Stopped by the gradient, not by a small relative change of the loss: the fit is the
  # maximum to ~1e-9 of the score, whatever the loss's scale.
  result = optimize.minimize(loss, x0=np.array([1.0, prior]), jac=True, method="L-BFGS-B",
                             bounds=[(MIN_SLOPE, None), (None, None)],
                             options={"ftol": 0.0, "gtol": GRADIENT_TOLERANCE * y.size,
                                      "maxiter": 1000})
  slope, intercept = (float(v) for v in result.x)
  return PlattMap(slope, intercept, int(y.size), positives,
                  at_bound=bool(slope <= MIN_SLOPE * (1 + 1e-9)))


def save(path: str | Path, maps: Mapping[str, Mapping[str, PlattMap]], fit_split: str) -> None:
  """Writes {model label: {phase: map}} as JSON (for `predict`)."""
  Path(path).write_text(json.dumps(
      {"method": METHOD, "fit_split": fit_split,
       "maps": {label: {phase: dataclasses.asdict(m) for phase, m in sorted(phases.items())}
                for label, phases in sorted(maps.items())}}, indent=1))


def load(path: str | Path) -> dict[str, dict[str, PlattMap]]:
  """{model label: {phase: map}} from :func:`save`'s file."""
  data = json.loads(Path(path).read_text())
  if data.get("method") != METHOD:
    raise ValueError(f"{path}: not a calibration file of method {METHOD!r}")
  return {label: {phase: PlattMap(**m) for phase, m in phases.items()}
          for label, phases in data["maps"].items()}


# ---------------------------------------------------------------- reliability diagrams

@dataclasses.dataclass(frozen=True)
class CalibrationCurve:
  """Observed pCR rate against predicted probability in equal-width bins, for a reliability
  diagram, with bootstrap percentile 95% bands.

  Attributes:
    edges: [B + 1] bin edges on [0, 1] (a case falls in [e_k, e_k+1), the last bin closed).
    count: [B] cases per bin.
    predicted: [B] mean predicted probability of the bin's cases (NaN for an empty bin).
    observed: [B] share of pCR among them (NaN for an empty bin).
    low, high: [B] 2.5th / 97.5th percentiles of the observed share over the replicates in
      which the bin holds a case; NaN where fewer than the bootstrap's ``min_valid`` (by
      default half the replicates) do.
    replicates: bootstrap replicates drawn.
  """
  edges: np.ndarray
  count: np.ndarray
  predicted: np.ndarray
  observed: np.ndarray
  low: np.ndarray
  high: np.ndarray
  replicates: int

  def as_dict(self) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in dataclasses.asdict(self).items()}


def calibration_curve(y_true: Any, probability: Any, *, bins: int = 10,
                      bootstrap: Bootstrap = Bootstrap()) -> CalibrationCurve:
  """The reliability diagram of probabilities of pCR in ``bins`` equal-width bins (see
  :class:`CalibrationCurve`), with bands from ``bootstrap``'s replicates; a calibrated model
  lies on the diagonal."""
  y, p = check_predictions(y_true, probability)
  edges = np.linspace(0.0, 1.0, bins + 1)
  member = np.zeros((y.size, bins))
  member[np.arange(y.size), np.clip(np.searchsorted(edges, p, side="right") - 1, 0,
                                    bins - 1)] = 1.0
  count = member.sum(0)
  predicted = divide(p @ member, count)
  observed = divide(y @ member, count)
  weights = multiplicities(bootstrap.indices(y), y.size)
  counts = weights @ member  # [R, B]
  shares = divide(weights @ (member * y[:, None]), counts)
  low = high = np.full(bins, np.nan)
  if bootstrap.replicates:
    enough = np.isfinite(shares).sum(0) >= bootstrap.minimum
    with np.errstate(all="ignore"):
      bounds = np.nanpercentile(np.where(enough, shares, 0.0), PERCENTILES, axis=0)
    low, high = (np.where(enough, bound, np.nan) for bound in bounds)
  return CalibrationCurve(edges, count.astype(int), predicted, observed, low, high,
                          int(bootstrap.replicates))

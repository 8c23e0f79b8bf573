"""The paper's classification statistics in plain numpy, vectorised over bootstrap replicates.

Inputs are ``y_true`` [N] in {0, 1} (1 = pCR) and ``score`` [N], the predicted probability of pCR
(any real score works where only the order matters). A case is predicted pCR when
``score >= threshold``.

Every metric is computed from per-tie-group case counts: the distinct scores are sorted once and
a bootstrap replicate is a vector of multiplicities [N] (how often each case was drawn), so the
counts of all R replicates are one ``np.add.reduceat`` over a [R, N] matrix and every metric of
every replicate follows without a Python loop. A replicate gives exactly the value the metric
has on the resampled arrays ``y[idx], score[idx]`` (copies of one case are ties).

Degenerate inputs never raise: an undefined metric is NaN. AUROC and both AUPRCs are undefined
with one class or no cases; sensitivity without pCR; specificity without non-pCR; PPV without
predicted pCR; NPV without predicted non-pCR. (scikit-learn instead returns 1.0 or 0.0 with a
warning for some of these.)

* AUROC: trapezoidal area = Mann-Whitney U / (m n), ties counted 1/2.
* AUPRC, two definitions named apart: ``auprc_average_precision`` (step-wise, scikit-learn's
  ``average_precision_score``) and ``auprc_trapezoidal`` (trapezoids over the PR curve from
  (recall 0, precision 1), as ``auc(recall, precision)`` over ``precision_recall_curve``).
* 95% CIs: bootstrap percentile intervals (Carpenter & Bithell 2000), 1000 seeded replicates by
  default, optionally stratified by class.
* Brier score with its bootstrap CI; ROC and PR curves with bootstrap bands (for plots).

Beside it: delong.py (DeLong's test and CI for correlated AUROCs), subgroups.py (subgroup
tables and odds ratios of pCR) and calibration.py (reliability diagrams).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

METRICS = ("auroc", "auprc_average_precision", "auprc_trapezoidal", "sensitivity",
           "specificity", "ppv", "npv")
_THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv")
PERCENTILES = (2.5, 97.5)  # the 95% percentile interval
Z95 = float(scipy_stats.norm.ppf(0.975))
INTERVAL = "bootstrap percentile 95% (Carpenter & Bithell 2000)"


def check_predictions(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
  """(y [N] bool, score [N] float64) from labels and scores of N cases.

  Raises ValueError on malformed input (shapes, labels other than 0/1, NaN scores), never on
  degenerate input (no cases, one class), which the metrics answer with NaN.
  """
  y, s = np.asarray(y_true), np.asarray(score, dtype=np.float64)
  if y.ndim != 1 or y.shape != s.shape:
    raise ValueError(f"y_true {y.shape} and score {s.shape} must both have shape [N]")
  if y.size and not np.isin(y, (0, 1)).all():
    raise ValueError("y_true must hold only 1 (pCR) and 0 (non-pCR)")
  if np.isnan(s).any():
    raise ValueError(f"score holds {int(np.isnan(s).sum())} NaN: drop or impute those cases")
  return y.astype(bool), s


def divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den, NaN where den is 0 (an undefined rate, not an error)."""
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


# ---------------------------------------------------------------- counts per tie group

@dataclasses.dataclass(frozen=True)
class _GroupCounts:
  """Case counts per distinct score ("tie group"), groups in descending score order.

  pos, neg: [R, G] (weighted) numbers of pCR / non-pCR cases at each group's score, one row per
  replicate; scores: [G] the group scores, descending.
  """
  pos: np.ndarray
  neg: np.ndarray
  scores: np.ndarray


def _group_counts(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> _GroupCounts:
  """Counts [R, G] of the cases [N] weighted by multiplicities ``weights`` [R, N]."""
  if s.size == 0:
    empty = np.zeros((weights.shape[0], 0))
    return _GroupCounts(empty, empty, np.zeros(0))
  order = np.argsort(-s, kind="stable")
  s_sorted = s[order]
  starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
  w = weights[:, order].astype(np.float64)
  pos = np.add.reduceat(w * y[order], starts, axis=1)
  return _GroupCounts(pos, np.add.reduceat(w, starts, axis=1) - pos, s_sorted[starts])


def _metrics(c: _GroupCounts, threshold: float | None) -> dict[str, np.ndarray]:
  """Every metric of ``METRICS`` [R] from group counts (threshold metrics if threshold given)."""
  m, n = c.pos.sum(1), c.neg.sum(1)
  tp, fp = np.cumsum(c.pos, 1), np.cumsum(c.neg, 1)  # cases with score >= each group's score
  two_classes = (m > 0) & (n > 0)
  # Mann-Whitney: each pCR case beats the non-pCR below its group and ties half of its own.
  u = (c.pos * (n[:, None] - fp + 0.5 * c.neg)).sum(1)
  # Groups not yet holding any case (possible in a replicate) sit at the PR start (0, 1).
  precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
  recall = tp / np.maximum(m, 1)[:, None]
  recall_prev = np.pad(recall, ((0, 0), (1, 0)))[:, :-1]
  precision_prev = np.pad(precision, ((0, 0), (1, 0)), constant_values=1.0)[:, :-1]
  out = {
      "auroc": divide(u, m * n),
      "auprc_average_precision": (c.pos * precision).sum(1) / np.maximum(m, 1),
      "auprc_trapezoidal": ((recall - recall_prev) * (precision + precision_prev) / 2).sum(1),
  }
  for name in ("auprc_average_precision", "auprc_trapezoidal"):
    out[name] = np.where(two_classes, out[name], np.nan)
  if threshold is not None:
    out.update(_confusion_rates(c, threshold))
  return out


def _confusion_rates(c: _GroupCounts, threshold: float) -> dict[str, np.ndarray]:
  """tp, fp, tn, fn [R] at ``score >= threshold`` = pCR and the four rates (NaN if undefined)."""
  predicted = c.scores >= threshold
  tp, fp = c.pos @ predicted, c.neg @ predicted
  fn, tn = c.pos.sum(1) - tp, c.neg.sum(1) - fp
  rates = {"sensitivity": divide(tp, tp + fn), "specificity": divide(tn, tn + fp),
           "ppv": divide(tp, tp + fp), "npv": divide(tn, tn + fn)}
  if math.isnan(threshold):  # e.g. Youden's J on a one-class validation set
    rates = {k: np.full_like(v, np.nan) for k, v in rates.items()}
  return dict(rates, tp=tp, fp=fp, tn=tn, fn=fn)


def _point(y_true: Any, score: Any, threshold: float | None = None) -> dict[str, Any]:
  """All metrics on the data itself, as Python floats."""
  y, s = check_predictions(y_true, score)
  values = _metrics(_group_counts(y, s, np.ones((1, y.size))), threshold)
  return {k: float(v[0]) for k, v in values.items()}


# ---------------------------------------------------------------- point metrics and curves

def auroc(y_true: Any, score: Any) -> float:
  """Area under the ROC curve (trapezoidal = Mann-Whitney U / (m n), ties 1/2); NaN if one class."""
  return _point(y_true, score)["auroc"]


def auprc_average_precision(y_true: Any, score: Any) -> float:
  """Step-wise AUPRC: sum_k (R_k - R_{k-1}) P_k over the distinct thresholds, as scikit-learn's
  ``average_precision_score``; NaN if one class."""
  return _point(y_true, score)["auprc_average_precision"]


def auprc_trapezoidal(y_true: Any, score: Any) -> float:
  """Trapezoidal AUPRC over ``pr_curve`` (which starts at recall 0, precision 1), as
  ``sklearn.metrics.auc(recall, precision)``; NaN if one class."""
  return _point(y_true, score)["auprc_trapezoidal"]


def threshold_metrics(y_true: Any, score: Any, threshold: float) -> dict[str, float]:
  """Sensitivity, specificity, PPV, NPV and the confusion counts at ``score >= threshold`` = pCR.

  sensitivity = TP / (TP + FN) (share of pCR found), specificity = TN / (TN + FP),
  PPV = TP / (TP + FP) (share of predicted pCR that are pCR), NPV = TN / (TN + FN); each NaN where
  its denominator is 0 or the threshold is NaN. Keys tp, fp, tn, fn hold the counts.
  """
  values = _point(y_true, score, threshold)
  return {k: (int(values[k]) if k in ("tp", "fp", "tn", "fn") else values[k])
          for k in _THRESHOLD_METRICS + ("tp", "fp", "tn", "fn")}


def roc_curve(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds), each [G + 1]: (0, 0) at threshold +inf, then every distinct score in
  descending order, as ``sklearn.metrics.roc_curve(drop_intermediate=False)``. TPR (FPR) is NaN
  without pCR (non-pCR)."""
  y, s = check_predictions(y_true, score)
  c = _group_counts(y, s, np.ones((1, y.size)))
  tp, fp = np.r_[0.0, np.cumsum(c.pos[0])], np.r_[0.0, np.cumsum(c.neg[0])]
  return divide(fp, np.full_like(fp, fp[-1])), divide(tp, np.full_like(tp, tp[-1])), np.r_[
      np.inf, c.scores]


def pr_curve(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(precision [G + 1], recall [G + 1], thresholds [G]) as ``sklearn.metrics.
  precision_recall_curve``: distinct scores ascending, then the end point (recall 0, precision 1).
  Recall is NaN without pCR."""
  y, s = check_predictions(y_true, score)
  c = _group_counts(y, s, np.ones((1, y.size)))
  tp, fp = np.cumsum(c.pos[0]), np.cumsum(c.neg[0])
  recall = divide(tp, np.full_like(tp, tp[-1] if tp.size else 0.0))
  return np.r_[(tp / (tp + fp))[::-1], 1.0], np.r_[recall[::-1], 0.0], c.scores[::-1]


def youden_threshold(y_true: Any, score: Any) -> float:
  """The observed score maximising Youden's J = sensitivity + specificity - 1 when used as
  threshold (score >= threshold = pCR); among ties the highest. NaN if one class."""
  fpr, tpr, thresholds = roc_curve(y_true, score)
  j = (tpr - fpr)[1:]
  if j.size == 0 or np.isnan(j).any():
    return float("nan")
  return float(thresholds[1:][np.argmax(j)])


# ---------------------------------------------------------------- bootstrap

@dataclasses.dataclass(frozen=True)
class Estimate:
  """A statistic with its bootstrap percentile 95% CI.

  Attributes:
    value: the statistic on all n cases (NaN when undefined).
    ci_low, ci_high: 2.5th / 97.5th percentiles (linear interpolation) of the replicates used;
      NaN when fewer than the ``min_valid`` replicates were usable.
    n: the number of cases N.
    replicates_used: replicates on which the statistic is defined.
    replicates_skipped: replicates on which it is not (one-class replicates for AUROC / AUPRC,
      no pCR for sensitivity, no predicted pCR for PPV, ...).
  """
  value: float
  ci_low: float
  ci_high: float
  n: int
  replicates_used: int
  replicates_skipped: int

  def as_dict(self) -> dict[str, float | int]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Bootstrap:
  """Percentile bootstrap settings of a confidence interval or band.

  Attributes:
    replicates: bootstrap replicates R.
    seed: numpy generator seed; the same seed gives the same intervals.
    stratified: resample within each class (keeps m and n; no one-class replicates).
    min_valid: fewest replicates on which a metric must be defined for its CI (else NaN);
      None: half of ``replicates``.
  """
  replicates: int = 1000
  seed: int = 0
  stratified: bool = False
  min_valid: int | None = None

  def indices(self, y_true: Any) -> np.ndarray:
    """Case indices [R, N] of these replicates (:func:`bootstrap_indices`)."""
    return bootstrap_indices(y_true, self.replicates, self.seed, self.stratified)

  @property
  def minimum(self) -> int:
    """``min_valid``, or its default: half the replicates. Below that the usable replicates
    are a small, biased subset (those that happened to draw both classes), and an interval
    from them would mislead."""
    return math.ceil(self.replicates / 2) if self.min_valid is None else int(self.min_valid)


def bootstrap_indices(y_true: Any, replicates: int = 1000, seed: int = 0,
                      stratified: bool = False) -> np.ndarray:
  """Case indices [R, N] drawn with replacement by ``np.random.default_rng(seed)``.

  stratified: each replicate draws m of the m pCR cases and n of the n non-pCR cases (pCR columns
  first), so the class counts are those of the data and no replicate is one-class.
  """
  y = np.asarray(y_true).astype(bool)
  rng = np.random.default_rng(seed)
  if not stratified:
    return rng.integers(0, y.size, size=(replicates, y.size))
  parts = [members[rng.integers(0, members.size, size=(replicates, members.size))]
           for members in (np.flatnonzero(y), np.flatnonzero(~y))]
  return np.concatenate(parts, axis=1)


def multiplicities(indices: np.ndarray, n: int) -> np.ndarray:
  """How often each of n cases occurs in each row of ``indices`` [R, K]: counts [R, n]."""
  rows = indices.shape[0]
  flat = (indices + n * np.arange(rows)[:, None]).ravel()
  return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def replicate_metrics(y_true: Any, score: Any, indices: np.ndarray,
                      threshold: float | None = None) -> dict[str, np.ndarray]:
  """Every metric [R] of each replicate ``y_true[indices[r]], score[indices[r]]`` at once.

  Keys: auroc, auprc_average_precision, auprc_trapezoidal, and with a threshold also
  sensitivity, specificity, ppv, npv and the counts tp, fp, tn, fn. NaN where undefined.
  """
  y, s = check_predictions(y_true, score)
  return _metrics(_group_counts(y, s, multiplicities(np.asarray(indices), y.size)), threshold)


def percentile_estimate(value: float, replicate_values: np.ndarray, n: int,
                        min_valid: int) -> Estimate:
  """Estimate from replicate values [R], NaN marking undefined replicates (skipped, counted)."""
  finite = replicate_values[np.isfinite(replicate_values)]
  low = high = float("nan")
  if finite.size and finite.size >= min_valid:
    low, high = (float(q) for q in np.percentile(finite, PERCENTILES))
  return Estimate(float(value), low, high, int(n), int(finite.size),
                  int(replicate_values.size - finite.size))


def bootstrap_ci(y_true: Any, score: Any, metric: str = "auroc", threshold: float | None = None,
                 *, bootstrap: Bootstrap = Bootstrap()) -> Estimate:
  """One metric of ``METRICS`` with its bootstrap percentile 95% CI (threshold metrics need the
  threshold). See ``metric_table`` for the arguments."""
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  if metric in _THRESHOLD_METRICS and threshold is None:
    raise ValueError(f"{metric} needs a threshold")
  y, s = check_predictions(y_true, score)
  values = replicate_metrics(y, s, bootstrap.indices(y), threshold)[metric]
  return percentile_estimate(_point(y, s, threshold)[metric], values, y.size, bootstrap.minimum)


def paired_difference(y_true: Any, score_a: Any, score_b: Any, metric: str = "auroc", *,
                      bootstrap: Bootstrap = Bootstrap()) -> Estimate:
  """metric(a) - metric(b) on the same cases, with a paired bootstrap percentile 95% CI.

  Each replicate resamples the cases once and scores both models on that resample, so the
  interval reflects how much the difference itself varies (it is much narrower than the two
  separate CIs suggest when the models agree on most cases). Threshold-free metrics only;
  ``bootstrap`` as in ``metric_table``.
  """
  if metric not in ("auroc", "auprc_average_precision", "auprc_trapezoidal"):
    raise ValueError(f"paired_difference takes a threshold-free metric, got {metric!r}")
  y, a = check_predictions(y_true, score_a)
  _, b = check_predictions(y_true, score_b)
  if a.shape != b.shape:
    raise ValueError(f"paired scores need one value per case, got {a.shape} and {b.shape}")
  indices = bootstrap.indices(y)
  values = (replicate_metrics(y, a, indices)[metric] - replicate_metrics(y, b, indices)[metric])
  value = _point(y, a)[metric] - _point(y, b)[metric]
  return percentile_estimate(value, values, y.size, bootstrap.minimum)


def metric_table(y_true: Any, score: Any, threshold: float, *,
                 bootstrap: Bootstrap = Bootstrap()) -> dict[str, Any]:
  """Every metric of the paper with its bootstrap 95% CI, for one model at one phase.

  All metrics are computed on the same R replicates. The threshold is fixed across replicates
  (choose it beforehand, e.g. Youden's J on the validation split).

  Args:
    y_true: [N] 1 = pCR, 0 = non-pCR.
    score: [N] predicted probability of pCR.
    threshold: a case is predicted pCR when score >= threshold.
    bootstrap: replicates, seed, stratified and min_valid (:class:`Bootstrap`).

  Returns:
    {metric: Estimate.as_dict()} for each of ``METRICS``, and "auprc": the same entry as
    "auprc_average_precision" (the step-wise AUPRC is the one reported as "AUPRC");
    "auprc_definition"; "n", "n_pcr", "n_non_pcr"; "threshold"; "confusion": {tp, fp, tn, fn};
    "bootstrap": {replicates, seed, stratified, one_class_replicates, min_valid, interval}.
  """
  y, s = check_predictions(y_true, score)
  boot = replicate_metrics(y, s, bootstrap.indices(y), threshold)
  point = _point(y, s, threshold)
  minimum = bootstrap.minimum
  table: dict[str, Any] = {
      name: percentile_estimate(point[name], boot[name], y.size, minimum).as_dict()
      for name in METRICS}
  table["auprc"] = dict(table["auprc_average_precision"])
  one_class = int(((boot["tp"] + boot["fn"]) * (boot["tn"] + boot["fp"]) == 0).sum())
  table.update(
      auprc_definition="average precision (step-wise, sklearn average_precision_score)",
      n=int(y.size), n_pcr=int(y.sum()), n_non_pcr=int((~y).sum()), threshold=float(threshold),
      confusion={k: int(point[k]) for k in ("tp", "fp", "tn", "fn")},
      bootstrap=dict(replicates=int(bootstrap.replicates), seed=int(bootstrap.seed),
                     stratified=bool(bootstrap.stratified), one_class_replicates=one_class,
                     min_valid=minimum, interval=INTERVAL))
  return table


# ---------------------------------------------------------------- curve bands (plots)

@dataclasses.dataclass(frozen=True)
class CurveBand:
  """A curve sampled on a fixed grid [G] with its bootstrap percentile 95% band, for plots.

  ROC: grid = FPR, value / low / high = TPR. PR: grid = recall, value / low / high = precision.
  One-class replicates have no curve: skipped and counted in replicates_skipped. All NaN when
  the data themselves hold one class.
  """
  grid: np.ndarray
  value: np.ndarray
  low: np.ndarray
  high: np.ndarray
  replicates_used: int
  replicates_skipped: int


def _tpr_at_fpr(c: _GroupCounts, grid: np.ndarray) -> np.ndarray:
  """TPR [R, G] of each row's ROC polyline at FPR = grid: linear along a tie group's diagonal,
  the upper value on a vertical step."""
  tp, fp = np.cumsum(c.pos, 1), np.cumsum(c.neg, 1)
  fpr = np.pad(fp / np.maximum(fp[:, -1:], 1), ((0, 0), (1, 0)))  # points from (0, 0)
  tpr = np.pad(tp / np.maximum(tp[:, -1:], 1), ((0, 0), (1, 0)))
  last = fpr.shape[1] - 1
  out = np.empty((fpr.shape[0], grid.size))
  for g, x in enumerate(grid):  # a loop over the grid, vectorised over replicates
    # The last point at or left of x (the tolerance lets linspace's 0.30000000000000004 reach
    # FPR 3/10), then the segment to the next point, which crosses x.
    k = (fpr <= x + 1e-12).sum(1, keepdims=True) - 1
    nxt = np.minimum(k + 1, last)
    f0, f1 = np.take_along_axis(fpr, k, 1)[:, 0], np.take_along_axis(fpr, nxt, 1)[:, 0]
    t0, t1 = np.take_along_axis(tpr, k, 1)[:, 0], np.take_along_axis(tpr, nxt, 1)[:, 0]
    crossing = f1 > f0  # False at the last point
    out[:, g] = np.where(crossing, t0 + (x - f0) / np.where(crossing, f1 - f0, 1.0) * (t1 - t0),
                         t0)
  return out


def _precision_at_recall(c: _GroupCounts, grid: np.ndarray) -> np.ndarray:
  """Precision [R, G] at recall = grid on the step curve whose integral is the average
  precision: the precision at the highest threshold whose recall reaches the grid value."""
  tp, fp = np.cumsum(c.pos, 1), np.cumsum(c.neg, 1)
  precision = tp / np.maximum(tp + fp, 1)
  # Groups above every case drawn in a replicate are no point of its curve.
  recall = np.where(tp + fp > 0, tp / np.maximum(tp[:, -1:], 1), -1.0)
  last = recall.shape[1] - 1
  out = np.empty((recall.shape[0], grid.size))
  for g, x in enumerate(grid):  # a loop over the grid, vectorised over replicates
    k = np.minimum((recall < x - 1e-12).sum(1, keepdims=True), last)
    out[:, g] = np.take_along_axis(precision, k, 1)[:, 0]
  return out


def _curve_band(curve: Any, y_true: Any, score: Any, grid_points: int,
                bootstrap: Bootstrap) -> CurveBand:
  y, s = check_predictions(y_true, score)
  grid = np.linspace(0.0, 1.0, grid_points)
  if y.all() or not y.any():  # no curve without both classes (or without cases)
    nan = np.full(grid.size, np.nan)
    return CurveBand(grid, nan, nan, nan, 0, int(bootstrap.replicates))
  value = curve(_group_counts(y, s, np.ones((1, y.size))), grid)[0]
  c = _group_counts(y, s, multiplicities(bootstrap.indices(y), y.size))
  keep = (c.pos.sum(1) > 0) & (c.neg.sum(1) > 0)
  values = curve(_GroupCounts(c.pos[keep], c.neg[keep], c.scores), grid)
  low, high = (np.percentile(values, PERCENTILES, axis=0) if keep.any()
               else np.full((2, grid.size), np.nan))
  return CurveBand(grid, value, low, high, int(keep.sum()), int((~keep).sum()))


def roc_band(y_true: Any, score: Any, *, grid_points: int = 101,
             bootstrap: Bootstrap = Bootstrap()) -> CurveBand:
  """The ROC curve on an FPR grid of ``grid_points`` in [0, 1] with its bootstrap TPR band
  (every two-class replicate counts: ``bootstrap.min_valid`` does not apply)."""
  return _curve_band(_tpr_at_fpr, y_true, score, grid_points, bootstrap)


def pr_band(y_true: Any, score: Any, *, grid_points: int = 101,
            bootstrap: Bootstrap = Bootstrap()) -> CurveBand:
  """The PR curve on a recall grid of ``grid_points`` in [0, 1] with its bootstrap precision
  band (the step curve of the average precision; every two-class replicate counts:
  ``bootstrap.min_valid`` does not apply)."""
  return _curve_band(_precision_at_recall, y_true, score, grid_points, bootstrap)

# ---------------------------------------------------------------- calibration

def brier_score(y_true: Any, probability: Any, *,
                bootstrap: Bootstrap = Bootstrap()) -> Estimate:
  """Brier score mean((p - y)^2) of probabilities of pCR, with its bootstrap percentile 95% CI
  (the replicates of ``metric_table`` for the same seed). 0 is perfect; a constant prediction
  at the prevalence q scores q (1 - q). NaN without cases."""
  y, p = check_predictions(y_true, probability)
  if y.size and ((p < 0) | (p > 1)).any():
    raise ValueError("brier_score needs probabilities in [0, 1]")
  squared = (p - y) ** 2
  if y.size == 0:
    return Estimate(float("nan"), float("nan"), float("nan"), 0, 0, int(bootstrap.replicates))
  weights = multiplicities(bootstrap.indices(y), y.size)
  values = weights @ squared / y.size
  return percentile_estimate(float(squared.mean()), values, y.size, bootstrap.minimum)

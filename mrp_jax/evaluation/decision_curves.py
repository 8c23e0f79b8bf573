"""Decision curve analysis and the paper's operating points, in plain numpy.

Decision curves follow MSKCC's ``dcurves`` package (Vickers & Elkin 2006), which the paper used:
for the risk of an *event* and a threshold probability t with 0 < t < 1, a case is
test-positive when risk >= t, and over N cases

  net_benefit(t)  = TP/N - t / (1 - t) * FP/N
  treat_all(t)    = prevalence - t / (1 - t) * (1 - prevalence)       treat_none(t) = 0
  net_interventions_avoided(t) = (net_benefit(t) - treat_all(t)) / (t / (1 - t))

(dcurves' ``net_intervention_avoided``: how many more patients per N are spared the
intervention than by treating everyone, at equal net benefit). Thresholds 0 and 1 are excluded:
t / (1 - t) is 0 or infinite there.

Beside them, the paper's own Eq. (1), its "net reduction of interventions" (NRI):

  net_reduction_in_interventions(t) = (TP - FP) / N - (FN - TN) / N

with TP, FP, FN, TN counted for the event at risk >= t. As printed it equals
(TP + TN - FP - FN) / N, the share of correct minus the share of wrong decisions: unlike net
benefit it weighs every error alike (not by the threshold's odds), it is the same for either
choice of event, and it is not measured against treat-all. It is not dcurves' quantity: the
paper's "220 per 1,000" reads as Eq. (1), ``net_interventions_avoided`` answers another
question; both are reported, under these two names.

The paper's two directions (its Fig. 5), named by the intervention a prediction may spare:

* ``"therapy"`` (Pre-/Mid-NAT): the event is **non-pCR**, risk = 1 - p(pCR) (float64); a
  positive test means "no response expected: change the therapy" (the paper: a net 220 fewer
  ineffective therapies per 1000 patients at t = 10% Pre-NAT).
* ``"surgery"`` (Post-NAT): the event is **pCR**, risk = p(pCR); a positive test means "pCR
  expected: consider a surgery-reducing trial" (the paper: net benefit 132 per 1000 at t = 10%).

Operating points and trade-off curves use the statistics' convention: score >= t is predicted pCR.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mrp_jax.evaluation import statistics

DIRECTIONS = ("therapy", "surgery")
DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # dcurves' grid without 0
_CURVES = ("net_benefit", "treat_all", "net_interventions_avoided",
           "net_reduction_in_interventions")


def event_and_risk(y_true: Any, p_pcr: Any, direction: str) -> tuple[np.ndarray, np.ndarray]:
  """(event [N] in {0, 1}, risk [N] of the event) for a direction, from pCR labels and p(pCR)."""
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
  y, p = statistics.check_predictions(y_true, p_pcr)
  if direction == "therapy":
    return (~y).astype(np.float64), 1.0 - p
  return y.astype(np.float64), p


@dataclasses.dataclass(frozen=True)
class DecisionCurve:
  """Decision curves of one model, every curve [T] per ``per`` patients (per=1: per patient).

  Attributes:
    direction: "therapy" (event non-pCR) or "surgery" (event pCR).
    thresholds: [T] threshold probabilities of the event, strictly inside (0, 1).
    net_benefit: [T] TP/N - t/(1-t) FP/N, times per.
    treat_all: [T] net benefit of treating everyone, times per.
    treat_none: [T] zeros.
    net_interventions_avoided: [T] (net_benefit - treat_all) / (t/(1-t)), times per
      (dcurves' quantity).
    net_reduction_in_interventions: [T] the paper's Eq. (1), (TP - FP)/N - (FN - TN)/N, times
      per.
    per: the number of patients the curves are expressed per (1, 100, 1000).
    n: cases N; prevalence: share of cases with the event.
    bands: {curve: (low [T], high [T])} bootstrap percentile 95% bands of net_benefit,
      treat_all, net_interventions_avoided and net_reduction_in_interventions, times per;
      empty without replicates.
    replicates: bootstrap replicates behind the bands (0: none).
  """
  direction: str
  thresholds: np.ndarray
  net_benefit: np.ndarray
  treat_all: np.ndarray
  treat_none: np.ndarray
  net_interventions_avoided: np.ndarray
  net_reduction_in_interventions: np.ndarray
  per: int
  n: int
  prevalence: float
  bands: dict[str, tuple[np.ndarray, np.ndarray]]
  replicates: int

  def as_dict(self) -> dict[str, Any]:
    """JSON-ready: arrays become lists; bands become '<curve>_low' / '<curve>_high'."""
    out = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
           for k, v in dataclasses.asdict(self).items() if k != "bands"}
    for name, (low, high) in self.bands.items():
      out[f"{name}_low"], out[f"{name}_high"] = low.tolist(), high.tolist()
    return out


def _curves(event: np.ndarray, risk: np.ndarray, weights: np.ndarray,
            thresholds: np.ndarray) -> dict[str, np.ndarray]:
  """Curves [R, T] for the cases [N] weighted by multiplicities [R, N] (one row per replicate).

  TP and FP of every replicate and threshold are one matrix product of the multiplicities with
  the [N, T] indicators "event and risk >= t" / "no event and risk >= t".
  """
  positive = (risk[:, None] >= thresholds[None, :]).astype(np.float64)  # [N, T]
  total = weights.sum(1, keepdims=True).astype(np.float64)
  tp = weights @ (positive * event[:, None]) / total
  fp = weights @ (positive * (1 - event[:, None])) / total
  prevalence = weights @ event[:, None] / total
  fn, tn = prevalence - tp, (1 - prevalence) - fp  # shares, like tp and fp
  odds = thresholds / (1 - thresholds)
  net_benefit = tp - odds * fp
  treat_all = prevalence - odds * (1 - prevalence)
  return {"net_benefit": net_benefit, "treat_all": np.broadcast_to(treat_all, tp.shape),
          "net_interventions_avoided": (net_benefit - treat_all) / odds,
          "net_reduction_in_interventions": (tp - fp) - (fn - tn)}


def decision_curve(y_true: Any, p_pcr: Any, direction: str,
                   thresholds: Any = DEFAULT_THRESHOLDS, *, per: int = 1,
                   bootstrap: statistics.Bootstrap | None = None) -> DecisionCurve:
  """Decision curves of a model for one direction, optionally with bootstrap 95% bands.

  Args:
    y_true: [N] 1 = pCR, 0 = non-pCR.
    p_pcr: [N] predicted probability of pCR.
    direction: "therapy" (event non-pCR, risk 1 - p) or "surgery" (event pCR, risk p).
    thresholds: [T] threshold probabilities of the event, each strictly between 0 and 1.
    per: express the curves per this many patients (1 as dcurves; the paper uses 1000).
    bootstrap: replicates, seed and stratified of the bands (None or 0 replicates: no bands;
      the paper: 1000 replicates). Every replicate has a defined curve (one-class replicates
      included), so none is skipped and ``min_valid`` does not apply.
  """
  thresholds = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
  if thresholds.size == 0 or not ((thresholds > 0) & (thresholds < 1)).all():
    raise ValueError(f"decision-curve thresholds must lie strictly between 0 and 1 "
                     f"(t/(1-t) is 0 or infinite at the ends), got {thresholds.tolist()}")
  event, risk = event_and_risk(y_true, p_pcr, direction)
  if event.size == 0:
    raise ValueError("decision curves need at least one case")
  point = _curves(event, risk, np.ones((1, event.size)), thresholds)
  bands = {}
  replicates = 0 if bootstrap is None else bootstrap.replicates
  if replicates:
    indices = bootstrap.indices(event)
    samples = _curves(event, risk, statistics.multiplicities(indices, event.size), thresholds)
    for name in _CURVES:
      low, high = np.percentile(samples[name], statistics.PERCENTILES, axis=0)
      bands[name] = (low * per, high * per)
  return DecisionCurve(
      direction=direction, thresholds=thresholds, net_benefit=point["net_benefit"][0] * per,
      treat_all=point["treat_all"][0] * per, treat_none=np.zeros_like(thresholds),
      net_interventions_avoided=point["net_interventions_avoided"][0] * per,
      net_reduction_in_interventions=point["net_reduction_in_interventions"][0] * per,
      per=int(per),
      n=int(event.size), prevalence=float(event.mean()), bands=bands, replicates=int(replicates))


# ---------------------------------------------------------------- operating points

@dataclasses.dataclass(frozen=True)
class OperatingPoint:
  """The largest share of one class identified with no case of the other class misclassified.

  Attributes:
    direction: "therapy": non-pCR identified (predicted non-pCR) with no pCR missed;
      "surgery": pCR identified (predicted pCR) with no non-pCR predicted pCR.
    threshold: score >= threshold is predicted pCR. therapy: the lowest pCR score; surgery: the
      lowest pCR score above every non-pCR score (+inf if none).
    identified: cases of the target class identified (therapy: TN; surgery: TP).
    of: cases of the target class (therapy: non-pCR; surgery: pCR).
    fraction: identified / of (NaN if of is 0).
    tp, fp, tn, fn: the confusion counts at the threshold (fn = 0 for therapy, fp = 0 for surgery).
  """
  direction: str
  threshold: float
  identified: int
  of: int
  fraction: float
  tp: int
  fp: int
  tn: int
  fn: int

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def operating_point(y_true: Any, p_pcr: Any, direction: str) -> OperatingPoint:
  """The paper's operating point for a direction (35.8% of non-pCR Pre-NAT for "therapy",
  16.7% of pCR Post-NAT for "surgery"). Without pCR ("therapy") the threshold is +inf."""
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
  y, p = statistics.check_predictions(y_true, p_pcr)
  if direction == "therapy":
    threshold = p[y].min() if y.any() else np.inf  # any higher threshold misses that pCR
  else:
    highest_non_pcr = p[~y].max() if (~y).any() else -np.inf
    above = p[y & (p > highest_non_pcr)]
    threshold = above.min() if above.size else np.inf
  counts = statistics.threshold_metrics(y, p, float(threshold))
  identified, of = ((counts["tn"], int((~y).sum())) if direction == "therapy"
                    else (counts["tp"], int(y.sum())))
  return OperatingPoint(direction, float(threshold), identified, of,
                        identified / of if of else float("nan"),
                        *(counts[k] for k in ("tp", "fp", "tn", "fn")))


def operating_points(y_true: Any, p_pcr: Any) -> dict[str, OperatingPoint]:
  """Both operating points, keyed by direction."""
  return {direction: operating_point(y_true, p_pcr, direction) for direction in DIRECTIONS}


def tradeoff_curve(y_true: Any, p_pcr: Any, direction: str,
                   thresholds: Any = None) -> dict[str, Any]:
  """Identified vs missed cases per threshold (score >= t = predicted pCR), for plots.

  therapy: identified = non-pCR predicted non-pCR (therapy could be changed), missed = pCR
  predicted non-pCR. surgery: identified = pCR predicted pCR (surgery could be spared), missed =
  non-pCR predicted pCR. thresholds: default every distinct score and +inf, ascending.

  Returns:
    {"direction", "thresholds" [T], "identified" [T], "missed" [T] (counts),
     "identified_fraction" [T], "missed_fraction" [T] (shares of their class; NaN if empty),
     "n_pcr", "n_non_pcr"}.
  """
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
  y, p = statistics.check_predictions(y_true, p_pcr)
  t = np.r_[np.unique(p), np.inf] if thresholds is None else np.atleast_1d(
      np.asarray(thresholds, dtype=np.float64))
  positive = p[None, :] >= t[:, None]  # [T, N]
  tp, fp = (positive & y).sum(1), (positive & ~y).sum(1)
  n_pcr, n_non_pcr = int(y.sum()), int((~y).sum())
  if direction == "therapy":
    identified, missed, of_identified, of_missed = n_non_pcr - fp, n_pcr - tp, n_non_pcr, n_pcr
  else:
    identified, missed, of_identified, of_missed = tp, fp, n_pcr, n_non_pcr
  def share(count: np.ndarray, of: int) -> np.ndarray:
    return count / of if of else np.full(count.shape, np.nan)
  return {"direction": direction, "thresholds": t, "identified": identified, "missed": missed,
          "identified_fraction": share(identified, of_identified),
          "missed_fraction": share(missed, of_missed), "n_pcr": n_pcr, "n_non_pcr": n_non_pcr}

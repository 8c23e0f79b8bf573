"""The report's tables: Table 1 (AUROC, AUPRC, sensitivity, specificity, PPV, NPV, Brier, with
bootstrap CIs) at each label's operating threshold, DeLong tests, decision curves with the
paper's Eq. (1), operating points, calibration curves, subgroups, and Table 2's odds ratios."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from input_pipeline import cli
from mrp_jax.evaluation import calibration, cohort, decision_curves, delong, statistics, subgroups
from mrp_jax.evaluation.scores import Cell, Key, Scored, Scores, paired

# How an operating threshold is chosen on the fit split (or config.evaluate.threshold is a
# probability): Youden's J per model and phase.
THRESHOLD_RULES = ("youden",)
# Decision-curve direction per phase (the paper's Fig. 5): change therapy for predicted non-pCR
# before and during NAT; omit surgery for predicted pCR after it.
DIRECTIONS = {"pre": "therapy", "mid": "therapy", "post": "surgery"}
SUBGROUP_VARIABLES = ("in_situ", "differentiation", "histology", "molecular_subtype", "therapy",
                      "ct", "cn", "focality", "mutation", "age_group")
# Table 2's odds ratios: the paper's top factors, density in BI-RADS classes and as dense vs
# non-dense (its reference: non-dense), and the gene-mutation group.
ODDS_RATIO_VARIABLES = {"molecular_subtype": None, "histology": None, "in_situ": None,
                        "focality": None, "density": None, "density_group": cohort.NON_DENSE,
                        "mutation": None}
DECISION_THRESHOLDS = decision_curves.DEFAULT_THRESHOLDS[:60]
# Thresholds at which the report tabulates the decision curves (the paper quotes 10% and 21%).
REPORTED_THRESHOLDS = (0.1, 0.2, 0.3)


@dataclasses.dataclass(frozen=True)
class Tables:
  """Every table of the report, each keyed as metrics.json keys it (label, then phase; or
  phase, then label)."""
  models: dict[str, dict[str, dict[str, Any]]]  # Table 1
  thresholds: dict[str, dict[str, float]]  # the operating thresholds Table 1 used
  decision_curves: dict[str, dict[str, Any]]
  decision_thresholds: dict[str, dict[str, list[dict[str, Any]]]]  # Eq. (1) at 10/20/30%
  operating_points: dict[str, dict[str, Any]]
  calibration_curves: dict[str, dict[str, Any]]
  subgroups: dict[str, Any]


def operating_threshold(rule: str | float, fit: Scores | None) -> float:
  """The threshold of ``rule`` (THRESHOLD_RULES, else a probability) on the fit split's scores
  (0.5 without them, or where Youden's J has no threshold)."""
  if fit is None:
    return 0.5
  if rule not in THRESHOLD_RULES:
    return float(rule)
  t = statistics.youden_threshold(fit.labels, fit.probability)
  return t if math.isfinite(t) else 0.5


def measure(scored: Scored, threshold_rule: str | float) -> Tables:
  """Table 1 on the reported cohort at thresholds chosen on the fit split, the curves, and
  the subgroups of the focus model (MRP, else the last trained run)."""
  labels = scored.model_labels + scored.reader_labels
  # The bootstrap's progress: Table 1 and the curves per (label, phase), subgroups per phase.
  cells = sum((label, phase) in scored.reported for label in labels for phase in scored.phases)
  bar = cli.progress(total=2 * cells + len(scored.phases), unit="table",
                     desc=f"bootstrap ({scored.bootstrap.replicates} replicates)")
  metrics, thresholds = _table_1(scored, labels, threshold_rule, bar)
  curves = _curves(scored, labels, bar)
  trained = [m for m in scored.model_labels if not m.startswith("oracle ")]
  focus = "MRP" if scored.weights is not None else trained[-1]
  by_phase = {}
  for phase in scored.phases:
    s = scored.reported[(focus, phase)]
    by_phase[phase] = {
        variable: subgroups.subgroup_metrics(
            s.labels, s.probability, [scored.patients[i].get(variable) for i in s.ids],
            thresholds[focus][phase], scored.bootstrap)
        for variable in SUBGROUP_VARIABLES}
    bar.update(1)
  bar.close()
  return Tables(models=metrics, thresholds=thresholds, **curves,
                subgroups={"model": focus, "by_phase": by_phase})


def _table_1(scored: Scored, labels: list[str], threshold_rule: str | float, bar
             ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
  metrics: dict[str, Any] = {}
  thresholds: dict[str, dict[str, float]] = {}
  for label in labels:
    metrics[label], thresholds[label] = {}, {}
    for phase in scored.phases:
      if (label, phase) not in scored.reported:
        continue
      s = scored.reported[(label, phase)]
      t = operating_threshold(threshold_rule, scored.scores.get(Key(label, scored.fit_split,
                                                                    phase)))
      thresholds[label][phase] = t
      metrics[label][phase] = table_1_row(s, t, scored.bootstrap)
      raw = scored.predictions.get(Key(label, scored.split, phase))
      # A run's own output, or MRP's with 'model' inputs; readers and oracles have none.
      if raw is not None:
        keep = np.isin(scored.scores[Key(label, scored.split, phase)].ids, s.ids)
        metrics[label][phase]["brier_uncalibrated"] = statistics.brier_score(
            s.labels, raw.probability[keep], bootstrap=scored.bootstrap).as_dict()
      bar.update(1)
  return metrics, thresholds


def _curves(scored: Scored, labels: list[str], bar) -> dict[str, Any]:
  """Decision curves, their values at REPORTED_THRESHOLDS, operating points and (models only:
  readers' probabilities are their own) calibration curves, per phase and label."""
  curves, points, eq1, calibration_curves = {}, {}, {}, {}
  for phase in scored.phases:
    direction = DIRECTIONS[phase]
    curves[phase], points[phase], eq1[phase] = {"direction": direction}, {}, {}
    calibration_curves[phase] = {}
    for label in labels:
      if (label, phase) not in scored.reported:
        continue
      s = scored.reported[(label, phase)]
      curve = decision_curves.decision_curve(s.labels, s.probability, direction,
                                             DECISION_THRESHOLDS, per=1000,
                                             bootstrap=scored.bootstrap)
      curves[phase][label] = curve.as_dict()
      eq1[phase][label] = _at_thresholds(curve)
      points[phase][label] = decision_curves.operating_points(s.labels, s.probability)
      if label in scored.model_labels:
        calibration_curves[phase][label] = calibration.calibration_curve(
            s.labels, s.probability, bootstrap=scored.bootstrap).as_dict()
      bar.update(1)
  return {"decision_curves": curves, "decision_thresholds": eq1, "operating_points": points,
          "calibration_curves": calibration_curves}


def table_1_row(s: Scores, threshold: float, bootstrap: statistics.Bootstrap
                ) -> dict[str, Any]:
  """One label at one phase: the paper's Table 1 metrics and the Brier score with CIs."""
  y, p = s.labels, s.probability
  table = statistics.metric_table(y, p, threshold, bootstrap=bootstrap)
  return {
      # "auprc" is the average precision; the trapezoidal area is reported beside it.
      "auroc": table["auroc"], "auprc": table["auprc_average_precision"],
      "auprc_trapezoidal": table["auprc_trapezoidal"],
      **{m: table[m] for m in ("sensitivity", "specificity", "ppv", "npv")},
      "brier": statistics.brier_score(y, p, bootstrap=bootstrap).as_dict(),
      "n": int(len(y)), "n_pcr": int(np.sum(y))}


def _at_thresholds(curve: decision_curves.DecisionCurve) -> list[dict[str, Any]]:
  """The decision curve's quantities at REPORTED_THRESHOLDS, each {value, ci_low, ci_high}."""
  rows = []
  for t in REPORTED_THRESHOLDS:
    k = int(np.argmin(np.abs(curve.thresholds - t)))
    row = {"threshold": float(curve.thresholds[k])}
    for name in ("net_benefit", "net_interventions_avoided", "net_reduction_in_interventions"):
      low, high = curve.bands.get(name, (np.full(k + 1, np.nan), np.full(k + 1, np.nan)))
      row[f"{name}_per_{curve.per}"] = {"value": float(getattr(curve, name)[k]),
                                        "ci_low": float(low[k]), "ci_high": float(high[k])}
    rows.append(row)
  return rows


def delong_tests(reported: dict[Cell, Scores], labels: list[str], phases: tuple[str, ...]
                 ) -> dict[str, list[dict[str, Any]]]:
  """DeLong's test between every pair of labels per phase, on the patients both have."""
  out = {}
  for phase in phases:
    out[phase] = []
    present = [label for label in labels if (label, phase) in reported]
    for a, b in itertools.combinations(present, 2):
      # Readers may have read a subset.
      y, pa, pb = paired(reported[(a, phase)], reported[(b, phase)])
      test = delong.delong_test(y, pa, pb)
      out[phase].append({"a": a, "b": b, "auc_a": test.auc_a, "auc_b": test.auc_b,
                         "p_value": test.p_value, "n": int(len(y))})
  return out


def table_2_odds_ratios(patients: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Odds ratios of pCR per category over every labelled patient of every split (Table 2)."""
  labelled = [pid for pid, row in patients.items() if row["label"] in (0, 1)]
  y = np.asarray([patients[pid]["label"] for pid in labelled])
  out = {}
  for variable, reference in ODDS_RATIO_VARIABLES.items():
    groups = [patients[pid].get(variable) for pid in labelled]
    present = set(subgroups.category_labels(groups).tolist())
    out[variable] = subgroups.odds_ratios(
        y, groups, reference=reference if reference in present else None)
  return {"splits": sorted({patients[pid]["split"] for pid in labelled}), "n": len(labelled),
          "n_pcr": int(y.sum()), "by_variable": out}

"""The `evaluate` job: trained runs -> predictions, calibration, the MRP ensemble, statistics,
explanations and a report.

:func:`run` is a sequence of named stages, each a function below:

0. the runs (runs.py), every split's patients (cohort.patient_table), the reported cohort
   (cohort.reported_cohort) and the reference patient (:func:`attribution_baseline`);
1. :func:`predict_splits`: every run (config.evaluate.runs) predicts the fit split
   (validation) and the reported split (test) at every phase (Pre: Pre data; Mid: Pre+Mid;
   Post: Pre+Post);
2. :func:`calibrate`: a Platt map per run and phase fitted on the fit split (calibration.py);
   every later stage reads calibrated probabilities (the AUROCs are unchanged by it);
3. :func:`add_mrp`: the MRP weights fitted on the fit split (ensemble.py) and MRP's scores;
4. :func:`add_readers`: readers' probabilities and their mean ("Readers (mean)", the paper's
   +R);
5. :func:`reported_scores`: the reported split's scores of the reported cohort
   (config.evaluate.cohort; cohort.py): by default the patients with every image, the same at
   every phase;
6. :func:`measure`: on the fit split each model's operating threshold (Youden's J, or a fixed
   probability); on the reported cohort Table 1 (AUROC, AUPRC, sensitivity, specificity, PPV,
   NPV, Brier, with bootstrap CIs), DeLong tests, the paper's claims, decision curves with the
   paper's Eq. (1), operating points, calibration curves and subgroups; over every split the
   odds ratios of Table 2; what each image encoder finds alone (:func:`image_evidence`);
7. :func:`explain_cases`: Integrated Gradients as the paper's Fig. 4 (explain.py);
8. :func:`write_outputs`:

WORKDIR/report/
  predictions.csv        one row per patient x split x phase x model: pseudonym, calibrated
                         and uncalibrated probability, label, whether the row is reported, the
                         rhpc subgroup variables
  metrics.json           everything measured (README, "Reading the report")
  calibration.json       the Platt maps (for `predict`)
  mrp_ensemble.json      the MRP weights (for `predict`)
  attribution_baseline.json  the reference patient, Integrated Gradients' baseline (`predict`)
  attributions.json      Integrated Gradients ranked per model (the paper's Fig. 4)
  report.md and PNG figures (report.py)
"""

from __future__ import annotations

import collections
import csv
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from scipy import special

from input_pipeline import cli, encoding, records, schema
from input_pipeline.feed import batching, pipeline
from input_pipeline.records import tfrecord
from input_pipeline.synthetic import oracle as synthetic_oracle
from mrp_jax import configuration as cfg
from mrp_jax import console
from mrp_jax.core import inference, runs, sharding
from mrp_jax.evaluation import calibration, cohort, decision_curves, ensemble, report, statistics
from mrp_jax.evaluation.explain import RANKINGS

# How an operating threshold is chosen on the fit split (or config.evaluate.threshold is a
# probability): Youden's J per model and phase.
THRESHOLD_RULES = ("youden",)

# config.evaluate, as the stages below read it.
CONFIG_RULES: dict[str, cfg.Rule] = {
    "evaluate.runs": (lambda v: isinstance(v, str), "must be LABEL=WORKDIR,... (a string)"),
    "evaluate.split": cfg.one_of("validation", "test"),
    "evaluate.phases": cfg.tuple_of(*schema.PHASE_NAMES),
    "evaluate.batch_size": cfg.POSITIVE_INT,
    "evaluate.fit_split": cfg.one_of("train", "validation"),
    "evaluate.threshold": (lambda v: v in THRESHOLD_RULES or cfg.is_probability(v),
                           f"must be one of {list(THRESHOLD_RULES)} or a probability in (0, 1)"),
    "evaluate.bootstrap_replicates": (lambda v: cfg.positive_int(v) and v >= 100,
                                      "must be an integer >= 100"),
    "evaluate.readers": (lambda v: v == "" or os.path.isfile(v), "must be '' or an existing CSV"),
    "evaluate.explain_cases": cfg.COUNT,
    "evaluate.explain_steps": cfg.POSITIVE_INT,
    "evaluate.explain_phase": cfg.one_of(*schema.PHASE_NAMES),
    "evaluate.explain_ranking": cfg.one_of(*RANKINGS),
    "evaluate.cohort": cfg.one_of(*cohort.COHORTS),
}
CONFIG_CHECKS: tuple[cfg.Check, ...] = (cfg.RULES, CONFIG_RULES)
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
READERS_MEAN = "Readers (mean)"

Scores = tuple[np.ndarray, np.ndarray, np.ndarray]  # patient ids [N], labels [N], p(pCR) [N]


def _json_ready(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if isinstance(value, np.ndarray):
    return _json_ready(value.tolist())
  if isinstance(value, (np.floating, float)):
    return None if not math.isfinite(float(value)) else float(value)
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (set, frozenset)):
    return sorted(value)
  if hasattr(value, "__dataclass_fields__"):
    return _json_ready({k: getattr(value, k) for k in value.__dataclass_fields__})
  return value


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  ev = config.evaluate
  out_dir = Path(workdir) / "report"
  out_dir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  loaded = [runs.load_run(path, mesh, label) for label, path in runs.parse_runs(ev.runs)]
  if not loaded:
    raise ValueError("config.evaluate.runs is empty: give LABEL=TRAIN_WORKDIR,...")
  records_dir = Path(config.data.records)
  phases = tuple(ev.phases)
  splits = tuple(dict.fromkeys((ev.fit_split, ev.split)))
  patients = cohort.patient_table(records_dir)
  reported_cohort = cohort.reported_cohort(patients, ev.split, ev.cohort)
  console.current("evaluate").stage(f"reported cohort: {reported_cohort.describe()}")
  baseline = attribution_baseline(patients, ev.fit_split)

  predictions = predict_splits(loaded, records_dir, splits, phases, ev.batch_size, mesh)
  maps = calibrate(predictions, ev.fit_split, phases)
  scores = {key: (p.patient_ids, p.label, maps[key[0]][key[2]](p.logit))
            for key, p in predictions.items()}
  by_model = mrp_members(loaded)
  weights = add_mrp(scores, predictions, by_model, splits, phases, ev.fit_split)
  reader_labels = add_readers(scores, ev.readers, ev.split, patients) if ev.readers else []
  oracle_labels = add_oracle(scores, records_dir, predictions, splits, phases)
  model_labels = [r.label for r in loaded] + (["MRP"] if weights else []) + oracle_labels
  reported = reported_scores(scores, ev.split, reported_cohort)

  measured = measure(config, scores, reported, model_labels, reader_labels, phases, patients,
                     by_model, weights,
                     {key: p.probability for key, p in predictions.items()
                      if key[1] == ev.split})
  measured["image_evidence"] = image_evidence(predictions, reported_cohort, reported, ev.split,
                                              phases, by_model, ev.bootstrap_replicates,
                                              config.seed)
  attributions = {}
  if ev.explain_cases:
    console.current("evaluate").stage(
        f"explanations: Integrated Gradients ({ev.explain_steps} steps) of up to "
        f"{ev.explain_cases} reported patients at {ev.explain_phase}")
    attributions = explain_cases(loaded, records_dir, ev, baseline, reported_cohort, maps,
                                 weights, by_model, scores)
  result = {
      "split": ev.split, "fit_split": ev.fit_split, "phases": list(phases),
      "cohort": {"kind": reported_cohort.kind, "description": reported_cohort.describe(),
                 "images": list(reported_cohort.images),
                 "n": {phase: _reported_n(reported, phase) for phase in phases},
                 "note": reported_cohort.note},
      **measured,
      "calibration": {"method": calibration.METHOD, "fit_split": ev.fit_split, "maps": maps},
      "ensemble": weights, "readers": reader_labels, "oracle": oracle_labels,
      # No paths, dates or timings: the same runs give the same bytes wherever they live.
      "runs": {r.label: {"model": r.model_name, "step": r.step} for r in loaded},
      "bootstrap": {"replicates": ev.bootstrap_replicates, "kind": "percentile",
                    "seed": config.seed},
  }
  result = _json_ready(result)
  write_outputs(out_dir, result, attributions, baseline, scores, reported, predictions,
                patients, maps, weights, ev)
  console.current("evaluate").stage(f"report written: {out_dir / 'report.md'}")
  return result


# ---------------------------------------------------------------------------------------------
# 1-5: predictions, calibration, MRP, readers, the reported cohort
# ---------------------------------------------------------------------------------------------
def predict_splits(loaded, records_dir: Path, splits: tuple[str, ...], phases: tuple[str, ...],
                   batch_size: int, mesh) -> dict[tuple[str, str, str], inference.Predictions]:
  """(run label, split, phase) -> every eligible patient's prediction."""
  predictions = {}
  bar = cli.progress(total=len(loaded) * len(splits) * len(phases),
                     desc="predict (run x split x phase)", unit="set")
  for run_ in loaded:
    for split in splits:
      paths = pipeline.split_paths(records_dir, split)
      for phase in phases:
        predictions[(run_.label, split, phase)] = inference.predict(
            run_.eval_step, run_.state, mesh, paths, model_name=run_.model_name, phase=phase,
            batch_size=batch_size)
        bar.update(1)
  bar.close()
  for split in splits:
    counts = []
    for phase in phases:
      n = sorted({len(predictions[(r.label, split, phase)].label) for r in loaded})
      counts.append(f"{phase} {n[0]}" + (f"-{n[-1]}" if len(n) > 1 else ""))
    console.current("evaluate").stage(f"predicted {split} with {len(loaded)} runs: patients "
                                      f"per phase {', '.join(counts)}")
  return predictions


def calibrate(predictions, fit_split: str, phases: tuple[str, ...]
              ) -> dict[str, dict[str, calibration.PlattMap]]:
  """run label -> phase -> the Platt map fitted on the fit split's logits."""
  maps: dict[str, dict[str, calibration.PlattMap]] = collections.defaultdict(dict)
  for (label, split, phase), p in predictions.items():
    if split == fit_split and phase in phases:
      maps[label][phase] = calibration.fit_platt(p.label, p.logit)
  return dict(maps)


def mrp_members(loaded) -> dict[str, str]:
  """Model name -> the run label MRP uses: the run labelled with the model's name, else the
  first run of that model (ablations such as 'iMRrhpc no time' are reported beside)."""
  by_model: dict[str, str] = {}
  for r in loaded:
    if r.label == r.model_name or r.model_name not in by_model:
      by_model[r.model_name] = r.label
  return by_model


def add_mrp(scores, predictions, by_model: dict[str, str], splits, phases,
            fit_split: str) -> ensemble.EnsembleWeights | None:
  """Fits the MRP weights on the fit split's calibrated probabilities and adds MRP's scores
  for every split and phase; None without both an iMGrhpc and an iMRrhpc run."""
  if "iMGrhpc" not in by_model or "iMRrhpc" not in by_model:
    return None
  mg, mr = by_model["iMGrhpc"], by_model["iMRrhpc"]

  def arrays(split, phase):
    a, b = predictions[(mg, split, phase)], predictions[(mr, split, phase)]
    if not np.array_equal(a.patient_ids, b.patient_ids):
      raise RuntimeError(f"{split} {phase}: iMGrhpc and iMRrhpc saw different patients")
    return {"label": a.label, "p_mg": scores[(mg, split, phase)][2],
            "p_mr": scores[(mr, split, phase)][2], "mg_present": a.image_present,
            "mr_present": b.image_present}

  weights = ensemble.fit([arrays(fit_split, phase) for phase in phases])
  for split, phase in itertools.product(splits, phases):
    a = arrays(split, phase)
    scores[("MRP", split, phase)] = (
        predictions[(mg, split, phase)].patient_ids, a["label"],
        ensemble.combine(weights, a["p_mg"], a["p_mr"], a["mg_present"], a["mr_present"]))
  return weights


def add_oracle(scores, records_dir: Path, predictions, splits, phases) -> list[str]:
  """For records of a synthetic export: adds each model's Bayes-optimal probability
  ('oracle rhpc', ... 'oracle MRP'; input_pipeline/synthetic/oracle.py) for the patients the
  runs predicted, per split and phase. Returns the labels added (none for real data)."""
  truth = synthetic_oracle.read(records_dir)
  if truth is None:
    return []
  labels = []
  for model in synthetic_oracle.MODELS:
    label = f"oracle {model}"
    for split, phase in itertools.product(splits, phases):
      ids, y = next((p.patient_ids, p.label) for (_, s, ph), p in sorted(predictions.items())
                    if s == split and ph == phase)
      known = np.asarray([phase in truth.get(i, {}).get(model, {}) for i in ids], bool)
      scores[(label, split, phase)] = (
          ids[known], y[known], np.asarray([truth[i][model][phase] for i in ids[known]]))
    labels.append(label)
  return labels


def read_readers(path: str) -> dict[tuple[str, str], dict[str, float]]:
  """(reader, phase) -> {case: probability} from a CSV with case, phase, reader, probability."""
  out: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"case", "phase", "reader", "probability"} - set(reader.fieldnames or [])
    if missing:
      raise ValueError(f"{path}: missing columns {sorted(missing)} (need case, phase, reader, "
                       "probability)")
    for line, row in enumerate(reader, start=2):
      phase = row["phase"].strip().lower().replace("-nat", "")
      if phase not in DIRECTIONS:
        raise ValueError(f"{path}:{line}: phase {row['phase']!r} is not pre, mid or post")
      try:
        probability = float(row["probability"])
      except ValueError:
        raise ValueError(f"{path}:{line}: probability {row['probability']!r} is not a "
                         "number") from None
      if not 0.0 <= probability <= 1.0:
        raise ValueError(f"{path}:{line}: probability {probability} is not in [0, 1]")
      out[(f"Reader {row['reader'].strip()}", phase)][row["case"].strip()] = probability
  return out


def add_readers(scores, path: str, split: str, patients) -> list[str]:
  """Adds each reader's scores on ``split`` (cases of other splits or unlabelled are left out,
  and counted) and, per phase with two or more readers, their mean on the cases every one of
  them read (READERS_MEAN, the paper's '+R'). Returns the labels added."""
  by_reader = read_readers(path)
  labels = set()
  for (reader, phase), cases in sorted(by_reader.items()):
    ids = np.asarray(sorted(c for c in cases if c in patients and patients[c]["split"] == split
                            and patients[c]["label"] in (0, 1)))
    if len(ids) < len(cases):
      console.current("evaluate").warn(
          f"{reader} {phase}: {len(cases) - len(ids)} of {len(cases)} cases are not labelled "
          f"{split} patients; left out")
    scores[(reader, split, phase)] = (
        ids, np.asarray([patients[i]["label"] for i in ids], np.int64),
        np.asarray([cases[i] for i in ids], np.float64))
    labels.add(reader)
  for phase in DIRECTIONS:
    readers = [r for (r, ph) in by_reader if ph == phase]
    if len(readers) < 2:
      continue
    common = sorted(set.intersection(*(set(scores[(r, split, phase)][0]) for r in readers)))
    ids = np.asarray(common)
    scores[(READERS_MEAN, split, phase)] = (
        ids, np.asarray([patients[i]["label"] for i in ids], np.int64),
        np.mean([[by_reader[(r, phase)][i] for i in ids] for r in readers], axis=0))
    labels.add(READERS_MEAN)
  return sorted(labels - {READERS_MEAN}) + sorted(labels & {READERS_MEAN})


def reported_scores(scores, split: str, reported_cohort: cohort.Cohort
                    ) -> dict[tuple[str, str], Scores]:
  """(label, phase) -> the scores of ``split`` restricted to the reported cohort."""
  out = {}
  for (label, s, phase), (ids, y, p) in scores.items():
    if s == split:
      keep = reported_cohort.keep(ids)
      out[(label, phase)] = (ids[keep], y[keep], p[keep])
  return out


def _reported_n(reported, phase: str) -> int:
  """Patients reported at ``phase`` (the most any model has there)."""
  return max((len(v[0]) for (label, ph), v in reported.items() if ph == phase), default=0)


# ---------------------------------------------------------------------------------------------
# 6: measurements
# ---------------------------------------------------------------------------------------------
def _threshold(config, y, p) -> float:
  if config.evaluate.threshold not in THRESHOLD_RULES:
    return float(config.evaluate.threshold)
  t = statistics.youden_threshold(y, p)
  return t if math.isfinite(t) else 0.5


def measure(config, scores, reported, model_labels: list[str], reader_labels: list[str],
            phases: tuple[str, ...], patients, by_model: dict[str, str],
            weights: ensemble.EnsembleWeights | None,
            uncalibrated: dict[tuple[str, str, str], np.ndarray]) -> dict[str, Any]:
  """Every statistic of the report (see the module docstring), keyed as metrics.json.

  Args:
    scores: (label, split, phase) -> calibrated scores of every patient.
    reported: (label, phase) -> the reported cohort's scores.
    model_labels: the runs' labels and 'MRP'; reader_labels: the readers' (no calibration
      curves: their probabilities are their own).
    uncalibrated: (run label, reported split, phase) -> the runs' own probabilities, aligned
      with ``scores`` (for the Brier score before calibration).
  """
  ev = config.evaluate
  labels = model_labels + reader_labels
  trained = [m for m in model_labels if not m.startswith("oracle ")]
  focus = "MRP" if weights is not None else trained[-1]
  replicates, seed = ev.bootstrap_replicates, config.seed
  # The bootstrap's progress: Table 1 and the curves per (label, phase), subgroups per phase.
  cells = sum((label, phase) in reported for label in labels for phase in phases)
  bar = cli.progress(total=2 * cells + len(phases), unit="table",
                     desc=f"bootstrap ({replicates} replicates)")
  metrics: dict[str, Any] = {}
  thresholds: dict[str, dict[str, float]] = {}
  for label in labels:
    metrics[label], thresholds[label] = {}, {}
    for phase in phases:
      if (label, phase) not in reported:
        continue
      ids, y, p = reported[(label, phase)]
      fit = scores.get((label, ev.fit_split, phase))
      t = _threshold(config, fit[1], fit[2]) if fit is not None else 0.5
      thresholds[label][phase] = t
      metrics[label][phase] = table_1_row(y, p, t, replicates, seed)
      raw = uncalibrated.get((label, ev.split, phase))
      if raw is not None:  # a model (MRP and readers have no uncalibrated output)
        all_ids = scores[(label, ev.split, phase)][0]
        keep = np.isin(all_ids, ids)
        metrics[label][phase]["brier_uncalibrated"] = statistics.brier_score(
            y, raw[keep], replicates=replicates, seed=seed).as_dict()
      bar.update(1)

  curves, points, eq1, calibration_curves = {}, {}, {}, {}
  for phase in phases:
    direction = DIRECTIONS[phase]
    curves[phase], points[phase], eq1[phase] = {"direction": direction}, {}, {}
    calibration_curves[phase] = {}
    for label in labels:
      if (label, phase) not in reported:
        continue
      _, y, p = reported[(label, phase)]
      curve = decision_curves.decision_curve(y, p, direction, DECISION_THRESHOLDS, per=1000,
                                             replicates=replicates, seed=seed)
      curves[phase][label] = curve.as_dict()
      eq1[phase][label] = _at_thresholds(curve)
      points[phase][label] = decision_curves.operating_points(y, p)
      if label in model_labels:
        calibration_curves[phase][label] = statistics.calibration_curve(
            y, p, replicates=replicates, seed=seed).as_dict()
      bar.update(1)

  subgroups = {}
  for phase in phases:
    ids, y, p = reported[(focus, phase)]
    subgroups[phase] = {
        variable: statistics.subgroup_metrics(
            y, p, [patients[i].get(variable) for i in ids], thresholds[focus][phase],
            replicates=replicates, seed=seed)
        for variable in SUBGROUP_VARIABLES}
    bar.update(1)
  bar.close()
  return {
      "models": metrics, "thresholds": thresholds,
      "delong": delong_tests(reported, labels, phases),
      "paper_claims": paper_claims(reported, phases, by_model, weights, replicates, seed),
      "oracle_gaps": oracle_gaps(reported, phases, by_model,
                                 [m for m in model_labels if m.startswith("oracle ")],
                                 replicates, seed),
      "decision_curves": curves, "decision_thresholds": eq1, "operating_points": points,
      "calibration_curves": calibration_curves,
      "subgroups": {"model": focus, "by_phase": subgroups},
      "odds_ratios": table_2_odds_ratios(patients)}


def table_1_row(y, p, threshold: float, replicates: int, seed: int) -> dict[str, Any]:
  """One model at one phase: the paper's Table 1 metrics and the Brier score with CIs."""
  table = statistics.metric_table(y, p, threshold, replicates=replicates, seed=seed)
  return {
      # "auprc" is the average precision; the trapezoidal area is reported beside it.
      "auroc": table["auroc"], "auprc": table["auprc_average_precision"],
      "auprc_trapezoidal": table["auprc_trapezoidal"],
      **{m: table[m] for m in ("sensitivity", "specificity", "ppv", "npv")},
      "brier": statistics.brier_score(y, p, replicates=replicates, seed=seed).as_dict(),
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


def delong_tests(reported, labels, phases) -> dict[str, list[dict[str, Any]]]:
  """DeLong's test between every pair of labels per phase, on the patients both have."""
  out = {}
  for phase in phases:
    out[phase] = []
    present = [label for label in labels if (label, phase) in reported]
    for a, b in itertools.combinations(present, 2):
      ids_a, y, pa = reported[(a, phase)]
      ids_b, _, pb = reported[(b, phase)]
      y, pa, pb = _paired(ids_a, y, pa, ids_b, pb)  # readers may have read a subset
      test = statistics.delong_test(y, pa, pb)
      out[phase].append({"a": a, "b": b, "auc_a": test.auc_a, "auc_b": test.auc_b,
                         "p_value": test.p_value, "n": int(len(y))})
  return out


def table_2_odds_ratios(patients) -> dict[str, Any]:
  """Odds ratios of pCR per category over every labelled patient of every split (Table 2)."""
  labelled = [pid for pid, row in patients.items() if row["label"] in (0, 1)]
  y = np.asarray([patients[pid]["label"] for pid in labelled])
  out = {}
  for variable, reference in ODDS_RATIO_VARIABLES.items():
    groups = [patients[pid].get(variable) for pid in labelled]
    present = set(statistics.category_labels(groups).tolist())
    out[variable] = statistics.odds_ratios(
        y, groups, reference=reference if reference in present else None)
  return {"splits": sorted({patients[pid]["split"] for pid in labelled}), "n": len(labelled),
          "n_pcr": int(y.sum()), "by_variable": out}


def _paired(ids_a, y, pa, ids_b, pb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labels, a's scores, b's scores) of the patients both have, matched by id."""
  row_b = {patient: k for k, patient in enumerate(ids_b)}
  pick_a = [k for k, patient in enumerate(ids_a) if patient in row_b]
  pick_b = [row_b[ids_a[k]] for k in pick_a]
  return y[pick_a], pa[pick_a], pb[pick_b]


def _compare(claim: str, phase: str, a: str, b: str, ids_a, ids_b, y, pa, pb,
             replicates: int, seed: int) -> dict[str, Any]:
  """``a`` above ``b`` on the patients both have: both AUROCs, their paired bootstrap
  difference, DeLong's p, and whether it holds by the point estimate (strictly) and with the
  95% CI above 0."""
  y, pa, pb = _paired(ids_a, y, pa, ids_b, pb)
  difference = statistics.paired_difference(y, pa, pb, replicates=replicates, seed=seed)
  value, low = difference.value, difference.ci_low
  return {"claim": claim, "phase": phase, "a": a, "b": b, "n": int(len(y)),
          "auroc_a": statistics.auroc(y, pa), "auroc_b": statistics.auroc(y, pb),
          "difference": difference.as_dict(),
          "p_value": statistics.delong_test(y, pa, pb).p_value,
          "holds": bool(np.isfinite(value) and value > 0),
          "ci_above_zero": bool(np.isfinite(low) and low > 0)}


# The paper's comparisons per phase (cohort A): each image model above rhpc, MRP above each of
# its parts and above rhpc; all strict, so nothing can hold by construction.
CLAIMS = (("iMGrhpc", "rhpc"), ("iMRrhpc", "rhpc"), ("MRP", "iMGrhpc"), ("MRP", "iMRrhpc"),
          ("MRP", "rhpc"))
# The paper's ordering of the four models at every phase (ascending AUROC).
ORDERING = ("rhpc", "iMGrhpc", "iMRrhpc", "MRP")


def paper_claims(reported, phases: tuple[str, ...], by_model: dict[str, str],
                 weights: ensemble.EnsembleWeights | None, replicates: int,
                 seed: int) -> dict[str, Any]:
  """The paper's result as the paper states it, checked on the reported scores ((label,
  phase) -> scores), each claim on the patients both sides share.

  Per phase: iMGrhpc > rhpc, iMRrhpc > rhpc, MRP > iMGrhpc, MRP > iMRrhpc, MRP > rhpc; across
  phases: iMRrhpc at Post-NAT at least as good as at Pre-NAT (same patients, their Pre-NAT and
  Post-NAT predictions). Each claim carries both AUROCs, the paired bootstrap 95% CI of their
  difference, DeLong's p, ``holds`` (the point estimate, as the paper reports it) and
  ``ci_above_zero``. When MRP's weights put one part at 0, MRP is the other part: its claims
  against its parts are marked degenerate and never hold. Claims whose models were not
  evaluated are left out. Also per phase: the four models ordered by AUROC, and whether that
  is the paper's order.
  """
  name = {m: by_model.get(m, m) for m in ORDERING}
  degenerate = None
  if weights is not None and min(weights.w_mg, weights.w_mr) == 0:
    only = "iMRrhpc" if weights.w_mg == 0 else "iMGrhpc"
    degenerate = (f"MRP = {only}: the other part has weight 0 (w_mg {weights.w_mg:.2f}, "
                  f"w_mr {weights.w_mr:.2f}), so MRP adds nothing to it")
  claims, ordering = [], {}
  for phase in phases:
    for a, b in CLAIMS:
      la, lb = name[a], name[b]
      if (la, phase) in reported and (lb, phase) in reported:
        ids_a, y, pa = reported[(la, phase)]
        ids_b, _, pb = reported[(lb, phase)]
        claim = _compare(f"{a} > {b}", phase, la, lb, ids_a, ids_b, y, pa, pb, replicates,
                         seed)
        if degenerate and a == "MRP" and b != "rhpc":
          claim.update(holds=False, ci_above_zero=False, degenerate=True)
        claims.append(claim)
    present = [m for m in ORDERING if (name[m], phase) in reported]
    aurocs = {m: statistics.auroc(*reported[(name[m], phase)][1:]) for m in present}
    order = sorted(present, key=lambda m: aurocs[m])
    ordering[phase] = {"order": order, "auroc": aurocs,
                       "paper": len(present) == len(ORDERING) and order == list(ORDERING)
                       and len(set(aurocs.values())) == len(ORDERING)}
  imr = name["iMRrhpc"]
  if all((imr, phase) in reported for phase in ("pre", "post")):
    ids_post, y, p_post = reported[(imr, "post")]
    ids_pre, _, p_pre = reported[(imr, "pre")]
    claim = _compare("iMRrhpc Post-NAT >= Pre-NAT", "post vs pre", f"{imr} post",
                     f"{imr} pre", ids_post, ids_pre, y, p_post, p_pre, replicates, seed)
    value = claim["difference"]["value"]
    claim["holds"] = bool(value is not None and np.isfinite(value) and value >= 0)
    claims.append(claim)
  return {"claims": claims, "held": sum(c["holds"] for c in claims),
          "held_with_ci": sum(c["ci_above_zero"] for c in claims), "total": len(claims),
          "degenerate_weights": degenerate, "ordering": ordering}


def oracle_gaps(reported, phases: tuple[str, ...], by_model: dict[str, str],
                oracle_labels: list[str], replicates: int, seed: int
                ) -> dict[str, list[dict[str, Any]]]:
  """Per phase, each trained model's AUROC against its oracle's (the Bayes-optimal P(pCR)
  given what that model sees) on the same patients: how much of what the data holds the
  model found. Empty for real data."""
  out = {}
  for phase in phases:
    out[phase] = []
    for model in ORDERING:
      label, target = by_model.get(model, model), f"oracle {model}"
      if target in oracle_labels and (label, phase) in reported and (target, phase) in reported:
        ids_a, y, pa = reported[(label, phase)]
        ids_b, _, pb = reported[(target, phase)]
        gap = _compare(f"{model} - oracle", phase, label, target, ids_a, ids_b, y, pa, pb,
                       replicates, seed)
        out[phase].append({"model": label, "oracle": target, "n": gap["n"],
                           "auroc": gap["auroc_a"], "auroc_oracle": gap["auroc_b"],
                           "gap": gap["difference"]})
  return out


def image_evidence(predictions, reported_cohort: cohort.Cohort, reported, split: str,
                   phases: tuple[str, ...], by_model: dict[str, str], replicates: int,
                   seed: int) -> dict[str, list[dict[str, Any]]]:
  """Per phase, what each fused model's image encoder finds on its own: the AUROC of its
  knowledge predictor's image-only P(pCR) on the reported patients who have the image.

  For records of a synthetic export, beside it the AUROC of what the image tells in truth: the
  log-odds the oracle of the fused model adds to the oracle rhpc's (the image's likelihood
  ratio, with what it reveals of variables the table leaves Unknown), on the same patients,
  and the paired bootstrap difference. A fused model's gain over rhpc can only come from its
  encoder's features, and this says how much of the label they carry on their own (through
  the knowledge predictor's head): where a fused model's gap to its oracle lies.
  """
  out: dict[str, list[dict[str, Any]]] = {}
  for phase in phases:
    out[phase] = []
    for model in ("iMGrhpc", "iMRrhpc"):
      label = by_model.get(model)
      p = predictions.get((label, split, phase))
      if p is None or p.image_probability is None:
        continue
      keep = reported_cohort.keep(p.patient_ids) & p.image_present
      ids, y, score = p.patient_ids[keep], p.label[keep], p.image_probability[keep]
      row = {"model": label, "image": "mammogram" if model == "iMGrhpc" else "MRI",
             "n": int(len(y)), "auroc": statistics.auroc(y, score)}
      fused = reported.get((f"oracle {model}", phase))
      table = reported.get(("oracle rhpc", phase))
      if fused is not None and table is not None:
        table_p = dict(zip(table[0], table[2]))
        both = np.asarray([i in table_p for i in fused[0]], bool)
        truth_ids = fused[0][both]
        log_odds = lambda p: special.logit(np.clip(np.asarray(p, np.float64), 1e-15, 1 - 1e-15))
        evidence = (log_odds(fused[2][both])
                    - log_odds(np.asarray([table_p[i] for i in truth_ids])))
        compared = _compare(f"{model} image-only - oracle image evidence", phase,
                            f"{label} image-only", f"oracle {model} - oracle rhpc", ids,
                            truth_ids, y, score, evidence, replicates, seed)
        row.update(n=compared["n"], auroc=compared["auroc_a"],
                   auroc_oracle_evidence=compared["auroc_b"], gap=compared["difference"])
      out[phase].append(row)
  return out


# ---------------------------------------------------------------------------------------------
# 7: explanations
# ---------------------------------------------------------------------------------------------
def attribution_baseline(patients, fit_split: str) -> dict[str, Any]:
  """The reference patient (cohort.reference_patient) of the train split (else the fit
  split): {'rhpc': 'reference patient', 'reference_split', 'values': {variable: value},
  'images': 'zeros (black)', 'rhpc_inputs': [INPUT_DIM]}."""
  split = ("train" if any(row["split"] == "train" for row in patients.values())
           else fit_split)
  reference = cohort.reference_patient(patients, split)
  values = {k: ("+".join(v) if isinstance(v, list) else v)
            for k, v in reference.decode(0).items()}
  return {"rhpc": "reference patient", "reference_split": split, "values": values,
          "images": "zeros (black)",
          "rhpc_inputs": encoding.model_inputs(reference)[0].tolist()}


def explain_cases(loaded, records_dir: Path, ev, baseline: dict[str, Any],
                  reported_cohort: cohort.Cohort, maps,
                  weights: ensemble.EnsembleWeights | None, by_model: dict[str, str],
                  scores) -> dict[str, Any]:
  """Integrated Gradients of the first ``explain_cases`` patients of the reported cohort at
  ``explain_phase``, each model's calibrated probability against the reference patient; MRP's
  per case as the ensemble combines it, its completeness checked against MRP's reported
  probability."""
  from mrp_jax.evaluation import explain
  phase = ev.explain_phase
  spec = pipeline.batch_spec(records_dir)
  cases = []
  for path in pipeline.split_paths(records_dir, ev.split):
    for _, data in tfrecord.iter_records(path):
      record = records.decode(data)
      if (batching.evaluates(record, phase)
          and reported_cohort.keep(np.asarray([record.patient_id]))[0]):
        cases.append(batching.eval_example(record, phase))
      if len(cases) >= ev.explain_cases:
        break
    if len(cases) >= ev.explain_cases:
      break
  ids = [case.record.patient_id for case in cases]
  rhpc_baseline = np.asarray(baseline["rhpc_inputs"], np.float32)
  per_model, mismatch = {}, {}
  bar = cli.progress(total=len(loaded) * len(cases), desc="explain (run x case)", unit="case")
  for run_ in loaded:
    variables = {"params": jax.device_get(run_.state.params),
                 "batch_stats": jax.device_get(run_.state.batch_stats)}
    platt = maps[run_.label][phase]
    chunks = []
    for start in range(0, len(cases), 8):
      batch = batching.collate(cases[start:start + 8], run_.model_name, spec)
      chunks.append(explain.model_attributions(
          run_.model, variables, batch, target="probability", steps=ev.explain_steps,
          rhpc_baseline=rhpc_baseline, calibration=(platt.slope, platt.intercept)))
      bar.update(len(cases[start:start + 8]))
    per_model[run_.label] = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    # The explained function against the reported one (bfloat16 runs differ by rounding).
    reported_p = _lookup(scores[(run_.label, ev.split, phase)], ids)
    mismatch[run_.label] = float(np.max(np.abs(per_model[run_.label]["output"] - reported_p)))
  bar.close()
  if weights is not None:
    mg_present = np.asarray([case.record.mg is not None for case in cases])
    mr_present = np.asarray([case.baseline is not None for case in cases])
    w_mg, w_mr = ensemble.case_weights(weights, mg_present, mr_present)
    per_model["MRP"] = explain.combine_attributions(
        {"mg": per_model[by_model["iMGrhpc"]], "mr": per_model[by_model["iMRrhpc"]]},
        {"mg": w_mg, "mr": w_mr}, output=_lookup(scores[("MRP", ev.split, phase)], ids))
    mismatch["MRP"] = 0.0  # checked against MRP's reported probability itself
  return {
      "phase": phase, "cases": len(cases), "split": ev.split, "cohort": reported_cohort.kind,
      "target": "calibrated probability of pCR (the one each model reports and MRP averages)",
      "baseline": {k: v for k, v in baseline.items() if k != "rhpc_inputs"},
      "ranking": ev.explain_ranking,
      "ranked": {label: explain.rank_attributions(values, ev.explain_ranking)
                 for label, values in per_model.items()},
      "completeness": {label: {
          "mean_abs_delta": float(np.mean(np.abs(v["delta"]))),
          "max_abs_delta": float(np.max(np.abs(v["delta"]))),
          "mean_abs_output_difference": float(np.mean(np.abs(v["output_difference"]))),
          "max_abs_output_vs_reported": mismatch[label]}
          for label, v in per_model.items() if len(v["delta"])}}


def _lookup(entry: Scores, ids: list[str]) -> np.ndarray:
  position = {patient: k for k, patient in enumerate(entry[0])}
  return np.asarray([entry[2][position[i]] for i in ids], np.float64)


# ---------------------------------------------------------------------------------------------
# 8: outputs
# ---------------------------------------------------------------------------------------------
def write_outputs(out_dir: Path, result: dict[str, Any], attributions: dict[str, Any],
                  baseline: dict[str, Any], scores, reported, predictions, patients, maps,
                  weights, ev) -> None:
  if weights is not None:
    weights.save(out_dir / "mrp_ensemble.json")
  calibration.save(out_dir / "calibration.json", maps, ev.fit_split)
  (out_dir / "attribution_baseline.json").write_text(json.dumps(_json_ready(baseline),
                                                                indent=1))
  _write_predictions(out_dir / "predictions.csv", scores, reported, predictions, patients,
                     ev.split)
  (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
  (out_dir / "attributions.json").write_text(json.dumps(_json_ready(attributions), indent=1))
  report.write(out_dir, result, attributions, reported)


def outputs(out_dir: Path) -> list[str]:
  """The console's closing lines for a report folder: what is where, how to open it."""
  return [f"report: {out_dir / 'report.md'} (Markdown with its PNG figures beside it: open it "
          "in a Markdown viewer, e.g. VS Code's preview)",
          f"everything measured: {out_dir / 'metrics.json'}; per patient: "
          f"{out_dir / 'predictions.csv'}",
          f"for new patients: python -m mrp_jax.predict --evaluation {out_dir} --runs ..."]


def _write_predictions(path: Path, scores, reported, predictions, patients, split: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["patient_id", "split", "phase", "model", "probability",
                     "uncalibrated_probability", "label", "reported", *SUBGROUP_VARIABLES])
    for (label, s, phase), (ids, y, p) in sorted(scores.items()):
      raw = predictions.get((label, s, phase))
      kept = set(reported[(label, phase)][0]) if s == split else set()
      for k, (i, yi, pi) in enumerate(zip(ids, y, p)):
        info = patients.get(i, {})
        writer.writerow([i, s, phase, label, f"{pi:.6f}",
                         "" if raw is None else f"{raw.probability[k]:.6f}", int(yi),
                         int(i in kept),
                         *[("" if info.get(v) is None else info.get(v))
                           for v in SUBGROUP_VARIABLES]])

"""The `evaluate` job: trained runs -> predictions, calibration, the MRP ensemble, statistics,
explanations and a report.

:func:`run` is a sequence of named stages, each in the module named:

0. the runs (core/runs.py), every split's patients (cohort.patient_table), the reported cohort
   (cohort.reported_cohort) and the reference patient (attributions.attribution_baseline);
1. predictions.predict_splits: every run (config.evaluate.runs) predicts the fit split
   (validation) and the reported split (test) at every phase (Pre: Pre data; Mid: Pre+Mid;
   Post: Pre+Post);
2. predictions.calibrate: a Platt map per run and phase fitted on the fit split
   (calibration.py); every later stage reads calibrated probabilities (the AUROCs are unchanged
   by it);
3. predictions.add_mrp: the MRP weights fitted on the fit split (ensemble.py) on the
   models' own probabilities (config.evaluate.mrp_inputs 'model', the paper's; MRP's output
   then gets its own Platt map) or on their calibrated ones ('calibrated'), and MRP's
   scores; readers.add_readers: readers' probabilities and their mean ("Readers (mean)", the
   paper's +R); predictions.add_oracle: for a synthetic export, the oracles' probabilities,
   and predictions.add_oracle_rule: MRP's rule on its members' oracles ('oracle MRP rule');
4. scores.reported_scores: the reported split's scores of the reported cohort
   (config.evaluate.cohort; cohort.py): by default the patients with every image, the same at
   every phase;
5. tables.measure: on the fit split each model's operating threshold (Youden's J, or a fixed
   probability); on the reported cohort Table 1 (AUROC, AUPRC, sensitivity, specificity, PPV,
   NPV, Brier, with bootstrap CIs), decision curves with the paper's Eq. (1), operating points,
   calibration curves and subgroups; tables.delong_tests; claims.paper_claims: the paper's
   result claim by claim; evidence.oracle_gaps and evidence.image_evidence: what the models
   found against what the data holds; over every split the odds ratios of Table 2
   (tables.table_2_odds_ratios);
6. attributions.explain_cases: Integrated Gradients as the paper's Fig. 4 (explain.py);
7. outputs.write:

WORKDIR/report/
  predictions.csv        one row per patient x split x phase x model: pseudonym, calibrated
                         and uncalibrated probability, label, whether the row is reported, the
                         rhpc subgroup variables
  metrics.json           everything measured (README.md, "Evaluation and the report")
  calibration.json       the Platt maps, MRP's with 'model' inputs (for `predict`)
  mrp_ensemble.json      the MRP weights and what they combine (for `predict`)
  attribution_baseline.json  the reference patient, Integrated Gradients' baseline (`predict`)
  attributions.json      Integrated Gradients ranked per model (the paper's Fig. 4)
  report.md and PNG figures (report.py)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections

from input_pipeline import schema
from mrp_jax import configuration as cfg
from mrp_jax import console
from mrp_jax.core import runs, sharding
from mrp_jax.evaluation import (
    attributions,
    calibration,
    claims,
    cohort,
    ensemble,
    evidence,
    outputs,
    predictions,
    readers,
    tables,
)
from mrp_jax.evaluation.explain import RANKINGS
from mrp_jax.evaluation.scores import ORACLE_RULE, Bootstrap, Scored, reported_scores

# config.evaluate, as the stages read it.
CONFIG_RULES: dict[str, cfg.Rule] = {
    "evaluate.runs": (lambda v: isinstance(v, str), "must be LABEL=WORKDIR,... (a string)"),
    "evaluate.split": cfg.one_of("validation", "test"),
    "evaluate.phases": cfg.tuple_of(*schema.PHASE_NAMES),
    "evaluate.batch_size": cfg.POSITIVE_INT,
    "evaluate.fit_split": cfg.one_of("train", "validation"),
    "evaluate.threshold": (lambda v: v in tables.THRESHOLD_RULES or cfg.is_probability(v),
                           f"must be one of {list(tables.THRESHOLD_RULES)} or a probability in "
                           "(0, 1)"),
    "evaluate.bootstrap_replicates": (lambda v: cfg.positive_int(v) and v >= 100,
                                      "must be an integer >= 100"),
    "evaluate.readers": (lambda v: v == "" or os.path.isfile(v), "must be '' or an existing CSV"),
    "evaluate.explain_cases": cfg.COUNT,
    "evaluate.explain_steps": cfg.POSITIVE_INT,
    "evaluate.explain_phase": cfg.one_of(*schema.PHASE_NAMES),
    "evaluate.explain_ranking": cfg.one_of(*RANKINGS),
    "evaluate.cohort": cfg.one_of(*cohort.COHORTS),
    "evaluate.mrp_inputs": cfg.one_of(*ensemble.INPUTS),
}
CONFIG_CHECKS: tuple[cfg.Check, ...] = (cfg.RULES, CONFIG_RULES)


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Runs the evaluate job into WORKDIR/report; returns metrics.json's content."""
  ev = config.evaluate
  stage = console.current("evaluate").stage
  out_dir = Path(workdir) / "report"
  out_dir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  loaded = [runs.load_run(path, mesh, label) for label, path in runs.parse_runs(ev.runs)]
  if not loaded:
    raise ValueError("config.evaluate.runs is empty: give LABEL=TRAIN_WORKDIR,...")
  records_dir = Path(config.data.records)
  runs.check_records(loaded, records_dir)
  phases = tuple(ev.phases)
  splits = tuple(dict.fromkeys((ev.fit_split, ev.split)))
  patients = cohort.patient_table(records_dir)
  reported_cohort = cohort.reported_cohort(patients, ev.split, ev.cohort)
  stage(f"reported cohort: {reported_cohort.describe()}")
  baseline = attributions.attribution_baseline(patients, ev.fit_split)

  predicted = predictions.predict_splits(loaded, records_dir, splits, phases, ev.batch_size,
                                         mesh)
  maps = predictions.calibrate(predicted, ev.fit_split, phases)
  scores = predictions.calibrated(predicted, maps)
  members = predictions.mrp_members(loaded)
  how = predictions.Ensemble(members, ev.fit_split, ev.mrp_inputs)
  weights = predictions.add_mrp(scores, predicted, maps, how)
  reader_labels = readers.add_readers(scores, ev.readers, ev.split, patients) if ev.readers else []
  oracle_labels = predictions.add_oracle(scores, records_dir, predicted)
  oracle_rule = predictions.add_oracle_rule(scores, predicted, how)
  if oracle_rule is not None:
    oracle_labels.append(ORACLE_RULE)
  scored = Scored(
      split=ev.split, fit_split=ev.fit_split, phases=phases, patients=patients,
      cohort=reported_cohort, predictions=predicted, calibration=maps, scores=scores,
      reported=reported_scores(scores, ev.split, reported_cohort), members=members,
      weights=weights,
      model_labels=[r.label for r in loaded] + (["MRP"] if weights else []) + oracle_labels,
      reader_labels=reader_labels,
      bootstrap=Bootstrap(ev.bootstrap_replicates, config.seed))

  measured = tables.measure(scored, ev.threshold)
  labels = scored.model_labels + scored.reader_labels
  found = {
      "models": measured.models, "thresholds": measured.thresholds,
      "delong": tables.delong_tests(scored.reported, labels, phases),
      "paper_claims": claims.paper_claims(scored.reported, phases, members, weights,
                                          scored.bootstrap),
      "oracle_gaps": evidence.oracle_gaps(scored.reported, phases, members,
                                          scored.oracle_labels, scored.bootstrap),
      "decision_curves": measured.decision_curves,
      "decision_thresholds": measured.decision_thresholds,
      "operating_points": measured.operating_points,
      "calibration_curves": measured.calibration_curves,
      "subgroups": measured.subgroups,
      "odds_ratios": tables.table_2_odds_ratios(patients),
      "image_evidence": evidence.image_evidence(scored)}
  explained = {}
  if ev.explain_cases:
    stage(f"explanations: Integrated Gradients ({ev.explain_steps} steps) of up to "
          f"{ev.explain_cases} reported patients at {ev.explain_phase}")
    explained = attributions.explain_cases(loaded, records_dir, ev, scored, baseline)
  result = outputs.json_ready({
      "split": ev.split, "fit_split": ev.fit_split, "phases": list(phases),
      "cohort": {"kind": reported_cohort.kind, "description": reported_cohort.describe(),
                 "images": list(reported_cohort.images),
                 "n": {phase: scored.reported_n(phase) for phase in phases},
                 "note": reported_cohort.note},
      **found,
      "calibration": {"method": calibration.METHOD, "fit_split": ev.fit_split, "maps": maps},
      "ensemble": weights, "readers": reader_labels, "oracle": oracle_labels,
      "oracle_rule_weights": oracle_rule,
      # No paths, dates or timings: the same runs give the same bytes wherever they live.
      "runs": {r.label: {"model": r.model_name, "step": r.step} for r in loaded},
      "bootstrap": {"replicates": ev.bootstrap_replicates, "kind": "percentile",
                    "seed": config.seed},
  })
  outputs.write(out_dir, scored, result, explained, baseline)
  stage(f"report written: {out_dir / 'report.md'}")
  return result

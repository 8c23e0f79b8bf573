"""The report's explanations: the reference patient, and Integrated Gradients (explain.py) of
the reported cases as the paper's Fig. 4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from input_pipeline import cli, encoding, records
from input_pipeline.feed import batching, pipeline
from input_pipeline.records import tfrecord
from mrp_jax.core import runs
from mrp_jax.evaluation import calibration, cohort, ensemble, explain
from mrp_jax.evaluation.scores import Key, Scored, Scores

CHUNK = 8  # cases explained at once


def attribution_baseline(patients: dict[str, dict[str, Any]], fit_split: str) -> dict[str, Any]:
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


def _cases(records_dir: Path, ev: ml_collections.ConfigDict,
           reported_cohort: cohort.Cohort) -> list[batching.Example]:
  """The first ``ev.explain_cases`` patients of the reported cohort with ``ev.explain_phase``'s
  images, in record order."""
  phase, cases = ev.explain_phase, []
  for path in pipeline.split_paths(records_dir, ev.split):
    for _, data in tfrecord.iter_records(path):
      record = records.decode(data)
      if (batching.evaluates(record, phase)
          and reported_cohort.keep(np.asarray([record.patient_id]))[0]):
        cases.append(batching.eval_example(record, phase))
      if len(cases) >= ev.explain_cases:
        return cases
  return cases


def explain_cases(loaded: list[runs.Run], records_dir: Path, ev: ml_collections.ConfigDict,
                  scored: Scored, baseline: dict[str, Any]) -> dict[str, Any]:
  """Integrated Gradients of the first ``ev.explain_cases`` patients of the reported cohort at
  ``ev.explain_phase``, against the reference patient, of the probabilities MRP combines: each
  model's own with 'model' MRP inputs (MRP's: the combination y = W1 F1 + W2 F2 before its
  Platt map, which is not linear), each model's calibrated one with 'calibrated' inputs (MRP's:
  its reported probability). MRP's per case as the ensemble combines it, its completeness
  checked against that output."""
  phase = ev.explain_phase
  spec = pipeline.batch_spec(records_dir)
  cases = _cases(records_dir, ev, scored.cohort)
  ids = [case.record.patient_id for case in cases]
  rhpc_baseline = np.asarray(baseline["rhpc_inputs"], np.float32)
  own = scored.weights is not None and scored.weights.inputs == "model"

  def explained(label):  # the probabilities of ``ids`` the attributions explain
    if own:
      p = scored.predictions[Key(label, ev.split, phase)]
      return Scores(p.patient_ids, p.label, p.probability).of(ids)
    return scored.scores[Key(label, ev.split, phase)].of(ids)

  per_model, mismatch = {}, {}
  bar = cli.progress(total=len(loaded) * len(cases), desc="explain (run x case)", unit="case")
  for run_ in loaded:
    variables = {"params": jax.device_get(run_.state.params),
                 "batch_stats": jax.device_get(run_.state.batch_stats)}
    platt = calibration.IDENTITY if own else scored.calibration[run_.label][phase]
    # One row per case, per mammogram view for iMGrhpc: a case's attributions are the mean of
    # its views' (Integrated Gradients is linear in the explained function, and the reported
    # prediction is the mean of the views' probabilities: inference.per_patient).
    rows = [(i, example) for i, case in enumerate(cases)
            for example in batching.eval_examples(case.record, phase, run_.model_name)]
    owner = np.asarray([i for i, _ in rows], np.int64)
    last = np.r_[owner[1:] != owner[:-1], True] if len(owner) else owner  # a case's last row
    chunks = []
    for start in range(0, len(rows), CHUNK):
      batch = batching.collate([e for _, e in rows[start:start + CHUNK]], run_.model_name, spec)
      chunks.append(explain.model_attributions(
          run_.model, variables, batch, explain.AttributionOptions(
              target="probability", steps=ev.explain_steps, rhpc_baseline=rhpc_baseline,
              calibration=(platt.slope, platt.intercept))))
      bar.update(int(np.sum(last[start:start + CHUNK])))
    counts = np.bincount(owner, minlength=len(cases))
    per_model[run_.label] = {
        k: (np.bincount(owner, np.concatenate([c[k] for c in chunks]), len(cases))
            / np.maximum(counts, 1)).astype(np.float32) for k in chunks[0]}
    # The explained function against the reported one (bfloat16 runs differ by rounding).
    mismatch[run_.label] = float(np.max(np.abs(per_model[run_.label]["output"]
                                                - explained(run_.label))))
  bar.close()
  if scored.weights is not None:
    mg_present = np.asarray([bool(case.record.mammograms) for case in cases])
    mr_present = np.asarray([case.baseline is not None for case in cases])
    w_mg, w_mr = ensemble.case_weights(scored.weights, mg_present, mr_present)
    per_model["MRP"] = explain.combine_attributions(
        {"mg": per_model[scored.members["iMGrhpc"]], "mr": per_model[scored.members["iMRrhpc"]]},
        {"mg": w_mg, "mr": w_mr}, output=explained("MRP"))
    mismatch["MRP"] = 0.0  # checked against MRP's output itself
  return {
      "phase": phase, "cases": len(cases), "split": ev.split, "cohort": scored.cohort.kind,
      "target": ("each model's own probability of pCR and MRP's W1 F1 + W2 F2 of them, before "
                 "MRP's calibration" if own else
                 "calibrated probability of pCR (the one each model reports and MRP averages)"),
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

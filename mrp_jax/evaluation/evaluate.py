"""The `evaluate` job: trained runs -> predictions, the MRP ensemble, statistics and a report.

For every run (config.evaluate.runs) and every phase (Pre: Pre data; Mid: Pre+Mid; Post:
Pre+Post) the models predict the fit split (validation) and the reported split (test). On the
fit split the MRP weights (mrp_jax/evaluation/ensemble.py) and each model's operating threshold (Youden's J,
or a fixed probability) are chosen; on the reported split everything is measured:

WORKDIR/report/
  predictions.csv     one row per patient x phase x model (pseudonym, split, phase, model,
                      probability, label, and the rhpc subgroup variables)
  metrics.json        {model: {phase: {metric: {value, ci_low, ci_high}, "n": N}}}, DeLong
                      p-values between models per phase, decision curves, operating points,
                      thresholds, subgroup metrics, odds ratios, the ensemble weights, readers
  mrp_ensemble.json   the MRP weights (for `predict`)
  attributions.json   Integrated Gradients ranked per model (the paper's Fig. 4)
  report.md and PNG figures (report.py)
"""

from __future__ import annotations

import collections
import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from input_pipeline import batching, clinical_table, pipeline, records, schema, tfrecord
from mrp_jax import sharding
from mrp_jax.evaluation import decision_curves, ensemble, inference, report, runs, statistics

# How an operating threshold is chosen on the fit split (or config.evaluate.threshold is a
# probability): Youden's J per model and phase.
THRESHOLD_RULES = ("youden",)
# Decision-curve direction per phase (the paper's Fig. 5): change therapy for predicted non-pCR
# before and during NAT; omit surgery for predicted pCR after it.
DIRECTIONS = {"pre": "therapy", "mid": "therapy", "post": "surgery"}
SUBGROUP_VARIABLES = ("in_situ", "differentiation", "histology", "molecular_subtype", "therapy",
                      "ct", "cn", "focality", "brca1", "age_group")


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
  if hasattr(value, "__dataclass_fields__"):
    return _json_ready({k: getattr(value, k) for k in value.__dataclass_fields__})
  return value


def patient_table(records_dir: Path, splits: tuple[str, ...]) -> dict[str, dict[str, Any]]:
  """Pseudonym -> split and decoded rhpc subgroup values, for the patients of ``splits``."""
  table = {}
  for split in splits:
    for path in pipeline.split_paths(records_dir, split):
      for _, data in tfrecord.iter_records(path):
        record = records.decode(data)
        parsed = clinical_table.ParsedRhpc(record.rhpc_codes[None], record.rhpc_values[None])
        values = parsed.decode(0)
        age = values.get("age")
        values["age_group"] = None if age is None else ("<=50" if age <= 50 else ">50")
        values["therapy"] = "+".join(values["therapy"]) if values["therapy"] else None
        table[record.patient_id] = {"split": split, **values}
  return table


def _readers(path: str) -> dict[tuple[str, str], dict[str, float]]:
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
      if phase not in schema.PHASE_NAMES:
        raise ValueError(f"{path}:{line}: phase {row['phase']!r} is not pre, mid or post")
      try:
        out[(f"Reader {row['reader'].strip()}", phase)][row["case"].strip()] = float(
            row["probability"])
      except ValueError:
        raise ValueError(f"{path}:{line}: probability {row['probability']!r} is not a "
                         "number") from None
  return out


def _threshold(config, y, p) -> float:
  if config.evaluate.threshold not in THRESHOLD_RULES:
    return float(config.evaluate.threshold)
  t = statistics.youden_threshold(y, p)
  return t if math.isfinite(t) else 0.5


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  ev = config.evaluate
  out_dir = Path(workdir) / "report"
  out_dir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  loaded = [runs.load_run(path, mesh, label) for label, path in runs.parse_runs(ev.runs)]
  if not loaded:
    raise ValueError("config.evaluate.runs is empty: give LABEL=TRAIN_WORKDIR,...")
  records_dir = Path(config.data.records)
  splits = (ev.fit_split, ev.split)
  patients = patient_table(records_dir, splits)
  phases = tuple(config.evaluate.phases)

  # ---- predictions ------------------------------------------------------------------------
  predictions: dict[tuple[str, str, str], inference.Predictions] = {}
  for run_ in loaded:
    for split in splits:
      paths = pipeline.split_paths(records_dir, split)
      for phase in phases:
        predictions[(run_.label, split, phase)] = inference.predict(
            run_.eval_step, run_.state, mesh, paths, model_name=run_.model_name, phase=phase,
            batch_size=config.evaluate.batch_size)
        print(f"evaluate: {run_.label} {split} {phase}: "
              f"{len(predictions[(run_.label, split, phase)].label)} patients", flush=True)
  scores = {key: (p.patient_ids, p.label, p.probability) for key, p in predictions.items()}

  # ---- MRP ----------------------------------------------------------------------------------
  # MRP combines the runs labelled iMGrhpc and iMRrhpc; ablation runs ('iMRrhpc no time') are
  # reported beside them. Without such a label, the first run of each model.
  by_model: dict[str, str] = {}
  for r in loaded:
    if r.label == r.model_name or r.model_name not in by_model:
      by_model[r.model_name] = r.label
  weights = None
  if "iMGrhpc" in by_model and "iMRrhpc" in by_model:
    mg, mr = by_model["iMGrhpc"], by_model["iMRrhpc"]

    def arrays(split, phase):
      a, b = predictions[(mg, split, phase)], predictions[(mr, split, phase)]
      if not np.array_equal(a.patient_ids, b.patient_ids):
        raise RuntimeError(f"{split} {phase}: iMGrhpc and iMRrhpc saw different patients")
      return {"label": a.label, "p_mg": a.probability, "p_mr": b.probability,
              "mg_present": a.image_present, "mr_present": b.image_present}

    weights = ensemble.fit([arrays(ev.fit_split, phase) for phase in phases])
    weights.save(out_dir / "mrp_ensemble.json")
    for split, phase in itertools.product(splits, phases):
      a = arrays(split, phase)
      scores[("MRP", split, phase)] = (
          predictions[(mg, split, phase)].patient_ids, a["label"],
          ensemble.combine(weights, a["p_mg"], a["p_mr"], a["mg_present"], a["mr_present"]))

  # ---- readers ------------------------------------------------------------------------------
  reader_labels = []
  if ev.readers:
    for (reader, phase), cases in _readers(ev.readers).items():
      reference = next(v for k, v in scores.items() if k[1] == ev.split and k[2] == phase)
      ids, label, _ = reference
      keep = np.asarray([i in cases for i in ids])
      scores[(reader, ev.split, phase)] = (ids[keep], label[keep],
                                           np.asarray([cases[i] for i in ids[keep]]))
      reader_labels.append(reader)
  model_labels = [r.label for r in loaded] + (["MRP"] if weights else [])
  labels = model_labels + sorted(set(reader_labels))

  # ---- metrics on the reported split --------------------------------------------------------
  metrics: dict[str, Any] = {}
  thresholds: dict[str, dict[str, float]] = {}
  replicates = ev.bootstrap_replicates
  for label in labels:
    metrics[label], thresholds[label] = {}, {}
    for phase in phases:
      if (label, ev.split, phase) not in scores:
        continue
      _, y, p = scores[(label, ev.split, phase)]
      fit = scores.get((label, ev.fit_split, phase))
      t = _threshold(config, fit[1], fit[2]) if fit is not None else 0.5
      thresholds[label][phase] = t
      table = statistics.metric_table(y, p, t, replicates=replicates, seed=config.seed)
      metrics[label][phase] = {
          # "auprc" is the average precision; the trapezoidal area is reported beside it.
          "auroc": table["auroc"], "auprc": table["auprc_average_precision"],
          "auprc_trapezoidal": table["auprc_trapezoidal"],
          **{m: table[m] for m in ("sensitivity", "specificity", "ppv", "npv")},
          "n": int(len(y)), "n_pcr": int(np.sum(y))}

  delong = {}
  for phase in phases:
    delong[phase] = []
    present = [l for l in labels if (l, ev.split, phase) in scores]
    for a, b in itertools.combinations(present, 2):
      ids_a, y, pa = scores[(a, ev.split, phase)]
      ids_b, _, pb = scores[(b, ev.split, phase)]
      y, pa, pb = _paired(ids_a, y, pa, ids_b, pb)  # readers may have read a subset
      test = statistics.delong_test(y, pa, pb)
      delong[phase].append({"a": a, "b": b, "auc_a": test.auc_a, "auc_b": test.auc_b,
                            "p_value": test.p_value, "n": int(len(y))})

  shape = paper_shape(scores, ev.split, phases, by_model, bool(weights), replicates,
                      config.seed)

  curves, points = {}, {}
  for phase in phases:
    direction = DIRECTIONS[phase]
    curves[phase] = {"direction": direction}
    points[phase] = {}
    for label in labels:
      if (label, ev.split, phase) in scores:
        _, y, p = scores[(label, ev.split, phase)]
        curves[phase][label] = decision_curves.decision_curve(
            y, p, direction, decision_curves.DEFAULT_THRESHOLDS[:60], per=1000,
            replicates=replicates, seed=config.seed).as_dict()
        points[phase][label] = decision_curves.operating_points(y, p)

  focus = "MRP" if weights else model_labels[-1]
  subgroups, odds = {}, {}
  for phase in phases:
    ids, y, p = scores[(focus, ev.split, phase)]
    subgroups[phase] = {
        variable: statistics.subgroup_metrics(
            y, p, [patients[i].get(variable) for i in ids], thresholds[focus][phase],
            replicates=replicates, seed=config.seed)
        for variable in SUBGROUP_VARIABLES}
  cohort = [i for i in patients if patients[i]["split"] in splits]
  cohort_y = _cohort_labels(scores, splits, phases[0], cohort)
  for variable in ("molecular_subtype", "histology", "in_situ", "focality", "density"):
    odds[variable] = statistics.odds_ratios(cohort_y, [patients[i].get(variable) for i in cohort])

  # ---- attributions -------------------------------------------------------------------------
  attributions = {}
  if ev.explain_cases:
    attributions = _attributions(loaded, records_dir, ev, weights, by_model)

  # ---- outputs ------------------------------------------------------------------------------
  _write_predictions(out_dir / "predictions.csv", scores, patients)
  result = {
      "split": ev.split, "fit_split": ev.fit_split, "phases": list(phases),
      "models": metrics, "thresholds": thresholds, "delong": delong, "paper_shape": shape,
      "decision_curves": curves, "operating_points": points,
      "subgroups": {"model": focus, "by_phase": subgroups}, "odds_ratios": odds,
      "ensemble": weights, "readers": sorted(set(reader_labels)),
      "runs": {r.label: {"model": r.model_name, "workdir": str(r.workdir), "step": r.step}
               for r in loaded},
      "bootstrap": {"replicates": replicates, "kind": "percentile", "seed": config.seed},
  }
  result = _json_ready(result)
  (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
  (out_dir / "attributions.json").write_text(json.dumps(_json_ready(attributions), indent=1))
  report.write(out_dir, result, attributions, scores, ev.split)
  print(f"evaluate: report in {out_dir}", flush=True)
  return result


def _paired(ids_a, y, pa, ids_b, pb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labels, a's scores, b's scores) of the patients both have, matched by id."""
  row_b = {patient: k for k, patient in enumerate(ids_b)}
  pick_a = [k for k, patient in enumerate(ids_a) if patient in row_b]
  pick_b = [row_b[ids_a[k]] for k in pick_a]
  return y[pick_a], pa[pick_a], pb[pick_b]


def _compare(claim: str, phase: str, a: str, b: str, ids_a, ids_b, y, pa, pb, strict: bool,
             replicates: int, seed: int) -> dict[str, Any]:
  y, pa, pb = _paired(ids_a, y, pa, ids_b, pb)
  difference = statistics.paired_difference(y, pa, pb, replicates=replicates, seed=seed)
  value = difference.value
  return {"claim": claim, "phase": phase, "a": a, "b": b, "n": int(len(y)),
          "auroc_a": statistics.auroc(y, pa), "auroc_b": statistics.auroc(y, pb),
          "difference": difference.as_dict(),
          "p_value": statistics.delong_test(y, pa, pb).p_value,
          "holds": bool(np.isfinite(value) and (value > 0 if strict else value >= 0))}


def paper_shape(scores, split: str, phases: tuple[str, ...], by_model: dict[str, str],
                has_mrp: bool, replicates: int, seed: int) -> list[dict[str, Any]]:
  """The paper's result as claims checked on ``split``, each on the patients both sides share.

  Per phase: iMRrhpc above rhpc, and MRP at least as good as iMRrhpc, iMGrhpc and rhpc; across
  phases: iMRrhpc at Post-NAT at least as good as at Pre-NAT (same patients, their Pre-NAT and
  Post-NAT predictions). Each claim carries both AUROCs, their difference with a paired
  bootstrap 95% CI, the DeLong p and ``holds`` (the point estimate, as the paper reports it;
  the CI says how sure that is). Claims whose models were not evaluated are left out.
  """
  rhpc, img, imr = (by_model.get(m) for m in ("rhpc", "iMGrhpc", "iMRrhpc"))
  pairs = [(imr, rhpc, True)]
  if has_mrp:
    pairs += [("MRP", imr, False), ("MRP", img, False), ("MRP", rhpc, False)]
  claims = []
  for phase in phases:
    for a, b, strict in pairs:
      if (a, split, phase) in scores and (b, split, phase) in scores:
        ids_a, y, pa = scores[(a, split, phase)]
        ids_b, _, pb = scores[(b, split, phase)]
        claims.append(_compare(f"{a} {'>' if strict else '>='} {b}", phase, a, b, ids_a,
                               ids_b, y, pa, pb, strict, replicates, seed))
  if all((imr, split, phase) in scores for phase in ("pre", "post")):
    ids_post, y, p_post = scores[(imr, split, "post")]
    ids_pre, _, p_pre = scores[(imr, split, "pre")]
    claims.append(_compare(f"{imr} Post-NAT >= Pre-NAT", "post vs pre", f"{imr} post",
                           f"{imr} pre", ids_post, ids_pre, y, p_post, p_pre, False,
                           replicates, seed))
  return claims


def _cohort_labels(scores, splits, phase, cohort) -> np.ndarray:
  label_of = {}
  for (label, split, ph), (ids, y, _) in scores.items():
    if ph == phase and split in splits:
      label_of.update(zip(ids.tolist(), y.tolist()))
  return np.asarray([label_of[i] for i in cohort])


def _write_predictions(path: Path, scores, patients) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["patient_id", "split", "phase", "model", "probability", "label",
                     *SUBGROUP_VARIABLES])
    for (label, split, phase), (ids, y, p) in sorted(scores.items()):
      for i, yi, pi in zip(ids, y, p):
        info = patients.get(i, {})
        writer.writerow([i, split, phase, label, f"{pi:.6f}", int(yi),
                         *[("" if info.get(v) is None else info.get(v))
                           for v in SUBGROUP_VARIABLES]])


def _attributions(loaded, records_dir, ev, weights, by_model) -> dict[str, Any]:
  """Integrated Gradients on the first explain_cases patients of the reported split."""
  from mrp_jax.evaluation import explain
  spec = pipeline.batch_spec(records_dir)
  cases = []
  for path in pipeline.split_paths(records_dir, ev.split):
    for _, data in tfrecord.iter_records(path):
      record = records.decode(data)
      if batching.evaluates(record, ev.explain_phase):
        cases.append(batching.eval_example(record, ev.explain_phase))
      if len(cases) >= ev.explain_cases:
        break
    if len(cases) >= ev.explain_cases:
      break
  per_model = {}
  for run_ in loaded:
    variables = {"params": jax.device_get(run_.state.params),
                 "batch_stats": jax.device_get(run_.state.batch_stats)}
    chunks = []
    for start in range(0, len(cases), 8):
      batch = batching.collate(cases[start:start + 8], run_.model_name, spec)
      # Probabilities, not logits: MRP averages probabilities, and IG is linear in the
      # function, so W1 * IG(iMGrhpc) + W2 * IG(iMRrhpc) is exactly MRP's attribution.
      chunks.append(explain.model_attributions(run_.model, variables, batch,
                                               target="probability", steps=ev.explain_steps))
    per_model[run_.label] = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  if weights is not None:
    per_model["MRP"] = explain.combine_attributions(
        {"mg": per_model[by_model["iMGrhpc"]], "mr": per_model[by_model["iMRrhpc"]]},
        {"mg": weights.w_mg, "mr": weights.w_mr})
  return {"phase": ev.explain_phase, "cases": len(cases),
          "ranked": {label: explain.rank_attributions(values)
                     for label, values in per_model.items()},
          "completeness": {label: {"mean_abs_delta": float(np.mean(np.abs(v["delta"]))),
                                   "mean_abs_output_difference": float(
                                       np.mean(np.abs(v["output_difference"])))}
                           for label, v in per_model.items() if "delta" in v}}

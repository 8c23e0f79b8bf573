"""The evaluate job on tiny trained runs: predictions, calibration, MRP, statistics, the
cohort, explanations and the report files."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from configs import evaluate as evaluate_config
from input_pipeline import encoding, schema
from mrp_jax import configuration
from mrp_jax.evaluation import (
    calibration,
    claims,
    cohort,
    ensemble,
    evaluate,
    evidence,
    scores,
    statistics,
)
from mrp_jax.evaluation.readers import READERS_MEAN
from mrp_jax.evaluation.scores import ORACLE_RULE, Bootstrap, Scores

PHASES = ("pre", "mid", "post")
MODELS = ("rhpc", "iMGrhpc", "iMRrhpc", "MRP")


@pytest.fixture(scope="module")
def report(trained_runs, training_records, tmp_path_factory):
  """The evaluate job with readers and an ablation label, its phases in an order that does not
  start with Pre-NAT (that once raised KeyError where Table 2's labels were looked up)."""
  workdir = tmp_path_factory.mktemp("evaluation")
  # Readers: two readers who rated some test patients at Pre-NAT.
  readers = workdir / "readers.csv"
  config = evaluate_config.get_config()
  config.data.records = str(training_records)
  # An ablation-style label listed first: reported beside the others, never used by MRP. (It
  # reuses the iMRrhpc run: the reporting is under test here, not the ablation's training.)
  config.evaluate.runs = ",".join(
      [f"iMRrhpc ablation={trained_runs['iMRrhpc']}"]
      + [f"{label}={path}" for label, path in trained_runs.items()])
  config.evaluate.split = "validation"  # the tiny cohort has no test split
  config.evaluate.fit_split = "validation"
  config.evaluate.phases = ("mid", "post", "pre")
  config.evaluate.bootstrap_replicates = 100
  config.evaluate.explain_cases = 6  # every validation patient, some without a mammogram
  config.evaluate.explain_steps = 4
  config.evaluate.batch_size = 4
  ids = [row["patient_id"] for row in _first_run_predictions(config, trained_runs)]
  with open(readers, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["case", "phase", "reader", "probability"])
    rng = np.random.default_rng(0)
    for reader in ("A", "B"):
      for case in ids:
        writer.writerow([case, "Pre-NAT", reader, f"{rng.random():.2f}"])
  config.evaluate.readers = str(readers)
  configuration.validate(config, evaluate.CONFIG_CHECKS)
  result = evaluate.run(config, workdir)
  return workdir / "report", result, training_records


def _first_run_predictions(config, trained_runs):
  from input_pipeline import records
  from input_pipeline.feed import pipeline
  from input_pipeline.records import tfrecord
  out = []
  for path in pipeline.split_paths(config.data.records, "validation"):
    for _, data in tfrecord.iter_records(path):
      out.append({"patient_id": records.decode(data).patient_id})
  return out


def test_metrics_json_has_every_model_phase_and_metric(report):
  folder, result, records = report
  metrics = json.loads((folder / "metrics.json").read_text())
  for model in MODELS:
    for phase in PHASES:
      entry = metrics["models"][model][phase]
      assert entry["n"] > 0
      for metric in ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv", "brier"):
        assert set(entry[metric]) >= {"value", "ci_low", "ci_high"}, (model, phase, metric)
      if entry["auroc"]["value"] is not None and entry["auroc"]["ci_low"] is not None:
        assert entry["auroc"]["ci_low"] <= entry["auroc"]["value"] <= entry["auroc"]["ci_high"]
  assert metrics["models"]["Reader A"]["pre"]["n"] > 0
  assert metrics["models"]["iMRrhpc ablation"]["post"]["n"] == metrics["models"]["iMRrhpc"][
      "post"]["n"]
  pairs = {(d["a"], d["b"]): d for d in metrics["delong"]["pre"]}
  assert ("iMRrhpc", "MRP") in pairs and ("MRP", "Reader A") in pairs
  same = pairs.get(("iMRrhpc ablation", "iMRrhpc")) or pairs[("iMRrhpc", "iMRrhpc ablation")]
  assert same["p_value"] == 1.0  # identical predictions: equal AUROCs, zero variance
  assert metrics["decision_curves"]["pre"]["direction"] == "therapy"
  assert metrics["decision_curves"]["post"]["direction"] == "surgery"
  curve = metrics["decision_curves"]["post"]["MRP"]
  assert len(curve["net_benefit"]) == len(curve["thresholds"]) == 60
  assert set(metrics["thresholds"]["MRP"]) == set(PHASES)
  assert {"molecular_subtype", "mutation"} <= set(metrics["subgroups"]["by_phase"]["pre"])
  assert "brca1" not in metrics["subgroups"]["by_phase"]["pre"]
  assert {"molecular_subtype", "density", "density_group"} <= set(
      metrics["odds_ratios"]["by_variable"])
  # Eq. (1) beside dcurves' quantity, at the tabulated thresholds, with CIs.
  row = metrics["decision_thresholds"]["pre"]["MRP"][0]
  assert row["threshold"] == pytest.approx(0.1)
  assert {"value", "ci_low", "ci_high"} <= set(row["net_reduction_in_interventions_per_1000"])
  assert "net_interventions_avoided_per_1000" in row
  assert len(curve["net_reduction_in_interventions"]) == 60
  # Calibration curves per model (not readers) and phase; Brier before calibration for runs
  # and, with the default 'model' inputs, for MRP's own output; none for readers.
  assert set(metrics["calibration_curves"]["pre"]) == {"iMRrhpc ablation", *MODELS,
                                                        *metrics["oracle"]}
  assert "brier_uncalibrated" in metrics["models"]["rhpc"]["pre"]
  assert "brier_uncalibrated" in metrics["models"]["MRP"]["pre"]
  assert "brier_uncalibrated" not in metrics["models"]["Reader A"]["pre"]


def _predictions(folder):
  return list(csv.DictReader(open(folder / "predictions.csv")))


def test_mrp_mixes_the_models_own_probabilities_and_is_calibrated_after(report):
  """The default ('model', the paper's): MRP's own output is W1 F1 + W2 F2 of the models' own
  probabilities, and its reported probability is that output through MRP's Platt map."""
  folder, result, records = report
  weights = ensemble.EnsembleWeights.load(folder / "mrp_ensemble.json")
  assert weights.inputs == "model" and result["ensemble"]["inputs"] == "model"
  assert weights.w_mg + weights.w_mr == pytest.approx(1.0)
  maps = calibration.load(folder / "calibration.json")["MRP"]
  rows = _predictions(folder)
  own = {(r["model"], r["phase"], r["patient_id"]): float(r["uncalibrated_probability"])
         for r in rows if r["uncalibrated_probability"]}  # readers and oracles have none
  table = cohort.patient_table(records)
  checked = 0
  for r in rows:
    if r["model"] != "MRP":
      continue
    key = (r["phase"], r["patient_id"])
    p_mg, p_mr = own[("iMGrhpc", *key)], own[("iMRrhpc", *key)]
    # Every tiny patient has an MRI: with a mammogram the weighted mix, else iMRrhpc's. The
    # CSV's six decimals: each probability within 5e-7 of its value, so the mix and MRP's own
    # output within 1e-6 of each other (plus float64 rounding).
    with_mg = "mg" in table[r["patient_id"]]["images"]
    expected = weights.w_mg * p_mg + weights.w_mr * p_mr if with_mg else p_mr
    y = float(r["uncalibrated_probability"])
    assert y == pytest.approx(expected, abs=1.5e-6)
    # Through the map: a change dy of y moves the probability p by a p (1 - p) dy / (y (1 - y)).
    m, p = maps[r["phase"]], float(r["probability"])
    bound = m.slope * p * (1 - p) * 6e-7 / (y * (1 - y)) + 5e-7
    assert p == pytest.approx(float(m(np.log(y / (1 - y)))), abs=bound)
    checked += 1
  assert checked


def test_calibration_is_saved_and_leaves_every_auroc_unchanged(report):
  folder, result, records = report
  maps = calibration.load(folder / "calibration.json")
  assert set(maps) == {"iMRrhpc ablation", "rhpc", "iMGrhpc", "iMRrhpc", "MRP"}
  assert all(set(by_phase) == set(PHASES) for by_phase in maps.values())
  metrics = json.loads((folder / "metrics.json").read_text())
  rows = [r for r in _predictions(folder) if r["reported"] == "1" and r["model"] in maps]
  for model in maps:
    for phase in PHASES:
      mine = [r for r in rows if r["model"] == model and r["phase"] == phase]
      y = np.asarray([int(r["label"]) for r in mine])
      raw = np.asarray([float(r["uncalibrated_probability"]) for r in mine])
      assert len(set(raw)) == len(raw)  # distinct, so the order is the logits' order
      # The reported AUROC is that of the model's own probabilities.
      assert metrics["models"][model][phase]["auroc"]["value"] == statistics.auroc(y, raw)
      assert metrics["models"][model][phase]["n"] == len(mine)


def test_predictions_csv_and_report_files(report):
  folder, _, _ = report
  rows = list(csv.DictReader(open(folder / "predictions.csv")))
  assert {r["model"] for r in rows} >= set(MODELS)
  assert {"patient_id", "split", "phase", "probability", "label", "molecular_subtype"} <= set(
      rows[0])
  assert all(r["patient_id"].startswith("P") and len(r["patient_id"]) == 13 for r in rows)
  for phase in PHASES:
    for name in (f"roc_{phase}.png", f"pr_{phase}.png", f"decision_curve_{phase}.png",
                 f"calibration_{phase}.png"):
      assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  text = (folder / "report.md").read_text()
  assert "| MRP |" in text and "Post-NAT" in text and "DeLong" in text
  assert "Eq. (1)" in text and "net interventions avoided (dcurves" in text
  assert "## Table 2" in text and "## Calibration" in text and "| Readers (mean) |" in text
  # The tiny validation split has no complete pCR patient: the report says which cohort.
  assert "cohort **per phase" in text and "no complete patient of each label" in text
  assert (folder / "attributions.png").exists()


def test_attributions_explain_pre_nat_against_the_reference_patient(report):
  folder, result, records = report
  attributions = json.loads((folder / "attributions.json").read_text())
  assert attributions["phase"] == "pre" and attributions["ranking"] == "signed"
  assert attributions["cases"] == 6  # explain_cases, however many shards the split has
  baseline = attributions["baseline"]
  assert baseline["reference_split"] == "train" and baseline["values"]["sex"] == "female"
  for label, ranked in attributions["ranked"].items():
    sex = next(r for r in ranked if r["feature"] == "Sex")
    # Every tiny patient is a woman, as the reference: sex explains nothing, ranks low.
    assert sex["value"] == 0.0 and sex["rank"] > len(ranked) / 2, label
    values = [r["value"] for r in ranked]
    assert values == sorted(values, reverse=True)  # the figure's order
    assert sum(abs(v) for v in values) == pytest.approx(1.0)  # normalised across attributes
  assert {r["feature"] for r in attributions["ranked"]["MRP"]} >= {"Molecular subtype", "MRI",
                                                                    "MG"}
  # MRP's completeness is checked against the MRP probability the report states. Its cases
  # include patients without a mammogram (MRP = iMRrhpc there): had the attribution mixed in
  # iMGrhpc's, its error would exceed what the members' own quadrature errors add up to.
  completeness = attributions["completeness"]
  members = max(completeness[m]["max_abs_delta"] + completeness[m]["max_abs_output_vs_reported"]
                for m in ("iMGrhpc", "iMRrhpc"))
  assert completeness["MRP"]["max_abs_delta"] <= members + 1e-6
  table = cohort.patient_table(records)
  assert any("mg" not in row["images"] for row in table.values()
             if row["split"] == "validation")
  saved = json.loads((folder / "attribution_baseline.json").read_text())
  np.testing.assert_array_equal(  # what `predict` explains against
      saved["rhpc_inputs"], encoding.model_inputs(cohort.reference_patient(table))[0])


def test_odds_ratios_use_every_split_and_density_is_also_dense_vs_non_dense(report):
  folder, result, records = report
  odds = json.loads((folder / "metrics.json").read_text())["odds_ratios"]
  table = cohort.patient_table(records)
  labelled = [row for row in table.values() if row["label"] in (0, 1)]
  assert odds["splits"] == ["train", "validation"] and odds["n"] == len(labelled)
  subtype = odds["by_variable"]["molecular_subtype"]
  for name, row in subtype.items():
    members = [r for r in labelled if (r["molecular_subtype"] or "Unknown") == name]
    assert (row["n"], row["n_pcr"]) == (len(members), sum(r["label"] for r in members))
  density = odds["by_variable"]["density_group"]
  assert set(density) <= {cohort.DENSE, cohort.NON_DENSE, "Unknown"}
  assert all(row["reference"] == cohort.NON_DENSE for row in density.values())


def test_readers_mean_row_is_the_mean_of_the_readers(report):
  folder, _, _ = report
  rows = [r for r in _predictions(folder) if r["phase"] == "pre"]
  by = {(r["model"], r["patient_id"]): float(r["probability"]) for r in rows}
  mean = {pid: p for (model, pid), p in by.items() if model == READERS_MEAN}
  assert mean
  for pid, p in mean.items():
    assert p == pytest.approx((by[("Reader A", pid)] + by[("Reader B", pid)]) / 2, abs=1e-6)
  metrics = json.loads((folder / "metrics.json").read_text())
  assert metrics["readers"] == ["Reader A", "Reader B", READERS_MEAN]
  assert set(metrics["models"][READERS_MEAN]) == {"pre"}  # readers read Pre-NAT only


def test_complete_cohort_is_the_same_patients_at_every_phase():
  def row(split, label, images):
    return {"split": split, "label": label, "images": frozenset(images)}
  table = {"P1": row("test", 1, ("mg", "pre", "mid", "post")),
           "P2": row("test", 0, ("mg", "pre", "mid", "post")),
           "P3": row("test", 0, ("pre", "mid", "post")),  # no mammogram
           "P4": row("test", 1, ("mg", "pre", "post")),  # no Mid-NAT MRI
           "P5": row("validation", 1, ("mg", "pre", "mid", "post")),
           "P6": row("test", -1, ("mg", "pre", "mid", "post"))}  # unlabelled
  reported_cohort = cohort.reported_cohort(table, "test", "complete")
  assert reported_cohort.kind == "complete" and reported_cohort.patients == {"P1", "P2"}
  assert "2 patients with mammogram + Pre-NAT MRI + Mid-NAT MRI" in reported_cohort.describe()
  # Each phase's population as inference gives it (Mid: patients with Mid MRI).
  ids = {"pre": ["P1", "P2", "P3", "P4"], "mid": ["P1", "P2", "P3"], "post": ["P1", "P2", "P3",
                                                                                "P4"]}
  every = {scores.Key(model, "test", phase): Scores(
      np.asarray(ids[phase]), np.asarray([table[i]["label"] for i in ids[phase]]),
      np.linspace(0, 1, len(ids[phase]))) for model in ("rhpc", "MRP") for phase in PHASES}
  reported = scores.reported_scores(every, "test", reported_cohort)
  assert {tuple(v.ids) for v in reported.values()} == {("P1", "P2")}
  per_phase = scores.reported_scores(
      every, "test", cohort.reported_cohort(table, "test", "per_phase"))
  assert [len(per_phase[("rhpc", p)]) for p in PHASES] == [4, 3, 4]
  # Without a complete patient of each label the per-phase populations are kept, and said so.
  del table["P1"]
  fallback = cohort.reported_cohort(table, "test", "complete")
  assert fallback.kind == "per_phase" and "no complete patient" in fallback.note


def test_mutation_groups_every_gene_and_density_its_two_classes():
  def derived(**values):
    base = {name: None for name in schema.VARIABLE_NAMES}
    return cohort._derived({**base, **values})
  assert derived(chek2="mutated", brca1="wild type")["mutation"] == "carrier"
  assert derived(tp53="mutated")["mutation"] == "carrier"
  assert derived(brca2="mutated")["mutation"] == "carrier"
  assert derived(brca1="wild type")["mutation"] == "none"
  assert derived()["mutation"] is None  # no gene tested: Unknown
  assert derived(density="C")["density_group"] == cohort.DENSE
  assert derived(density="B")["density_group"] == cohort.NON_DENSE
  assert derived(age=50.0, therapy=["chemotherapy", "immunotherapy"]) == {
      "age_group": "<=50", "mutation": None, "density_group": None,
      "therapy": "chemotherapy+immunotherapy"}


def test_paper_claims_match_the_metrics(report):
  folder, _, _ = report
  metrics = json.loads((folder / "metrics.json").read_text())
  paper = metrics["paper_claims"]
  checked = paper["claims"]
  assert len(checked) == 3 * 5 + 1  # per phase: 5 strict comparisons; Post >= Pre
  assert paper["total"] == len(checked)
  assert paper["held"] == sum(c["holds"] for c in checked)
  assert paper["held_with_ci"] == sum(c["ci_above_zero"] for c in checked)
  for claim in checked:
    if claim["phase"] in PHASES:
      assert claim["auroc_a"] == pytest.approx(
          metrics["models"][claim["a"]][claim["phase"]]["auroc"]["value"])
    difference = claim["difference"]
    assert difference["value"] == pytest.approx(claim["auroc_a"] - claim["auroc_b"])
    if claim.get("degenerate"):
      assert not claim["holds"]
    elif ">=" in claim["claim"]:
      assert claim["holds"] == (difference["value"] >= 0)
    else:
      assert claim["holds"] == (difference["value"] > 0)
    assert claim["ci_above_zero"] == (difference["ci_low"] > 0)
  for phase in PHASES:
    entry = paper["ordering"][phase]
    assert entry["order"] == sorted(entry["order"], key=lambda m: entry["auroc"][m])
  assert "The paper's result" in (folder / "report.md").read_text()
  # No paths: the same runs give the same bytes wherever they live.
  assert all(set(run) == {"model", "step"} for run in metrics["runs"].values())
  assert str(folder.parent) not in (folder / "metrics.json").read_text()


def _scores(n=120, seed=0):
  rng = np.random.default_rng(seed)
  ids = np.array([f"P{k:03d}" for k in range(n)])
  y = rng.integers(0, 2, n)
  return rng, ids, y


def test_paper_claims_pair_patients_by_id():
  rng, ids, y = _scores()
  n = len(ids)
  good = y + rng.normal(0, 0.6, n)  # AUROC ~0.87
  weak = y + rng.normal(0, 2.0, n)  # AUROC ~0.64
  post = rng.permutation(n)[:90]  # a subset of the patients, in another order
  reported = {("rhpc", "pre"): Scores(ids, y, weak),
              ("iMRrhpc", "pre"): Scores(ids, y, weak + 0.01 * good),
              ("iMRrhpc", "post"): Scores(ids[post], y[post], good[post])}
  paper = claims.paper_claims(reported, ("pre", "post"),
                              {"rhpc": "rhpc", "iMRrhpc": "iMRrhpc"}, None, Bootstrap(200, 0))
  by_claim = {c["claim"]: c for c in paper["claims"]}
  assert set(by_claim) == {"iMRrhpc > rhpc", "iMRrhpc Post-NAT >= Pre-NAT"}
  later = by_claim["iMRrhpc Post-NAT >= Pre-NAT"]
  assert later["n"] == 90 and later["holds"] and later["ci_above_zero"]
  pre_of_post = (weak + 0.01 * good)[post]
  assert later["auroc_b"] == pytest.approx(statistics.auroc(y[post], pre_of_post))
  # Swapping the roles turns the claim false.
  reported[("iMRrhpc", "post")] = Scores(ids[post], y[post], -good[post])
  flipped = claims.paper_claims(reported, ("pre", "post"),
                                {"rhpc": "rhpc", "iMRrhpc": "iMRrhpc"}, None, Bootstrap(200, 0))
  assert not flipped["claims"][-1]["holds"]


def test_mrp_claims_cannot_hold_by_construction():
  """MRP with one part at weight 0 is the other part: strict claims against it fail on their
  own (difference exactly 0), and every MRP-versus-part claim is marked degenerate."""
  rng, ids, y = _scores(seed=1)
  n = len(ids)
  rhpc = y + rng.normal(0, 2.0, n)
  img = y + rng.normal(0, 1.5, n)
  imr = y + rng.normal(0, 1.0, n)
  reported = {(m, "pre"): Scores(ids, y, p) for m, p in
              (("rhpc", rhpc), ("iMGrhpc", img), ("iMRrhpc", imr), ("MRP", imr))}
  members = {"rhpc": "rhpc", "iMGrhpc": "iMGrhpc", "iMRrhpc": "iMRrhpc"}
  weights = ensemble.EnsembleWeights(w_mg=0.0, w_mr=1.0, objective="test", grid_step=0.05,
                                     validation_auroc=0.5)
  paper = claims.paper_claims(reported, ("pre",), members, weights, Bootstrap(200, 0))
  by_claim = {c["claim"]: c for c in paper["claims"]}
  assert "weight 0" in paper["degenerate_weights"]
  assert by_claim["MRP > iMRrhpc"]["difference"]["value"] == 0  # MRP is iMRrhpc
  for part in ("iMGrhpc", "iMRrhpc"):
    assert by_claim[f"MRP > {part}"]["degenerate"] and not by_claim[f"MRP > {part}"]["holds"]
  assert by_claim["iMRrhpc > rhpc"]["holds"]  # the others are judged as usual
  assert not paper["ordering"]["pre"]["paper"]  # MRP ties iMRrhpc: not the paper's order
  # With both parts weighted, the same claims are judged on their values.
  weights = ensemble.EnsembleWeights(w_mg=0.4, w_mr=0.6, objective="test", grid_step=0.05,
                                     validation_auroc=0.5)
  reported[("MRP", "pre")] = Scores(ids, y, 0.4 * img + 0.6 * imr + 0.5 * y)
  paper = claims.paper_claims(reported, ("pre",), members, weights, Bootstrap(200, 0))
  assert paper["degenerate_weights"] is None and paper["held"] == paper["total"] == 5
  assert paper["ordering"]["pre"]["order"] == ["rhpc", "iMGrhpc", "iMRrhpc", "MRP"]
  assert paper["ordering"]["pre"]["paper"]


def test_image_encoders_are_scored_alone_against_what_the_image_tells():
  """Each fused model's image-only estimate is scored on the reported patients who have the
  image, and, given oracle rows, against the log-odds the oracle adds to the table's, paired by
  patient whatever the order of either side."""
  from mrp_jax.core import inference
  rng, ids, y = _scores(seed=2)
  n = len(ids)
  table = rng.normal(0, 1, n)  # the oracle rhpc's log-odds
  image_truth = 1.5 * y + rng.normal(0, 1, n)  # what the image adds, in truth
  found = 0.5 * image_truth + rng.normal(0, 1.5, n)  # an encoder that finds part of it
  present = rng.random(n) < 0.8
  sigmoid = lambda v: 1 / (1 + np.exp(-v))

  def run_predictions(image_probability):
    return inference.Predictions(patient_ids=ids, logit=np.zeros(n), probability=np.zeros(n),
                                 label=y, image_probability=image_probability,
                                 image_present=present)

  predictions = {("rhpc", "test", "pre"): dataclasses.replace(
      run_predictions(None), image_present=None),
                 ("iMGrhpc", "test", "pre"): run_predictions(sigmoid(found))}
  order = rng.permutation(n)  # the oracle's rows in another order
  reported = {("oracle rhpc", "pre"): Scores(ids[order], y[order], sigmoid(table[order])),
              ("oracle iMGrhpc", "pre"): Scores(ids, y, sigmoid(table + image_truth))}

  def scored(reported, members):
    return scores.Scored(
        split="test", fit_split="validation", phases=("pre",), patients={},
        cohort=cohort.Cohort(kind="per_phase", patients=None, images=()),
        predictions=predictions, calibration={}, scores={}, reported=reported,
        members=members, weights=None, model_labels=list(members), reader_labels=[],
        bootstrap=Bootstrap(200, 0))

  rows = evidence.image_evidence(scored(reported, {"rhpc": "rhpc", "iMGrhpc": "iMGrhpc"}))["pre"]
  assert len(rows) == 1  # rhpc has no image
  row = rows[0]
  assert row["model"] == "iMGrhpc" and row["image"] == "mammogram"
  assert row["n"] == present.sum()
  assert row["auroc"] == pytest.approx(statistics.auroc(y[present], found[present]))
  assert row["auroc_oracle_evidence"] == pytest.approx(
      statistics.auroc(y[present], image_truth[present]), abs=1e-12)
  assert row["gap"]["value"] == pytest.approx(row["auroc"] - row["auroc_oracle_evidence"])
  assert row["gap"]["ci_high"] < 0  # the encoder finds less than the image holds
  # Real data (no oracle rows): the image-only AUROC alone.
  rows = evidence.image_evidence(scored({}, {"iMGrhpc": "iMGrhpc"}))["pre"]
  assert "auroc_oracle_evidence" not in rows[0] and rows[0]["n"] == present.sum()


def test_reference_patient_is_the_training_splits_most_common_values():
  n = len(schema.VARIABLES)
  j = {name: schema.VARIABLE_NAMES.index(name) for name in ("sex", "ct", "therapy", "age",
                                                             "brca1", "laterality")}

  def row(split, label, **codes):
    c = np.full(n, schema.UNKNOWN, np.int32)
    v = np.full(n, np.nan, np.float32)
    for name, code in codes.items():
      if name == "age":
        c[j["age"]], v[j["age"]] = 0, code
      else:
        c[j[name]] = code
    return {"split": split, "label": label, "codes": c, "values": v}
  table = {"a": row("train", 1, sex=0, ct=2, therapy=0b101, age=40.0, laterality=1),
           "b": row("train", 0, sex=0, ct=3, therapy=0b101, age=50.0, laterality=0),
           "c": row("train", 0, sex=1, ct=3, therapy=0b001, age=70.0),
           "d": row("validation", 0, sex=1, ct=2, therapy=0b001, age=20.0),
           "e": row("train", -1, sex=1, ct=2, age=99.0)}  # unlabelled: not counted
  values = cohort.reference_patient(table).decode(0)
  assert values["sex"] == "female" and values["ct"] == "3"  # codes 2, 3, 3: the 4th category
  assert values["therapy"] == ["chemotherapy", "immunotherapy"] and values["age"] == 50.0
  assert values["laterality"] == "left"  # a tie (one each): the first declared category
  assert values["brca1"] is None  # never known among them: stays Unknown
  with pytest.raises(ValueError, match="no labelled test"):
    cohort.reference_patient(table, "test")


def test_a_synthetic_cohort_is_reported_against_its_oracle(report, training_records):
  """Records made from a synthetic export carry the generator's truth: evaluate adds the four
  oracle rows (the exact posteriors, scored like models) and each model's gap to its oracle;
  a trained model cannot beat its Bayes-optimal counterpart by more than sampling noise."""
  from input_pipeline.synthetic import oracle
  folder, _, _ = report
  metrics = json.loads((folder / "metrics.json").read_text())
  truth = oracle.read(training_records)
  assert metrics["oracle"] == [f"oracle {m}" for m in oracle.MODELS] + [ORACLE_RULE]
  assert 0 <= metrics["oracle_rule_weights"]["w_mg"] <= 1
  rows = list(csv.DictReader(open(folder / "predictions.csv")))
  for row in rows:
    if row["model"] == ORACLE_RULE:  # MRP's rule on the members' oracles: between the two
      members = [truth[row["patient_id"]][m][row["phase"]] for m in ("iMGrhpc", "iMRrhpc")]
      assert min(members) - 1e-6 <= float(row["probability"]) <= max(members) + 1e-6
    elif row["model"].startswith("oracle "):
      expected = truth[row["patient_id"]][row["model"].split()[1]][row["phase"]]
      assert float(row["probability"]) == pytest.approx(expected, abs=1e-6)
  for phase in PHASES:
    gaps = {(g["model"], g["oracle"]): g for g in metrics["oracle_gaps"][phase]}
    assert set(gaps) == {(m, f"oracle {m}") for m in ("rhpc", "iMGrhpc", "iMRrhpc", "MRP")} | {
        ("MRP", ORACLE_RULE)}
    for gap in gaps.values():
      assert gap["auroc_oracle"] == pytest.approx(
          metrics["models"][gap["oracle"]][phase]["auroc"]["value"])
      assert gap["gap"]["value"] == pytest.approx(gap["auroc"] - gap["auroc_oracle"])
  assert "Against the truth" in (folder / "report.md").read_text()
  for phase in PHASES:
    alone = {r["model"]: r for r in metrics["image_evidence"][phase]}
    assert set(alone) == {"iMGrhpc", "iMRrhpc"}
    for row in alone.values():
      assert 0 < row["n"] and "auroc_oracle_evidence" in row  # None: one class only
  assert "What the image encoders find alone" in (folder / "report.md").read_text()


def test_a_run_is_evaluated_only_on_records_prepared_as_its_own(tmp_path):
  """Each run is compared with the records on the image sections its model reads: an MRI run
  on records of another spacing is refused in one line naming the field and both values; the
  rhpc run, which reads no image, and the mammogram run, whose section agrees, are not."""
  import ml_collections

  from input_pipeline.geometries import GeometryMismatch
  from mrp_jax.core import runs

  def preprocessing(spacing):
    return {"mri": {"shape": [22, 22, 44], "spacing_mm": spacing, "dtype": "float16",
                    "intensity": "relative"},
            "mammogram": {"shape": [64, 32], "dtype": "uint16"}}

  def run(name, spacing):
    return runs.Run(label=name, workdir=tmp_path / name,
                    config=ml_collections.ConfigDict({"model": {"name": name}}),
                    preprocessing=preprocessing(spacing), model=None, state=None, step=0,
                    eval_step=None)

  records = tmp_path / "records"
  records.mkdir()
  (records / "manifest.json").write_text(json.dumps(preprocessing([8.0, 8.0, 8.0])))
  runs.check_records([run("rhpc", [4.0, 4.0, 4.0]), run("iMGrhpc", [4.0, 4.0, 4.0]),
                      run("iMRrhpc", [8.0, 8.0, 8.0])], records)
  with pytest.raises(GeometryMismatch) as error:
    runs.check_records([run("iMRrhpc", [4.0, 4.0, 4.0])], records)
  assert str(error.value) == (
      f"run iMRrhpc ({tmp_path / 'iMRrhpc' / 'preprocessing.json'}) vs the records "
      f"({records / 'manifest.json'}): mri.spacing_mm (4.0, 4.0, 4.0) vs (8.0, 8.0, 8.0); "
      "evaluate a run on records prepared as its own were")

"""The evaluate job on tiny trained runs: predictions, MRP, statistics and the report files."""

import csv
import json

import numpy as np
import pytest

from configs import evaluate as evaluate_config
from mrp_jax import configuration
from mrp_jax.evaluation import ensemble, evaluate

PHASES = ("pre", "mid", "post")
MODELS = ("rhpc", "iMGrhpc", "iMRrhpc", "MRP")


@pytest.fixture(scope="module")
def report(trained_runs, training_records, tmp_path_factory):
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
  config.evaluate.bootstrap_replicates = 100
  config.evaluate.explain_cases = 2
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
  configuration.validate(config)
  result = evaluate.run(config, workdir)
  return workdir / "report", result


def _first_run_predictions(config, trained_runs):
  from input_pipeline import pipeline, records, tfrecord
  out = []
  for path in pipeline.split_paths(config.data.records, "validation"):
    for _, data in tfrecord.iter_records(path):
      out.append({"patient_id": records.decode(data).patient_id})
  return out


def test_metrics_json_has_every_model_phase_and_metric(report):
  folder, result = report
  metrics = json.loads((folder / "metrics.json").read_text())
  for model in MODELS:
    for phase in PHASES:
      entry = metrics["models"][model][phase]
      assert entry["n"] > 0
      for metric in ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv"):
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
  assert "molecular_subtype" in metrics["subgroups"]["by_phase"]["pre"]
  assert "molecular_subtype" in metrics["odds_ratios"]


def test_mrp_weights_are_saved_and_used(report):
  folder, result = report
  weights = ensemble.EnsembleWeights.load(folder / "mrp_ensemble.json")
  assert weights.w_mg + weights.w_mr == pytest.approx(1.0)
  rows = list(csv.DictReader(open(folder / "predictions.csv")))
  by = {(r["model"], r["phase"], r["patient_id"]): float(r["probability"]) for r in rows}
  for (model, phase, pid), p in by.items():
    if model == "MRP":
      p_mg, p_mr = by[("iMGrhpc", phase, pid)], by[("iMRrhpc", phase, pid)]
      # Every tiny patient has an MRI; those with a mammogram get the weighted mix.
      assert p == pytest.approx(weights.w_mg * p_mg + weights.w_mr * p_mr, abs=1e-5) or \
          p == pytest.approx(p_mr, abs=1e-5)


def test_predictions_csv_and_report_files(report):
  folder, _ = report
  rows = list(csv.DictReader(open(folder / "predictions.csv")))
  assert {r["model"] for r in rows} >= set(MODELS)
  assert {"patient_id", "split", "phase", "probability", "label", "molecular_subtype"} <= set(
      rows[0])
  assert all(r["patient_id"].startswith("P") and len(r["patient_id"]) == 13 for r in rows)
  for phase in PHASES:
    for name in (f"roc_{phase}.png", f"pr_{phase}.png", f"decision_curve_{phase}.png"):
      assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  text = (folder / "report.md").read_text()
  assert "| MRP |" in text and "Post-NAT" in text and "DeLong" in text
  attributions = json.loads((folder / "attributions.json").read_text())
  assert attributions["cases"] == 2  # explain_cases, however many shards the split has
  ranked = attributions["ranked"]["MRP"]
  assert {r["feature"] for r in ranked} >= {"Molecular subtype", "MRI", "MG"}
  assert (folder / "attributions.png").exists()


def test_paper_shape_claims_match_the_metrics(report):
  folder, _ = report
  metrics = json.loads((folder / "metrics.json").read_text())
  claims = metrics["paper_shape"]
  assert len(claims) == 3 * 4 + 1  # per phase: iMR > rhpc, MRP >= each model; Post >= Pre
  for claim in claims:
    if claim["phase"] in PHASES:
      assert claim["auroc_a"] == pytest.approx(
          metrics["models"][claim["a"]][claim["phase"]]["auroc"]["value"])
    difference = claim["difference"]
    assert difference["value"] == pytest.approx(claim["auroc_a"] - claim["auroc_b"])
    assert claim["holds"] == (difference["value"] > 0 if ">=" not in claim["claim"]
                              else difference["value"] >= 0)
  assert "The paper's result" in (folder / "report.md").read_text()


def test_paper_shape_pairs_patients_by_id():
  rng = np.random.default_rng(0)
  n = 120
  ids = np.array([f"P{k:03d}" for k in range(n)])
  y = rng.integers(0, 2, n)
  good = y + rng.normal(0, 0.6, n)  # AUROC ~0.87
  weak = y + rng.normal(0, 2.0, n)  # AUROC ~0.64
  post = rng.permutation(n)[:90]  # a subset of the patients, in another order
  scores = {("rhpc", "test", "pre"): (ids, y, weak),
            ("iMRrhpc", "test", "pre"): (ids, y, weak + 0.01 * good),
            ("iMRrhpc", "test", "post"): (ids[post], y[post], good[post])}
  claims = evaluate.paper_shape(scores, "test", ("pre", "post"),
                                {"rhpc": "rhpc", "iMRrhpc": "iMRrhpc"}, False, 200, 0)
  by_claim = {c["claim"]: c for c in claims}
  assert set(by_claim) == {"iMRrhpc > rhpc", "iMRrhpc Post-NAT >= Pre-NAT"}
  later = by_claim["iMRrhpc Post-NAT >= Pre-NAT"]
  assert later["n"] == 90 and later["holds"]
  from mrp_jax.evaluation import statistics
  pre_of_post = (weak + 0.01 * good)[post]
  assert later["auroc_b"] == pytest.approx(statistics.auroc(y[post], pre_of_post))
  assert later["difference"]["ci_low"] > 0  # a large gain on 90 patients: CI above zero
  # Swapping the roles turns the claim false.
  scores[("iMRrhpc", "test", "post")] = (ids[post], y[post], -good[post])
  flipped = evaluate.paper_shape(scores, "test", ("pre", "post"),
                                 {"rhpc": "rhpc", "iMRrhpc": "iMRrhpc"}, False, 200, 0)
  assert not flipped[-1]["holds"]

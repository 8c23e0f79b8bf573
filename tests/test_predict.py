"""The predict command on synthetic patient folders: every model, MRP, phase, attributions, and
a broken patient that gets an error while the others get answers; batches that do not change a
patient's answer, and compiled programs kept between calls."""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import checkpoint_damage
import jax
import numpy as np
import pytest

from input_pipeline import encoding
from mrp_jax import predict
from mrp_jax.evaluation import calibration, ensemble


@pytest.fixture(scope="module")
def patients(training_records, tmp_path_factory):
  """Three synthetic patient folders, one with its only MRI study corrupted, and a clinical
  CSV without the label column and with one field blanked."""
  export = training_records.parent / "export"
  root = tmp_path_factory.mktemp("new_patients")
  rows = {r["patient_id"]: r for r in csv.DictReader(open(export / "clinical.csv"))}
  truth = {p["patient_id"]: p for p in json.loads(
      (export / "synthetic_truth.json").read_text())["patients"]}
  chosen = [p.name for p in sorted(export.iterdir()) if p.is_dir() and p.name in rows][:2]
  # And one with a mammogram whose row will not say the tumour side.
  chosen += [p for p, t in sorted(truth.items()) if t["mammogram"] and not t["broken"]
             and p in rows and p not in chosen][:1]
  folders = [root / name for name in chosen]
  for name, folder in zip(chosen, folders):
    shutil.copytree(export / name, folder)
  broken = root / "BROKEN"
  shutil.copytree(export / chosen[0], broken)
  for dicom in broken.rglob("*"):  # every file truncated: no readable image at all
    if dicom.is_file():
      dicom.write_bytes(b"DICM")
  clinical = root / "clinical.csv"
  headers = [h for h in rows[chosen[0]] if h != "pCR"]
  with open(clinical, "w", newline="") as f:
    writer = csv.DictWriter(f, headers, extrasaction="ignore")
    writer.writeheader()
    for name in chosen:
      writer.writerow({**rows[name], "Molecular subtype": "",
                       **({"Laterality": ""} if name == chosen[-1] else {})})
  return folders, broken, clinical


def _evaluation(folder, trained_runs, inputs=None):
  """An evaluate report folder's files: MRP weights 0.3 / 0.7 combining ``inputs`` (None: a
  file written before the choice was saved, which combined calibrated probabilities), a Platt
  map per run and phase (distinct, so that a wrong one shows; with 'model' inputs MRP's too),
  the reference patient's rhpc inputs."""
  folder.mkdir()
  weights = {"w_mg": 0.3, "w_mr": 0.7, "objective": "test", "grid_step": 0.05,
             "validation_auroc": 0.5}
  (folder / "mrp_ensemble.json").write_text(json.dumps(
      weights if inputs is None else {**weights, "inputs": inputs}))
  labels = [*trained_runs, *(["MRP"] if inputs == "model" else [])]
  maps = {label: {phase: calibration.PlattMap(0.5 + 0.1 * k, -1.0 + 0.5 * j, 10, 4)
                  for j, phase in enumerate(("pre", "mid", "post"))}
          for k, label in enumerate(labels)}
  calibration.save(folder / "calibration.json", maps, "validation")
  reference = np.zeros(encoding.INPUT_DIM, np.float32)
  for start, stop in encoding.INPUT_SLICES:
    reference[start] = 1.0  # every variable at its first category
  (folder / "attribution_baseline.json").write_text(json.dumps(
      {"rhpc_inputs": reference.tolist()}))
  return maps


def test_predict_answers_every_good_patient_and_reports_the_broken_one(
    trained_runs, patients, tmp_path):
  folders, broken, clinical = patients
  maps = _evaluation(tmp_path / "report", trained_runs)
  out = tmp_path / "answers.json"
  runs_arg = ",".join(f"{k}={v}" for k, v in trained_runs.items())
  raw_out = tmp_path / "raw.json"
  assert predict.main([*map(str, folders), "--runs", runs_arg, "--clinical", str(clinical),
                       "--out", str(raw_out)]) == 0
  raw = {a["patient"]: a for a in json.loads(raw_out.read_text())}
  code = predict.main([*map(str, folders), str(broken), "--runs", runs_arg, "--evaluation",
                       str(tmp_path / "report"), "--clinical", str(clinical), "--out", str(out),
                       "--explain_steps", "4"])
  assert code == 0
  answers = {a["patient"]: a for a in json.loads(out.read_text())}
  assert set(answers) == {f.name for f in folders} | {"BROKEN"}
  assert "error" in answers["BROKEN"] and "probability" not in answers["BROKEN"]
  for folder in folders:
    answer = answers[folder.name]
    assert "error" not in answer, answer
    assert answer["phase"] in ("pre", "mid", "post")
    assert "molecular_subtype" in answer["unknown_clinical"]  # blanked above
    probs = answer["probability"]
    assert set(probs) >= {"rhpc", "iMRrhpc", "MRP"} and answer["calibrated"]
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    # Each model's probability through its map at the patient's phase (the uncalibrated
    # answer gives the model's own probability in float32: 2^-24 relative, which moves its
    # logit by 2^-24 / (1 - p), up to ~1e-5 for p near 0.99).
    own = raw[folder.name]
    assert not own["calibrated"] and "MRP" not in own["probability"]
    for label, p in own["probability"].items():
      logit = np.log(p / (1 - p))
      assert probs[label] == pytest.approx(maps[label][answer["phase"]](logit), abs=1e-5)
    if "iMGrhpc" in probs:
      assert probs["MRP"] == pytest.approx(0.3 * probs["iMGrhpc"] + 0.7 * probs["iMRrhpc"],
                                           abs=1e-6)
    else:
      assert probs["MRP"] == pytest.approx(probs["iMRrhpc"], abs=1e-6)
    assert all(u["reason"] for u in answer["unused"])
    top = answer["top_attributions"]
    assert 0 < len(top) <= 8
    magnitudes = [abs(t["attribution"]) for t in top]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert all(np.isfinite(m) for m in magnitudes)


  # Side unknown: the stated rule still takes a mammogram, and says so.
  unknown_side = answers[folders[-1].name]
  assert unknown_side["images"]["mammogram"] is True
  assert unknown_side["warnings"][0].startswith("tumour side unknown in the clinical table: ")
  assert "iMGrhpc" in unknown_side["probability"]


def test_mrp_of_the_models_own_probabilities_is_calibrated_after(trained_runs, patients,
                                                                 tmp_path):
  """With 'model' inputs (the paper's), MRP is W1 F1 + W2 F2 of the models' own probabilities
  through MRP's own map at the patient's phase, while each model still answers calibrated."""
  folders, _, clinical = patients
  maps = _evaluation(tmp_path / "report", trained_runs, inputs="model")
  runs_arg = ",".join(f"{k}={v}" for k, v in trained_runs.items())

  def answers(*extra):
    out = tmp_path / f"answers{len(extra)}.json"
    assert predict.main([*map(str, folders), "--runs", runs_arg, "--clinical", str(clinical),
                         "--out", str(out), *extra]) == 0
    return {a["patient"]: a for a in json.loads(out.read_text())}

  own = answers()
  calibrated = answers("--evaluation", str(tmp_path / "report"), "--explain_steps", "1")
  mixed = 0
  for folder in folders:
    answer, p = calibrated[folder.name], own[folder.name]["probability"]
    phase = answer["phase"]
    # The uncalibrated answer is the model's own probability in float32 (2^-24 relative): the
    # mix moves by as little, its logit by 2^-24 / (1 - y), MRP's output by less than that
    # times its slope (0.8) / 4; abs 1e-5 bounds it for y up to ~0.99, as for each model.
    y = (0.3 * p["iMGrhpc"] + 0.7 * p["iMRrhpc"] if "iMGrhpc" in p else p["iMRrhpc"])
    mixed += "iMGrhpc" in p
    assert answer["probability"]["MRP"] == pytest.approx(
        maps["MRP"][phase](np.log(y / (1 - y))), abs=1e-5)
    for label, q in p.items():
      assert answer["probability"][label] == pytest.approx(
          maps[label][phase](np.log(q / (1 - q))), abs=1e-5)
  assert mixed  # a patient with both images was mixed


def test_predict_rejects_a_bad_runs_argument(capsys, tmp_path):
  assert predict.main([str(tmp_path), "--runs", "iMRrhpc"]) == 2
  assert "LABEL=WORKDIR" in capsys.readouterr().err


def test_patients_batched_together_get_their_answers_alone(trained_runs, training_records,
                                                          patients, tmp_path):
  """Three patients in batches of two (one full, one padded) answer exactly as each does alone
  (row 0 of a padded batch): every batch has the same shape, so they all run one program, and
  each row is computed from its own patient only (the models in eval mode)."""
  folders, _, clinical = patients
  # A patient at the Pre-NAT phase (the others are at Post-NAT): one batch mixes calibration maps.
  truth = {p["patient_id"]: p for p in json.loads(
      (training_records.parent / "export" / "synthetic_truth.json").read_text())["patients"]}
  pre_only = tmp_path / "PRE_ONLY"
  follow_ups = {pathlib.Path(study["folder"]).name for study in truth[folders[0].name]["studies"]
                if study["phase"] != "pre"}
  shutil.copytree(folders[0], pre_only, ignore=lambda _, names: follow_ups & set(names))
  group = [folders[0], pre_only, folders[-1]]  # the last one has a mammogram
  _evaluation(tmp_path / "report", trained_runs)
  runs_arg = ",".join(f"{k}={v}" for k, v in trained_runs.items())

  def answers(group, out):
    cache_before = jax.config.jax_compilation_cache_dir
    assert predict.main([*map(str, group), "--runs", runs_arg, "--evaluation",
                         str(tmp_path / "report"), "--clinical", str(clinical), "--out",
                         str(out), "--explain_steps", "1", "--batch_size", "2",
                         "--compilation_cache", str(tmp_path / "cache")]) == 0
    assert jax.config.jax_compilation_cache_dir == cache_before  # the caller's setting is back
    return {a["patient"]: a for a in json.loads(out.read_text())}

  together = answers(group, tmp_path / "together.json")
  assert together["PRE_ONLY"]["phase"] == "pre" and together[folders[0].name]["phase"] != "pre"
  assert together[folders[-1].name]["images"]["mammogram"]
  assert all("error" not in a and "top_attributions" in a for a in together.values())
  for folder in group:
    alone = answers([folder], tmp_path / f"{folder.name}.json")
    assert alone[folder.name] == together[folder.name]


def test_a_second_call_compiles_nothing(trained_runs, patients, tmp_path):
  """Two processes, one cache folder: the first writes every program it compiles (predict keeps
  them whatever their compile time or size), so a second process that compiled anything would
  add an entry. It adds none and answers the same bytes."""
  folders, _, clinical = patients
  _evaluation(tmp_path / "report", trained_runs)
  cache = tmp_path / "cache"
  root = pathlib.Path(__file__).resolve().parents[1]

  def call(out):
    result = subprocess.run(
        [sys.executable, "-m", "mrp_jax.predict", *map(str, folders[:2]),
         "--runs", ",".join(f"{k}={v}" for k, v in trained_runs.items()),
         "--evaluation", str(tmp_path / "report"), "--clinical", str(clinical),
         "--explain_steps", "1", "--compilation_cache", str(cache), "--out", str(out)],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted(path.name for path in cache.iterdir())

  first = call(tmp_path / "first.json")
  assert len(first) >= 6  # at least the eval step and the attributions of each of three models
  assert call(tmp_path / "second.json") == first
  assert (tmp_path / "second.json").read_bytes() == (tmp_path / "first.json").read_bytes()


def test_row_for_keeps_the_values_of_a_json_and_names_the_rest():
  one = {"Age": 48, "Weight": "70.2", "Laterality": None, "Molecular subtype": {"value": "luma"},
         "BRCA1": ["wt"]}
  row = predict._row_for(one, "PATIENT_A", single_patient=True)
  assert row.values == {"Age": 48, "Weight": "70.2", "Laterality": None} and row.found
  assert row.left_out == ({"field": "Molecular subtype", "reason": "a JSON object, not a value"},
                          {"field": "BRCA1", "reason": "a JSON list, not a value"})
  keyed = {"PATIENT_A": one, "PATIENT_B": {"Age": 50}}
  assert predict._row_for(keyed, "PATIENT_A", single_patient=False) == row
  assert predict._row_for(keyed, "PATIENT_C", single_patient=True) == predict.ClinicalRow(
      {}, found=False)
  assert predict._row_for({}, "PATIENT_C", single_patient=True).found  # no clinical data given


def test_a_single_patient_json_with_an_object_keeps_its_other_fields(trained_runs, patients,
                                                                     tmp_path):
  """One patient's JSON with an object among its values: the other values are used exactly as
  without the object field (same probability), the field is named, and it stays unknown."""
  folders, _, _ = patients
  values = {"Age": 48, "Weight": "70.2", "Molecular subtype": "luminal A", "BRCA1": "wt"}
  runs_arg = f"rhpc={trained_runs['rhpc']}"

  def answer(clinical):
    (tmp_path / "clinical.json").write_text(json.dumps(clinical))
    assert predict.main([str(folders[0]), "--runs", runs_arg, "--clinical",
                         str(tmp_path / "clinical.json"), "--out", str(tmp_path / "out.json")]) == 0
    (out,) = json.loads((tmp_path / "out.json").read_text())
    return out

  with_object = answer({**values, "Molecular subtype": {"value": "luminal A"}})
  assert with_object["unused_clinical"] == [
      {"field": "Molecular subtype", "reason": "a JSON object, not a value"}]
  assert "molecular_subtype" in with_object["unknown_clinical"]
  assert "age" not in with_object["unknown_clinical"]
  without = answer({k: v for k, v in values.items() if k != "Molecular subtype"})
  assert with_object["probability"] == without["probability"]
  assert answer(values)["probability"] != without["probability"]  # the field matters


def test_predict_exits_1_when_no_patient_is_answered(trained_runs, patients, capsys, tmp_path):
  _, broken, _ = patients
  out = tmp_path / "answers.json"
  assert predict.main([str(broken), str(broken), "--runs", f"rhpc={trained_runs['rhpc']}",
                       "--out", str(out)]) == 1
  assert all("error" in answer for answer in json.loads(out.read_text()))
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      "predict: no patient answered (2 failed; each answer's \"error\" says why)")


def test_predict_passes_over_a_damaged_best_checkpoint(trained_runs, patients, capsys, tmp_path):
  """A byte flipped in the best checkpoint's data: predict says so in one warning and answers
  from the same step's latest checkpoint, the same probability as from the intact run."""
  folders, _, clinical = patients
  run = tmp_path / "rhpc"
  shutil.copytree(trained_runs["rhpc"], run)
  best = json.loads((run / "final.json").read_text())["best_step"]
  checkpoint_damage.flip_state_byte(run / "best" / str(best))

  def answer(workdir, out):
    assert predict.main([str(folders[0]), "--runs", f"rhpc={workdir}", "--clinical",
                         str(clinical), "--out", str(out)]) == 0
    return json.loads(out.read_text())[0]["probability"]

  capsys.readouterr()
  assert answer(run, tmp_path / "damaged.json") == answer(trained_runs["rhpc"],
                                                          tmp_path / "intact.json")
  warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
  assert len(warnings) == 1 and f"best/{best}/state: 1 of " in warnings[0]
  assert f"using checkpoints/{best} (the same step) instead" in warnings[0]

def _run_copy(source, target, **data):
  """The config.json and preprocessing.json of the run in ``source`` (all that load_run reads
  before any checkpoint), with config.data's fields set from ``data``."""
  target.mkdir()
  config = json.loads((source / "config.json").read_text())
  config["data"].update(data)
  (target / "config.json").write_text(json.dumps(config))
  shutil.copy(source / "preprocessing.json", target / "preprocessing.json")
  return target


@pytest.mark.parametrize("data, message", [
    ({"geometry": "demo"}, "config.data.geometry='demo' means mri.spacing_mm (4.0, 4.0, 4.0), "
                           "the records were prepared with (8.0, 8.0, 8.0)"),
    # The config.json of a run trained before the geometry presets, with a spacing override.
    ({"mri_spacing_mm": [4.0, 4.0, 4.0]}, "config.data.mri_spacing_mm means mri.spacing_mm "
                                          "(4.0, 4.0, 4.0), the records were prepared with "
                                          "(8.0, 8.0, 8.0)"),
])
def test_predict_refuses_a_run_whose_config_disagrees_with_its_records(
    trained_runs, patients, tmp_path, capsys, data, message):
  """predict stops with one line naming the field and both values, before preprocessing any
  patient at a geometry the model was not trained on."""
  run = _run_copy(trained_runs["iMRrhpc"], tmp_path / "run", **data)
  folders, _, _ = patients
  assert predict.main([str(folders[0]), "--runs", f"iMRrhpc={run}"]) == 2
  error = capsys.readouterr().err.strip()
  assert len(error.splitlines()) == 1
  assert message in error and str(run / "config.json") in error


def test_predict_preprocesses_as_each_runs_records_were(trained_runs, patients, monkeypatch):
  """New patients are preprocessed with the options of the records each image model trained
  on (its preprocessing.json, a copy of their manifest), not with any config field."""
  from input_pipeline import records
  from input_pipeline.records import preprocessing
  from mrp_jax.core import runs, sharding

  mesh = sharding.make_mesh(jax.devices()[:1])
  loaded = [runs.load_run(trained_runs[name], mesh) for name in ("iMGrhpc", "iMRrhpc")]
  manifest = records.read_manifest(json.loads(
      (trained_runs["iMRrhpc"] / "config.json").read_text())["data"]["records"])
  assert loaded[1].preprocessing == {"mri": manifest["mri"], "mammogram": manifest["mammogram"]}
  # Another spacing in the MRI run's record of its preprocessing must reach the preprocessing.
  loaded[1].preprocessing = json.loads(json.dumps(loaded[1].preprocessing))
  loaded[1].preprocessing["mri"]["spacing_mm"] = [5.5, 5.5, 5.5]
  seen = []

  def spy(source, patient_id, split, mri_options, mg_options, report):
    seen.append((mri_options, mg_options))
    raise ValueError("stop here")

  monkeypatch.setattr(predict, "process_patient", spy)
  folders, _, clinical = patients
  answers = predict.predict_patients(folders[:1], loaded, None,
                                     predict._clinical_rows(clinical), explain_steps=0)
  assert answers[0]["error"] == "ValueError: stop here"
  expected_mri, _ = preprocessing.options(loaded[1].preprocessing)
  _, expected_mg = preprocessing.options(loaded[0].preprocessing)
  assert seen == [(expected_mri, expected_mg)]
  assert seen[0][0].spacing_mm == (5.5, 5.5, 5.5)
  assert seen[0][0].box == tuple(manifest["mri"]["shape"])
  assert seen[0][1].size == tuple(manifest["mammogram"]["shape"])


@pytest.mark.parametrize("inputs", ["model", "calibrated"])
def test_predict_gives_the_evaluations_mrp_for_the_same_patient(inputs, trained_runs,
                                                                training_records, tmp_path):
  """The evaluate job, then predict on the folders its validation patients came from: MRP's
  probability is the one predictions.csv reports for the patient at predict's phase, whichever
  inputs the weights combine."""
  from configs import evaluate as evaluate_config
  from input_pipeline.records import prepare
  from mrp_jax.evaluation import evaluate

  config = evaluate_config.get_config()
  config.data.records = str(training_records)
  config.evaluate.runs = ",".join(f"{k}={v}" for k, v in trained_runs.items())
  config.evaluate.split = config.evaluate.fit_split = "validation"
  config.evaluate.cohort = "per_phase"
  config.evaluate.bootstrap_replicates = 100
  config.evaluate.explain_cases = 0
  config.evaluate.mrp_inputs = inputs
  evaluate.run(config, tmp_path / "eval")
  report = tmp_path / "eval" / "report"
  reported = {(r["patient_id"], r["phase"]): float(r["probability"])
              for r in csv.DictReader(open(report / "predictions.csv"))
              if r["model"] == "MRP" and r["split"] == "validation"}
  export = training_records.parent / "export"
  key = prepare.load_key(training_records.parent / "records.pseudonym.key")
  folders = [p for p in sorted(export.iterdir())
             if p.is_dir() and any(k[0] == prepare.pseudonym(key, p.name) for k in reported)]
  assert folders
  out = tmp_path / "answers.json"
  assert predict.main([*map(str, folders), "--runs", config.evaluate.runs, "--evaluation",
                       str(report), "--clinical", str(export / "clinical.csv"), "--out",
                       str(out), "--explain_steps", "1"]) == 0
  for answer in json.loads(out.read_text()):
    assert "error" not in answer, answer
    expected = reported[(prepare.pseudonym(key, answer["patient"]), answer["phase"])]
    # predictions.csv's six decimals (5e-7) and float64 rounding.
    assert answer["probability"]["MRP"] == pytest.approx(expected, abs=6e-7)

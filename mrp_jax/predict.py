"""The `predict` command: pCR probabilities for new patients, one folder each.

  python -m mrp_jax.predict --runs rhpc=runs/rhpc,iMGrhpc=runs/iMGrhpc,iMRrhpc=runs/iMRrhpc \
      --evaluation runs/eval/report --clinical clinical.csv \
      --out predictions.json /data/new/PATIENT_A /data/new/PATIENT_B

Each patient folder holds DICOM studies (any structure; MR and MG mixed) or NIfTI files named
`<phase>_pre.nii.gz` / `<phase>_post.nii.gz` / `<phase>_sub.nii.gz`, as in the generic layout.
The clinical data is a CSV with a `patient_id` column matching the folder names, or a JSON file
(one object of rhpc values, or an object of such objects keyed by folder name); any field may be
missing, and a field holding an object or a list instead of a value is left out and named in the
answer's ``unused_clinical`` (the other fields are kept). Preprocessing is the one the runs were trained with (their preprocessing.json).

The phase is the latest one the images support: Post-NAT with Pre and Post MRI, else Mid-NAT
with Pre and Mid, else Pre-NAT. Every applicable model answers (iMGrhpc needs the mammogram,
iMRrhpc an MRI); iMGrhpc answers for a patient with CC and MLO views with the mean of its
probabilities on each, as the evaluation does. With ``--evaluation`` (the evaluate job's report
folder) the answers are what the evaluation reported: each model's probability through its
calibration map for that phase (calibration.json), MRP combining with the validation-fitted
weights (mrp_ensemble.json) what the evaluation combined: the models' own probabilities, then
MRP's output through its own calibration map (the paper's, 'model'), or their calibrated
probabilities ('calibrated'; also every mrp_ensemble.json written before the choice was saved),
and the strongest Integrated-Gradients attributions of MRP (or the single model) against the
evaluation's reference patient (attribution_baseline.json), of the probabilities MRP combines.
Without it, each model's own, uncalibrated probability and nothing else. A patient whose data
cannot be used gets an error message; the others still get answers. The exit status is 1 when no
patient got one.

Patients go through each model in batches of ``--batch_size`` rows (a row per patient, per
mammogram view for iMGrhpc; the last batch padded), and the compiled programs are kept in JAX's
persistent compilation cache (``--compilation_cache``), so a later call, with any number of
patients, compiles nothing: the first call on a machine compiles every model's programs once
(about 30 s for the demo's runs on 2 CPU cores), later calls only read and run
(docs/performance.md, "predict: compilation cache and batch size").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from absl import flags
from jax.experimental.compilation_cache import compilation_cache
from scipy import special

from input_pipeline import cli
from input_pipeline.clinical_table import ParseReport
from input_pipeline.feed import batching
from input_pipeline.ingestion.layouts import generic
from input_pipeline.ingestion.mammogram import MammogramOptions
from input_pipeline.ingestion.mri import MriOptions
from input_pipeline.ingestion.patient import PatientSource
from input_pipeline.records import preprocessing
from input_pipeline.records.prepare import process_patient
from mrp_jax import console
from mrp_jax.core import checkpoint, runs, sharding
from mrp_jax.evaluation import calibration, ensemble, explain

ANONYMOUS = "P000000000000"  # in-memory records need a pseudonym; nothing is written
# Patients per model call: every call has this many rows (padding rows cost compute when there
# are fewer patients), so that one compiled program per model serves any number of patients. On
# a CPU larger batches gained nothing (16 demo patients: 1.8 s each with batches of 1, 4 or 8)
# and padding a one-patient call to 4 rows cost 4 s (docs/performance.md, "predict:
# compilation cache and batch size").
DEFAULT_BATCH_SIZE = 1


def default_compilation_cache() -> str:
  """Where `predict` keeps compiled programs unless told otherwise: JAX's own
  ``JAX_COMPILATION_CACHE_DIR`` when the environment sets it, else
  ``$XDG_CACHE_HOME/mrp-jax/jax-compilation`` (``~/.cache/mrp-jax/jax-compilation`` without
  ``XDG_CACHE_HOME``)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mrp-jax", "jax-compilation")


# jax.config settings of the persistent compilation cache.
_CACHE_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                   "jax_persistent_cache_min_entry_size_bytes")


def _apply_cache_settings(settings: dict[str, Any]) -> None:
  moved = settings["jax_compilation_cache_dir"] != jax.config.jax_compilation_cache_dir
  for name in _CACHE_SETTINGS:
    jax.config.update(name, settings[name])
  if moved:  # JAX opens its cache folder once per process; it must open the new one
    compilation_cache.reset_cache()


@contextlib.contextmanager
def persistent_compilation_cache(directory: str | None):
  """JAX's persistent compilation cache in ``directory`` (None or '': none) while the block runs.

  Every program is kept, whatever its compile time and size (JAX keeps only those compiling
  for over 1 s by default; predict's many small programs add up on a CPU). A folder predict
  makes is private to its owner (mode 0700): JAX runs what it finds there, so it must be
  trusted. The previous settings come back afterwards, so a caller in Python (the tests) keeps
  its own cache.
  """
  before = {name: getattr(jax.config, name) for name in _CACHE_SETTINGS}
  if directory:
    Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
  _apply_cache_settings({"jax_compilation_cache_dir": directory or None,
                         "jax_persistent_cache_min_compile_time_secs": 0.0,
                         "jax_persistent_cache_min_entry_size_bytes": -1})
  try:
    yield
  finally:
    _apply_cache_settings(before)


def _clinical_rows(path: Path | None) -> dict[str, dict[str, Any]] | dict[str, Any]:
  if path is None:
    return {}
  if path.suffix.lower() == ".json":
    try:
      data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
      raise ValueError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(data, dict):
      raise ValueError(f"{path}: expected a JSON object")
    return data
  _, rows = generic.read_clinical_csv(path)
  return {key: found[0] for key, found in rows.items()}


@dataclasses.dataclass(frozen=True)
class ClinicalRow:
  """One patient's clinical values as predict takes them.

  Attributes:
    values: field -> value, the fields that hold a value (a string, number, true/false or null).
    left_out: the fields that do not (a JSON object or list), with why; they stay unknown.
    found: whether the clinical data had an entry for the patient at all.
  """
  values: dict[str, Any]
  left_out: tuple[dict[str, str], ...] = ()
  found: bool = True


def _row_for(clinical: dict[str, Any], key: str, single_patient: bool) -> ClinicalRow:
  """The clinical values of folder ``key``: its entry when the data is keyed by folder name,
  else, for the one patient of a call, the data itself when it holds values (one JSON object of
  values; a field whose value is an object or a list is left out and named, the others kept)."""
  if key in clinical and isinstance(clinical[key], dict):
    row = clinical[key]
  elif single_patient and any(not isinstance(v, dict) for v in clinical.values()):
    row = clinical
  else:
    return ClinicalRow({}, found=not clinical)
  kinds = {dict: "a JSON object", list: "a JSON list"}
  left_out = tuple({"field": field, "reason": f"{kinds[type(value)]}, not a value"}
                   for field, value in row.items() if type(value) in kinds)
  return ClinicalRow({f: v for f, v in row.items() if type(v) not in kinds}, left_out)


def _phase(record) -> str:
  for phase in ("post", "mid"):
    if batching.evaluates(record, phase, include_unlabeled=True):
      return phase
  return "pre"


def _applicable(model_name: str, record) -> bool:
  return {"rhpc": True, "iMGrhpc": bool(record.mammograms),
          "iMRrhpc": "pre" in record.mri}[model_name]


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What `predict` takes from an evaluate job's report folder.

  Attributes:
    calibration: run label -> phase -> Platt map.
    weights: the MRP weights, None when the evaluation had no MRP.
    rhpc_baseline: [INPUT_DIM] the reference patient's rhpc inputs (the attribution baseline).
  """
  calibration: dict[str, dict[str, calibration.PlattMap]]
  weights: ensemble.EnsembleWeights | None
  rhpc_baseline: np.ndarray

  @classmethod
  def load(cls, folder: Path) -> "Evaluation":
    for name in ("calibration.json", "attribution_baseline.json"):
      if not (folder / name).exists():
        raise FileNotFoundError(f"{folder}: no {name}; give the report folder of an evaluate "
                                "run (WORKDIR/report)")
    ensemble_path = folder / "mrp_ensemble.json"
    baseline = json.loads((folder / "attribution_baseline.json").read_text())
    return cls(calibration.load(folder / "calibration.json"),
               ensemble.EnsembleWeights.load(ensemble_path) if ensemble_path.exists() else None,
               np.asarray(baseline["rhpc_inputs"], np.float32))

  @property
  def own_inputs(self) -> bool:
    """MRP combines the models' own probabilities (and calibrates its output after)."""
    return self.weights is not None and self.weights.inputs == "model"

  def platt(self, label: str, phase: str) -> calibration.PlattMap:
    if phase not in self.calibration.get(label, {}):
      raise ValueError(f"the evaluation has no calibration of {label} at the {phase} phase "
                       "(evaluate it with that phase)")
    return self.calibration[label][phase]


@dataclasses.dataclass
class _Patient:
  """One patient folder on its way through `predict`.

  Attributes:
    answer: what the patient's JSON answer says so far ('error' once anything failed).
    example: the patient at its phase, None when it failed before getting there.
    platt: run label -> the calibration map at the patient's phase (with an evaluation).
    probability: run label -> the model's probability (calibrated with an evaluation).
    own_probability: run label -> the model's own probability (what 'model' MRP combines).
    attributions: model name -> label -> [1] the model's attributions of this patient.
  """
  answer: dict[str, Any]
  example: batching.Example | None = None
  platt: dict[str, calibration.PlattMap] = dataclasses.field(default_factory=dict)
  probability: dict[str, float] = dataclasses.field(default_factory=dict)
  own_probability: dict[str, float] = dataclasses.field(default_factory=dict)
  attributions: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

  def fail(self, error: Exception) -> None:
    self.answer["error"] = f"{type(error).__name__}: {error}"

  def waiting_for(self, run: runs.Run) -> bool:
    return "error" not in self.answer and _applicable(run.model_name, self.example.record)


def _read_patient(folder: Path, row: ClinicalRow, loaded: Sequence[runs.Run],
                  evaluation: Evaluation | None, mri_options: MriOptions,
                  mg_options: MammogramOptions) -> _Patient:
  """The patient of ``folder`` preprocessed as the runs' records were, at its phase; a failure
  becomes the patient's error."""
  patient = _Patient({"patient": folder.name})
  try:
    # The same choice of images as `prepare` (the generic layout's), with its reasons.
    imaging = generic.patient_imaging(folder, side=generic.tumour_side(row.values))
    source = PatientSource(folder.name, label=None, clinical=row.values)
    source.take(imaging)
    report = ParseReport()
    record = process_patient(source, ANONYMOUS, "test", mri_options, mg_options, report)
    phase = _phase(record)
    patient.answer.update(phase=phase,
                          images={"mri": list(record.mri), "mammogram": bool(record.mammograms),
                                  "mammogram_views": list(record.mammograms)},
                          unknown_clinical=sorted(report.missing) + sorted(
                              {v for v, _ in report.unparsed}),
                          unused_clinical=list(row.left_out),
                          warnings=imaging.warnings + ([] if row.found else [
                              "no entry for this patient in the clinical data: every rhpc "
                              "value unknown"]),
                          unused=[{"item": u.item, "file": u.where, "reason": u.reason}
                                  for u in imaging.unused])
    if imaging.empty:
      patient.answer["no_images"] = imaging.empty
    patient.example = batching.eval_example(record, phase)
    if evaluation is not None:
      patient.platt = {run.label: evaluation.platt(run.label, phase) for run in loaded
                       if _applicable(run.model_name, record)}
  except Exception as error:  # one bad patient never stops the others
    patient.fail(error)
  return patient


def _score_rows(run: runs.Run, rows: Sequence[tuple[batching.Example, Any]],
                spec: batching.BatchSpec, batch_size: int, explain_steps: int,
                evaluation: Evaluation | None) -> list[dict[str, Any]]:
  """``run``'s outputs for ``rows`` (at most ``batch_size``) from one batch of ``batch_size``
  rows, padded so that every batch has the shape the cached programs were compiled for (rows
  are independent: the models in eval mode). Per row: 'logit' (float64), 'probability' (the
  model's own) and, with attributions, 'attributions' (label -> [1]) of the probability under
  the row's map, second of its pair (the identity where MRP combines own probabilities)."""
  n = len(rows)
  batch = batching.collate([example for example, _ in rows], run.model_name, spec, batch_size)
  out = run.eval_step(run.state.params, run.state.batch_stats, batch)
  scored = [{"logit": float(logit), "probability": float(probability)} for logit, probability
            in zip(np.asarray(out["logit"], np.float64)[:n], np.asarray(out["probability"])[:n])]
  if evaluation is None or not explain_steps:
    return scored
  maps = [calibration.IDENTITY] * n if evaluation.own_inputs else [m for _, m in rows]
  # Each row's own calibration map (patients of one batch may be at different phases); the
  # padding rows take the identity.
  slope = np.asarray([m.slope for m in maps] + [1.0] * (batch_size - n), np.float32)
  intercept = np.asarray([m.intercept for m in maps] + [0.0] * (batch_size - n), np.float32)
  attributions = explain.model_attributions(
      run.model, {"params": run.state.params, "batch_stats": run.state.batch_stats}, batch,
      explain.AttributionOptions(target="probability", steps=explain_steps,
                                 rhpc_baseline=evaluation.rhpc_baseline,
                                 calibration=(slope, intercept)))
  for j, row in enumerate(scored):
    row["attributions"] = {k: v[j:j + 1] for k, v in attributions.items()}
  return scored


def _settle(run: runs.Run, patient: _Patient, scored: list[dict[str, Any]],
            evaluation: Evaluation | None) -> None:
  """``run``'s answer for ``patient`` from its rows (per mammogram view for iMGrhpc): as the
  evaluation (inference.per_patient), the mean of the views' own probabilities, its log-odds
  through the calibration map; the views' mean attributions (Integrated Gradients is linear
  in the explained function)."""
  if len(scored) == 1:
    logit, own = scored[0]["logit"], scored[0]["probability"]
  else:
    own = float(np.mean(special.expit([row["logit"] for row in scored])))
    logit = float(special.logit(own))
  if evaluation is None:
    patient.probability[run.label] = own
  else:
    patient.probability[run.label] = float(patient.platt[run.label](logit))
    # The evaluation's own probability: sigmoid of the float64 logit, as inference.predict.
    patient.own_probability[run.label] = (float(calibration.IDENTITY(logit))
                                          if len(scored) == 1 else own)
  if "attributions" in scored[0]:
    patient.attributions[run.model_name] = {
        key: np.mean([row["attributions"][key] for row in scored], axis=0)
        for key in scored[0]["attributions"]}


def _answer_run(run: runs.Run, patients: Sequence[_Patient], spec: batching.BatchSpec,
                batch_size: int, evaluation: Evaluation | None, explain_steps: int) -> None:
  """``run``'s answers in batches of rows (per view for iMGrhpc); a failing batch fails its own."""
  rows = [(patient, example) for patient in patients if patient.waiting_for(run)
          for example in batching.eval_examples(patient.example.record,
                                                patient.answer["phase"], run.model_name)]
  scored: dict[int, list[dict[str, Any]]] = {}
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    try:
      results = _score_rows(run, [(example, patient.platt.get(run.label))
                                  for patient, example in chunk], spec, batch_size,
                            explain_steps, evaluation)
    except Exception as error:
      for patient, _ in chunk:
        patient.fail(error)
      continue
    for (patient, _), result in zip(chunk, results):
      scored.setdefault(id(patient), []).append(result)
  for patient in patients:
    if id(patient) in scored and "error" not in patient.answer:
      _settle(run, patient, scored[id(patient)], evaluation)


def _combine(patient: _Patient, by_name: dict[str, runs.Run], evaluation: Evaluation | None,
             top: int) -> None:
  """MRP from the probabilities the evaluation's weights combine (mrp_ensemble.json's
  inputs), and the strongest attributions of MRP (or of the single model)."""
  probabilities, attributions = patient.probability, patient.attributions
  weights = evaluation.weights if evaluation is not None else None
  inputs = patient.own_probability if evaluation is not None and evaluation.own_inputs else (
      probabilities)
  p_mg = inputs.get(by_name["iMGrhpc"].label) if "iMGrhpc" in by_name else None
  p_mr = inputs.get(by_name["iMRrhpc"].label) if "iMRrhpc" in by_name else None
  combined = None
  if weights is not None and (p_mg is not None or p_mr is not None):
    present = np.asarray([p_mg is not None]), np.asarray([p_mr is not None])
    y = ensemble.combine(weights, np.asarray([p_mg or 0.0]), np.asarray([p_mr or 0.0]),
                         *present)
    probabilities["MRP"] = float(
        evaluation.platt("MRP", patient.answer["phase"])(ensemble.logit(y))[0]
        if evaluation.own_inputs else y[0])
    members = {name: attributions[name] for name in ("iMGrhpc", "iMRrhpc")
               if name in attributions}
    if members:  # attributions of y, the function the weights combine
      w_mg, w_mr = ensemble.case_weights(weights, *present)
      combined = explain.combine_attributions(
          members, {"iMGrhpc": w_mg, "iMRrhpc": w_mr}, output=y)
  if combined is None and attributions:
    combined = next(iter(attributions.values()))
  patient.answer["probability"] = probabilities
  patient.answer["calibrated"] = evaluation is not None
  if combined is not None:
    patient.answer["top_attributions"] = explain.top_features(combined, top)


def predict_patients(folders: Sequence[Path], loaded: Sequence[runs.Run],
                     evaluation: Evaluation | None, clinical: dict[str, Any],
                     explain_steps: int = 16, top: int = 8,
                     batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, Any]]:
  """The answers for the patients of ``folders``, in their order.

  Every patient is read first; then each model takes the patients it applies to in batches of
  ``batch_size`` rows (the last one padded), so one compiled program per model serves any
  number of patients.

  Args:
    folders: one folder per patient (its name is the patient's name in the answers).
    loaded: the trained runs.
    evaluation: the evaluate job's report (calibration, MRP, attributions), or None.
    clinical: folder name -> rhpc values, or one patient's values when there is one folder.
    explain_steps: Integrated Gradients path steps (0: no attributions).
    top: attributions kept per patient.
    batch_size: patients per model call.

  Returns:
    One JSON-ready answer per folder (see the module docstring).
  """
  by_name = {run.model_name: run for run in loaded}
  # Each image as the run that reads it was trained on (its records' manifest, kept in its
  # preprocessing.json).
  mri_options, _ = preprocessing.options((by_name.get("iMRrhpc") or loaded[0]).preprocessing)
  _, mg_options = preprocessing.options((by_name.get("iMGrhpc") or loaded[0]).preprocessing)
  spec = batching.BatchSpec(mri_shape=mri_options.box, mri_dtype=mri_options.dtype,
                            mg_shape=mg_options.size, mg_dtype=mg_options.dtype)
  patients = [_read_patient(folder, _row_for(clinical, folder.name, len(folders) == 1), loaded,
                            evaluation, mri_options, mg_options) for folder in folders]
  for run in loaded:
    _answer_run(run, patients, spec, batch_size, evaluation, explain_steps)
  for patient in patients:
    if "error" not in patient.answer:
      try:
        _combine(patient, by_name, evaluation, top)
      except Exception as error:  # one bad patient never stops the others
        patient.fail(error)
  return [patient.answer for patient in patients]


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command line's flags on ``flag_values``.

  The command line defines them on absl's global FLAGS; :func:`main` on a fresh FlagValues per
  call, so predict can be called any number of times in one process.
  """
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("runs", None, "Required. LABEL=TRAIN_WORKDIR,... of the trained runs "
                      "(labels rhpc, iMGrhpc, iMRrhpc).", **fv)
  flags.DEFINE_string("evaluation", None, "The evaluate job's report folder "
                      "(calibration.json, mrp_ensemble.json, attribution_baseline.json): "
                      "calibrated probabilities, MRP and attributions; without it each model's "
                      "uncalibrated probability only.", **fv)
  flags.DEFINE_string("clinical", None, "Clinical values: a CSV with a patient_id column "
                      "matching the folder names, or JSON; without it every rhpc value is "
                      "unknown.", **fv)
  flags.DEFINE_string("out", None, "Write the answers here (JSON); without it they go to "
                      "standard output.", **fv)
  flags.DEFINE_integer("explain_steps", 16, "Integrated Gradients path steps (0: no "
                       "attributions).", **fv)
  flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Patients per model call (the last "
                       "call padded to it); another value compiles the models once more.",
                       lower_bound=1, **fv)
  flags.DEFINE_string("compilation_cache", None, "Keep compiled programs in this folder "
                      "(JAX's persistent compilation cache) so that later calls do not compile "
                      "again; '' keeps none. Default: $JAX_COMPILATION_CACHE_DIR if set, else "
                      "$XDG_CACHE_HOME/mrp-jax/jax-compilation (~/.cache/mrp-jax/"
                      "jax-compilation).", **fv)
  flags.mark_flag_as_required("runs", **fv)


def run(fv: flags.FlagValues, folders: Sequence[str]) -> int:
  """Answers for the patient ``folders`` on parsed flags; returns the exit status (1: no
  patient answered; 2: bad arguments or runs, no checkpoint left to load)."""
  if not folders:
    print("predict: give one folder per patient after the flags", file=sys.stderr)
    return 2
  console.current("predict")  # a run's checkpoint warnings are predict's
  cache = default_compilation_cache() if fv.compilation_cache is None else fv.compilation_cache
  with persistent_compilation_cache(cache):
    try:
      mesh = sharding.make_mesh(jax.devices()[:1])
      loaded = [runs.load_run(path, mesh, label) for label, path in runs.parse_runs(fv.runs)]
      evaluation = Evaluation.load(Path(fv.evaluation)) if fv.evaluation else None
      clinical = _clinical_rows(Path(fv.clinical) if fv.clinical else None)
    except (OSError, ValueError, checkpoint.CheckpointError) as error:
      print(f"predict: {error}", file=sys.stderr)
      return 2
    answers = predict_patients([Path(f) for f in folders], loaded, evaluation, clinical,
                               fv.explain_steps, batch_size=fv.batch_size)
  text = json.dumps(answers, indent=1)
  if fv.out:
    Path(fv.out).write_text(text)
  else:
    print(text)
  failed = sum("error" in a for a in answers)
  if failed == len(answers):
    print(f"predict: no patient answered ({failed} failed; each answer's \"error\" says why)",
          file=sys.stderr)
    return 1
  print(f"predict: {len(answers) - failed} answered, {failed} failed", file=sys.stderr)
  return 0


def main(argv: Sequence[str]) -> int:
  """The command for callers in Python: ``argv`` without the program name (folders and
  flags); returns the exit status."""
  return cli.call("predict", define_flags, run, argv)


if __name__ == "__main__":
  cli.run_program(define_flags, run)

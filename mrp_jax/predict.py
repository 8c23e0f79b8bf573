"""The `predict` command: pCR probabilities for new patients, one folder each.

  python -m mrp_jax.predict --runs rhpc=runs/rhpc,iMGrhpc=runs/iMGrhpc,iMRrhpc=runs/iMRrhpc \
      --evaluation runs/eval/report --clinical clinical.csv \
      --out predictions.json /data/new/PATIENT_A /data/new/PATIENT_B

Each patient folder holds DICOM studies (any structure; MR and MG mixed) or NIfTI files named
`<phase>_pre.nii.gz` / `<phase>_post.nii.gz` / `<phase>_sub.nii.gz`, as in the generic layout.
The clinical data is a CSV with a `patient_id` column matching the folder names, or a JSON file
(one object of rhpc values, or an object of such objects keyed by folder name); any field may be
missing. Preprocessing is the one the runs were trained with (their preprocessing.json).

The phase is the latest one the images support: Post-NAT with Pre and Post MRI, else Mid-NAT
with Pre and Mid, else Pre-NAT. Every applicable model answers (iMGrhpc needs the mammogram,
iMRrhpc an MRI). With ``--evaluation`` (the evaluate job's report folder) the answers are what
the evaluation reported: each model's probability through its calibration map for that phase
(calibration.json), MRP combining them with the validation-fitted weights (mrp_ensemble.json),
and the strongest Integrated-Gradients attributions of MRP (or the single model) against the
evaluation's reference patient (attribution_baseline.json). Without it, each model's own,
uncalibrated probability and nothing else. A patient whose data cannot be used gets an error
message; the others still get answers.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from absl import flags

from input_pipeline import batching, cli
from input_pipeline.clinical_table import ParseReport
from input_pipeline.layouts import generic
from input_pipeline.mammogram import MammogramOptions
from input_pipeline.mri import MriOptions
from input_pipeline.patient import PatientSource
from input_pipeline.prepare import process_patient
from mrp_jax import sharding
from mrp_jax.evaluation import calibration, ensemble, explain, runs

ANONYMOUS = "P000000000000"  # in-memory records need a pseudonym; nothing is written


def _clinical_rows(path: Path | None) -> dict[str, dict[str, Any]] | dict[str, Any]:
  if path is None:
    return {}
  if path.suffix.lower() == ".json":
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
      raise ValueError(f"{path}: expected a JSON object")
    return data
  _, rows = generic.read_clinical_csv(path)
  return {key: found[0] for key, found in rows.items()}


def _row_for(clinical: dict[str, Any], key: str, single_patient: bool) -> dict[str, Any]:
  if key in clinical and isinstance(clinical[key], dict):
    return clinical[key]
  if single_patient and clinical and not any(isinstance(v, dict) for v in clinical.values()):
    return clinical  # one JSON object of values for the one patient
  return {}


def _phase(record) -> str:
  for phase in ("post", "mid"):
    if batching.evaluates(record, phase, include_unlabeled=True):
      return phase
  return "pre"


def _applicable(model_name: str, record) -> bool:
  return {"rhpc": True, "iMGrhpc": record.mg is not None,
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

  def platt(self, label: str, phase: str) -> calibration.PlattMap:
    if phase not in self.calibration.get(label, {}):
      raise ValueError(f"the evaluation has no calibration of {label} at the {phase} phase "
                       "(evaluate it with that phase)")
    return self.calibration[label][phase]


def predict_patients(folders: Sequence[Path], loaded: Sequence[runs.Run],
                     evaluation: Evaluation | None, clinical: dict[str, Any],
                     explain_steps: int = 16, top: int = 8) -> list[dict[str, Any]]:
  by_name = {run.model_name: run for run in loaded}
  reference = by_name.get("iMRrhpc") or by_name.get("iMGrhpc") or loaded[0]
  geometry = reference.preprocessing
  mri_options = MriOptions(spacing_mm=tuple(reference.config.data.mri_spacing_mm),
                           box=tuple(geometry["mri"]["shape"]),
                           intensity=geometry["mri"]["intensity"], dtype=geometry["mri"]["dtype"])
  mg_options = MammogramOptions(size=tuple(geometry["mammogram"]["shape"]),
                                dtype=geometry["mammogram"]["dtype"])
  spec = batching.BatchSpec(mri_shape=mri_options.box, mri_dtype=mri_options.dtype,
                            mg_shape=mg_options.size, mg_dtype=mg_options.dtype)
  answers = []
  for folder in folders:
    answer: dict[str, Any] = {"patient": folder.name}
    try:
      row = _row_for(clinical, folder.name, len(folders) == 1)
      # The same choice of images as `prepare` (the generic layout's), with its reasons.
      imaging = generic.patient_imaging(folder, side=generic.tumour_side(row))
      source = PatientSource(folder.name, label=None, clinical=row)
      source.take(imaging)
      report = ParseReport()
      record = process_patient(source, ANONYMOUS, "test", mri_options, mg_options, report)
      phase = _phase(record)
      answer.update(phase=phase,
                    images={"mri": list(record.mri), "mammogram": record.mg is not None},
                    unknown_clinical=sorted(report.missing) + sorted(
                        {v for v, _ in report.unparsed}),
                    warnings=imaging.warnings,
                    unused=[{"item": u.item, "file": u.where, "reason": u.reason}
                            for u in imaging.unused])
      if imaging.empty:
        answer["no_images"] = imaging.empty
      probabilities, attributions = {}, {}
      example = batching.eval_example(record, phase)
      for run in loaded:
        if not _applicable(run.model_name, record):
          continue
        batch = batching.collate([example], run.model_name, spec)
        variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
        out = run.eval_step(run.state.params, run.state.batch_stats, batch)
        if evaluation is None:
          probabilities[run.label] = float(np.asarray(out["probability"])[0])
          continue
        platt = evaluation.platt(run.label, phase)
        probabilities[run.label] = float(platt(np.asarray(out["logit"], np.float64))[0])
        if explain_steps:
          attributions[run.model_name] = explain.model_attributions(
              run.model, variables, batch, target="probability", steps=explain_steps,
              rhpc_baseline=evaluation.rhpc_baseline,
              calibration=(platt.slope, platt.intercept))
      weights = evaluation.weights if evaluation is not None else None
      combined = None
      if weights is not None and {"iMGrhpc", "iMRrhpc"} & set(attributions):
        p_mg = probabilities.get(by_name["iMGrhpc"].label) if "iMGrhpc" in by_name else None
        p_mr = probabilities.get(by_name["iMRrhpc"].label) if "iMRrhpc" in by_name else None
        present = np.asarray([p_mg is not None]), np.asarray([p_mr is not None])
        probabilities["MRP"] = float(ensemble.combine(
            weights, np.asarray([p_mg or 0.0]), np.asarray([p_mr or 0.0]), *present)[0])
        w_mg, w_mr = ensemble.case_weights(weights, *present)
        members = {name: attributions[name] for name in ("iMGrhpc", "iMRrhpc")
                   if name in attributions}
        combined = explain.combine_attributions(
            members, {"iMGrhpc": w_mg, "iMRrhpc": w_mr},
            output=np.asarray([probabilities["MRP"]]))
      elif attributions:
        combined = next(iter(attributions.values()))
      answer["probability"] = probabilities
      answer["calibrated"] = evaluation is not None
      if combined is not None:
        answer["top_attributions"] = explain.top_features(combined, top)
    except Exception as error:  # one bad patient never stops the others
      answer["error"] = f"{type(error).__name__}: {error}"
    answers.append(answer)
  return answers


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
  flags.mark_flag_as_required("runs", **fv)


def run(fv: flags.FlagValues, folders: Sequence[str]) -> int:
  """Answers for the patient ``folders`` on parsed flags; returns the exit status (2: bad
  arguments or runs)."""
  if not folders:
    print("predict: give one folder per patient after the flags", file=sys.stderr)
    return 2
  try:
    mesh = sharding.make_mesh(jax.devices()[:1])
    loaded = [runs.load_run(path, mesh, label) for label, path in runs.parse_runs(fv.runs)]
    evaluation = Evaluation.load(Path(fv.evaluation)) if fv.evaluation else None
    clinical = _clinical_rows(Path(fv.clinical) if fv.clinical else None)
  except (OSError, ValueError) as error:
    print(f"predict: {error}", file=sys.stderr)
    return 2
  answers = predict_patients([Path(f) for f in folders], loaded, evaluation, clinical,
                             fv.explain_steps)
  text = json.dumps(answers, indent=1)
  if fv.out:
    Path(fv.out).write_text(text)
  else:
    print(text)
  failed = sum("error" in a for a in answers)
  print(f"predict: {len(answers) - failed} answered, {failed} failed", file=sys.stderr)
  return 0


def main(argv: Sequence[str]) -> int:
  """The command for callers in Python: ``argv`` without the program name (folders and
  flags); returns the exit status."""
  return cli.call("predict", define_flags, run, argv)


if __name__ == "__main__":
  cli.run_program(define_flags, run)

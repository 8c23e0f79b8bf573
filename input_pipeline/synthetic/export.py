"""Writes a synthetic hospital export: DICOM studies per patient, clinical.csv, and the truth.

    python -m input_pipeline.synthetic --out /tmp/export --patients 24 --seed 0 --geometry tiny

Layout (the "generic" layout)::

    DIR/clinical.csv                  patient_id, pCR, the 22 rhpc variables (messy spellings)
    DIR/<PatientID>/<StudyDate>_<Modality>_<n>/<SeriesNumber>_<description>/IM*.dcm
    DIR/synthetic_truth.json          generator bookkeeping for tests (never an input)

What the images and table contain, and which variables carry the label, is documented in
:mod:`input_pipeline.synthetic.cohort` (the draws) and :mod:`input_pipeline.synthetic.images`
(the phantoms); this module decides what a real export looks like around them: studies and
their dates, scanners and series descriptions, tags, missing phases and mammograms, unusual
encodings and the deliberately broken patients.

Everything is a function of (seed, patient index): patients can be generated in any order or in
worker processes, and the same seed gives byte-identical files, UIDs included.

Special patients sit at fixed indices (present when the cohort is large enough):
1 flipped x axis, 2 oblique (10-20 degrees about x), 3 Enhanced MR multi-frame, 4 GE multiphase
series, 5 RLE lossless, 6 MONOCHROME1 mammogram, and the broken ones of :data:`BROKEN_CASES`:
7 truncated DICOM file, 8 no pre-contrast series, 9 pre/post matrix mismatch, 10 unparseable
clinical row. Broken images are always in the Pre-NAT study, so the whole patient is unusable.
Of the other patients, :data:`ENHANCED_SHARE` have Enhanced MR multi-frame files (one per
series), the rest classic single-frame files (one per slice); the records are the same either
way.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import flags

from input_pipeline import cli
from input_pipeline.schema import PHASE_NAMES
from input_pipeline.synthetic import cohort, series
from input_pipeline.synthetic.images import Phantom
from input_pipeline.workers import worker_pool

# Written last: its presence marks a complete export (the demo reuses one).
TRUTH_FILE = "synthetic_truth.json"
SPECIAL_CASES = {1: "flipped", 2: "oblique", 3: "enhanced", 4: "multiphase", 5: "rle",
                 6: "monochrome1", 7: "truncated_dicom", 8: "no_pre_contrast",
                 9: "size_mismatch", 10: "bad_clinical_row"}
# Share of the other patients whose MR series are Enhanced MR multi-frame files, one per series
# (classic single-frame files for the rest), as scanners that export enhanced objects write.
ENHANCED_SHARE = 1 / 3
# Broken case -> keyword the preparation's skip reason is expected to contain.
BROKEN_CASES = {"truncated_dicom": "corrupt", "no_pre_contrast": "pre-contrast",
                "size_mismatch": "mismatch", "bad_clinical_row": "label"}


@dataclasses.dataclass(frozen=True)
class GeometrySpec:
  """Resolution of one geometry; the physical field of view is the same for all.

  Attributes:
    scale: multiplies every MRI spacing (in-plane 0.6-0.9 mm, slices 1-2 mm at 'full').
    texture_mm: grid of the fibroglandular random field.
    radius_scale: multiplies tumour radii, so tumours stay visible in coarse voxels.
    mammogram_shape: [rows, columns]; mammogram_spacing_mm: pixel size.
  """
  scale: float
  texture_mm: float
  radius_scale: float
  mammogram_shape: tuple[int, int]
  mammogram_spacing_mm: float

  def describe(self) -> str:
    return (f"MRI voxels x{self.scale:g} of 0.6-0.9 x 1-2 mm, mammogram "
            f"{self.mammogram_shape[0]}x{self.mammogram_shape[1]} at "
            f"{self.mammogram_spacing_mm:g} mm")


GEOMETRIES = {
    "tiny": GeometrySpec(8.0, 6.0, 1.5, (128, 96), 1.82),
    "demo": GeometrySpec(4.0, 3.0, 1.0, (832, 640), 0.28),
    "full": GeometrySpec(1.0, 1.5, 1.0, (3328, 2560), 0.07),
}


@dataclasses.dataclass(frozen=True)
class Rates:
  """Probabilities of missing data (per patient, or per value for ``extra_missing``), and the
  negative control.

  ``negative_control``: every patient's images are drawn for another, independently drawn
  patient (its own table and label), so they look like the cohort's but carry no evidence of
  this patient's label or table: an image model can do no better than rhpc.
  """
  no_mid: float = 0.15
  no_post: float = 0.10
  no_mammogram: float = 0.20
  extra_missing: float = 0.03
  negative_control: bool = False


@dataclasses.dataclass(frozen=True)
class ExportSummary:
  """What :func:`generate_export` wrote."""
  out_dir: Path
  patients: int
  studies: int
  series: int
  files: int
  bytes: int
  broken: dict[str, str]  # patient id -> broken case
  seconds: float

  def __str__(self) -> str:
    broken = ", ".join(f"{k} ({v})" for k, v in self.broken.items()) or "none"
    return (f"{self.out_dir}: {self.patients} patients, {self.studies} studies, {self.series} "
            f"series, {self.files} files, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s; "
            f"broken: {broken}")


def patient_id(index: int) -> str:
  return f"SYN{index:05d}"


def _rng(seed: int, index: int, stream: int, *more: int) -> np.random.Generator:
  return np.random.default_rng([seed, index, stream, *more])


def draw_patient(seed: int, index: int, geometry: str = "tiny",
                 rates: Rates = Rates()) -> tuple[cohort.ClinicalDraw, cohort.ImageLatent,
                                                  dict[str, str]]:
  """The clinical draw, latent image truth and clinical.csv row of one patient (no files)."""
  clinical = cohort.draw_clinical(_rng(seed, index, 0), rates.extra_missing)
  shown = cohort.draw_clinical(_rng(seed, index, 7), rates.extra_missing) if (
      rates.negative_control) else clinical
  latent = cohort.draw_latent(_rng(seed, index, 1), shown, GEOMETRIES[geometry].radius_scale)
  row = cohort.format_clinical_row(_rng(seed, index, 2), clinical, patient_id(index))
  if SPECIAL_CASES.get(index) == "bad_clinical_row":
    row = cohort.break_clinical_row(row)
  return clinical, latent, row


def generate_patient(out_dir: Path | str, seed: int, index: int, geometry: str = "tiny",
                     rates: Rates = Rates(), images: bool = True
                     ) -> tuple[dict[str, str], dict[str, Any], dict[str, int]]:
  """Generates one patient (its folder under ``out_dir`` must not exist yet).

  Returns:
    (clinical.csv row, truth record, counts {'studies', 'series', 'files', 'bytes'}).
  """
  clinical, latent, row = draw_patient(seed, index, geometry, rates)
  special = SPECIAL_CASES.get(index)
  # Unusual encodings show at every phase; broken patients are unusable whatever they have.
  complete = special is not None and special not in BROKEN_CASES
  plan = series.draw_plan(_rng(seed, index, 3), clinical, special, complete, rates.no_mid,
                          rates.no_post, rates.no_mammogram)
  if special is None and _rng(seed, index, 8).random() < ENHANCED_SHARE:
    plan = dataclasses.replace(plan, enhanced=True)
  truth = {
      "patient_id": patient_id(index), "index": index, "label": clinical.label,
      "phases": [PHASE_NAMES[p] for p in plan.phases], "has_mammogram": plan.mammogram,
      "special": special, "broken": special if special in BROKEN_CASES else None,
      "skip_keyword": BROKEN_CASES.get(special), "phase_marking": plan.marking,
      "manufacturer": plan.vendor.manufacturer, "enhanced_mr": plan.enhanced,
      "latent": latent.to_json(),
      "studies": [], "mammogram": None,
  }
  counts = {"studies": 0, "series": 0, "files": 0, "bytes": 0}
  if not images:
    return row, truth, counts
  root = Path(out_dir) / patient_id(index)
  if root.exists():
    raise FileExistsError(f"{root} already exists: generate into an empty folder, stale files "
                          "would mix with the new export")
  spec = GEOMETRIES[geometry]
  phantom = Phantom(latent, spec.texture_mm, _rng(seed, index, 4))
  writer = series.StudyWriter(root, seed, index, plan, spec.scale)
  for phase in plan.phases:
    truth["studies"].append(writer.mr_study(phantom, phase, _rng(seed, index, 5, phase)))
  if plan.mammogram:
    truth["mammogram"] = writer.mg_study(latent, spec.mammogram_shape,
                                         spec.mammogram_spacing_mm, _rng(seed, index, 6))
  files = list(root.rglob("*.dcm"))
  counts.update(studies=len(truth["studies"]) + plan.mammogram,
                series=sum(len(s["series"]) for s in truth["studies"]) + (
                    len(truth["mammogram"]["series"]) if plan.mammogram else 0),
                files=len(files), bytes=sum(p.stat().st_size for p in files))
  return row, truth, counts


def _generate(args) -> tuple[dict[str, str], dict[str, Any], dict[str, int]]:
  return generate_patient(*args)


def generate_export(out_dir: Path | str, num_patients: int, seed: int, geometry: str = "tiny",
                    *, rates: Rates = Rates(), images: bool = True,
                    workers: int = 1, progress: bool = True) -> ExportSummary:
  """Writes a synthetic export of ``num_patients`` patients to ``out_dir``.

  Args:
    geometry: 'tiny' (8x coarser spacing, ~60 x 57 x 15 voxels), 'demo' (4x) or 'full'.
    rates: missing phases / mammograms / clinical values.
    images: False writes only clinical.csv and the truth (fast; for statistics of the table).
    workers: processes generating patients in parallel (1: in this process).
    progress: show a progress bar, one step per patient (input_pipeline.cli.progress).
  """
  if geometry not in GEOMETRIES:
    raise ValueError(f"geometry must be one of {sorted(GEOMETRIES)}, got {geometry!r}")
  start = time.perf_counter()
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  jobs = [(out_dir, seed, i, geometry, rates, images) for i in range(num_patients)]

  def shown(results):
    return list(cli.progress(results, total=len(jobs), desc="synthetic export", unit="patient",
                             enabled=progress))

  if workers > 1:
    # Spawned workers that exit with this process (the demo may hold JAX's threads).
    with worker_pool(workers) as pool:
      results = shown(pool.map(_generate, jobs))
  else:
    results = shown(_generate(job) for job in jobs)
  rows = [r for r, _, _ in results]
  with open(out_dir / "clinical.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
  truth = {"seed": seed, "geometry": geometry, "rates": dataclasses.asdict(rates),
           "patients": [t for _, t, _ in results]}
  (out_dir / TRUTH_FILE).write_text(json.dumps(truth, indent=1) + "\n")
  total = {k: sum(c[k] for _, _, c in results) for k in results[0][2]}
  # Without images only the clinical row can be broken.
  broken = {t["patient_id"]: t["broken"] for _, t, _ in results
            if t["broken"] and (images or t["broken"] == "bad_clinical_row")}
  return ExportSummary(out_dir, num_patients, total["studies"], total["series"], total["files"],
                       total["bytes"], broken, time.perf_counter() - start)


def define_flags(values: flags.FlagValues) -> None:
  """The command line (input_pipeline/cli.py)."""
  flags.DEFINE_string("out", None, "Export folder to write (created).", required=True,
                      flag_values=values)
  flags.DEFINE_integer("patients", 24, "Synthetic patients (the first 11 are the unusual "
                       "encodings and the deliberately broken cases).", lower_bound=1,
                       flag_values=values)
  flags.DEFINE_integer("seed", 0, "Seed: the same seed writes the same export.",
                       flag_values=values)
  flags.DEFINE_enum("geometry", "tiny", sorted(GEOMETRIES), "Scanner resolution of the "
                    "written studies: " + "; ".join(
                        f"{name}: {spec.describe()}" for name, spec in sorted(GEOMETRIES.items())),
                    flag_values=values)
  flags.DEFINE_bool("clinical_only", False, "Write clinical.csv and the truth only, no images.",
                    flag_values=values)
  flags.DEFINE_integer("workers", 1, "Processes writing patients.", lower_bound=1,
                       flag_values=values)
  flags.DEFINE_bool("negative_control", False, "Draw each patient's images for another, "
                    "independent patient: images without label evidence (Rates).",
                    flag_values=values)


def generate(options: flags.FlagValues, arguments: Sequence[str]) -> int:
  """The command: writes the export and prints its summary."""
  if arguments:
    print(f"synthetic: unexpected arguments {list(arguments)}", file=sys.stderr)
    return 2
  print(generate_export(options.out, options.patients, options.seed, options.geometry,
                        rates=Rates(negative_control=options.negative_control),
                        images=not options.clinical_only, workers=options.workers))
  return 0


def main(argv: Sequence[str]) -> int:
  """The command for callers in Python: ``argv`` without the program name."""
  return cli.call("synthetic", define_flags, generate, argv)


if __name__ == "__main__":
  cli.run_program(define_flags, generate)

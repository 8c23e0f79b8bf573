"""Measures the mammogram segmentation on a synthetic export, digital and as digitised film.

  python -m input_pipeline.synthetic --out /tmp/export --patients 40 --geometry demo
  python -m input_pipeline.synthetic.segmentation_check --export /tmp/export

For every mammogram of the export (its truth records the breast's bounding box):

* digital: the file as written (MONOCHROME1 for one patient). The segmentation's bounding box
  must match the truth's within :data:`BOX_TOLERANCE` of the image's longer side.
* film: the same breast turned into a film scan by
  :func:`~input_pipeline.synthetic.images.digitised_film` (film-edge strips touching the breast
  at the chest wall, label, ruler, skin marker), written as 16-bit MONOCHROME2 and as 12-bit
  MONOCHROME1. The mask must keep none of the artefacts' pixels and cover the breast (the
  digital mask without the marker and strips) with an intersection over union of at least
  :data:`MIN_IOU`.

Each image also goes through ``preprocess_mammogram`` at the paper's 1024 x 512; its fill is how
much of the output the breast spans along the fitted direction (1 when it touches both sides).
A failure is an error, a box or IoU out of tolerance, an artefact pixel kept, or a fill below
:data:`MIN_FILL`. Prints one line per failure and a summary per variant.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from absl import app, flags

from input_pipeline import mammogram
from input_pipeline.dicom_io import PreprocessError
from input_pipeline.synthetic.dicom_writer import write_mammogram
from input_pipeline.synthetic.images import digitised_film

BOX_TOLERANCE = 0.01
MIN_IOU = 0.97
MIN_FILL = 0.97
_TAGS = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.16"}

_EXPORT = flags.DEFINE_string("export", None, "A synthetic export folder (holding "
                              "synthetic_truth.json), e.g. from `python -m "
                              "input_pipeline.synthetic --geometry demo`.", required=True)


def fill(out: np.ndarray) -> float:
  """How much of ``out`` the breast (non-zero pixels) spans along the fitted direction."""
  rows, columns = np.nonzero(out.any(axis=1))[0], np.nonzero(out.any(axis=0))[0]
  if not rows.size:
    return 0.0
  return max((rows[-1] - rows[0] + 1) / out.shape[0],
             (columns[-1] - columns[0] + 1) / out.shape[1])


def _box(mask: np.ndarray) -> np.ndarray:
  rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
  return np.array([rows[0], rows[-1] + 1, columns[0], columns[-1] + 1])


def _write_film(folder: Path, film: np.ndarray, monochrome1: bool) -> Path:
  if monochrome1:  # a 12-bit scanner storing film density
    stored = 4095 - (film.astype(np.int64) >> 4)
    return write_mammogram(folder / "film_m1.dcm", stored, laterality="", view="", tags=_TAGS,
                           photometric="MONOCHROME1", bits_stored=12)
  return write_mammogram(folder / "film_m2.dcm", film, laterality="", view="", tags=_TAGS)


def check(export: Path) -> dict[str, dict[str, list]]:
  """Per variant ('digital', 'film MONOCHROME2 16-bit', 'film MONOCHROME1 12-bit'): the fills
  and the failures ('file: why')."""
  truth = json.loads((export / "synthetic_truth.json").read_text())
  options = mammogram.MammogramOptions()
  results: dict[str, dict[str, list]] = {}

  def record(variant: str, name: str, problem: str | None, out: np.ndarray | None) -> None:
    entry = results.setdefault(variant, {"fills": [], "failures": []})
    value = fill(out) if out is not None else 0.0
    entry["fills"].append(value)
    if problem is None and value < MIN_FILL:
      problem = f"fill {value:.3f}"
    if problem:
      entry["failures"].append(f"{name}: {problem}")

  rng = np.random.default_rng(truth["seed"])
  with tempfile.TemporaryDirectory() as tmp:
    for patient in truth["patients"]:
      for image_truth in (patient.get("mammogram") or {}).get("series", []):
        path = export / image_truth["file"]
        name = f"{patient['patient_id']} {image_truth['description']}"
        try:
          values, _ = mammogram._decode(path)
          mask = mammogram.segment_breast(values)
          error = np.abs(_box(mask) - image_truth["breast_box_px"]).max() / max(values.shape)
          out = mammogram.preprocess_mammogram(path, options)
        except PreprocessError as e:
          record("digital", name, str(e), None)
          continue
        record("digital", name, f"box off by {error:.3f}" if error > BOX_TOLERANCE else None,
               out)
        chest_wall = image_truth["chest_wall_edge"]
        film, parts = digitised_film(rng, values, mask, chest_wall)
        for monochrome1 in (False, True):
          variant = "film MONOCHROME1 12-bit" if monochrome1 else "film MONOCHROME2 16-bit"
          film_path = _write_film(Path(tmp), film, monochrome1)
          try:
            film_mask = mammogram.segment_breast(mammogram._decode(film_path)[0])
            out = mammogram.preprocess_mammogram(film_path, options)
          except PreprocessError as e:
            record(variant, name, str(e), None)
            continue
          kept = {k: int((film_mask & parts[k]).sum()) for k in
                  ("strips", "label", "ruler", "marker")}
          iou = (film_mask & parts["breast"]).sum() / (film_mask | parts["breast"]).sum()
          problem = ", ".join(f"{k} {n} px kept" for k, n in kept.items() if n) or (
              f"IoU {iou:.3f}" if iou < MIN_IOU else None)
          record(variant, name, problem, out)
  return results


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  results = check(Path(_EXPORT.value))
  for variant, entry in results.items():
    for failure in entry["failures"]:
      print(f"FAIL {variant}: {failure}")
  for variant, entry in results.items():
    fills = np.array(entry["fills"])
    print(f"{variant}: {fills.size} images, {len(entry['failures'])} failures, fill min "
          f"{fills.min():.3f} median {np.median(fills):.3f}")


if __name__ == "__main__":
  app.run(main)

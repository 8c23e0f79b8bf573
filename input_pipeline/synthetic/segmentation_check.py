"""Measures the mammogram segmentation on synthetic mammograms, digital and as digitised film.

  python -m input_pipeline.synthetic --out /tmp/export --patients 40 --geometry demo
  python -m input_pipeline.synthetic.segmentation_check --export /tmp/export
  python -m input_pipeline.synthetic.segmentation_check --render 6 --geometry full

The mammograms are those of a synthetic export (``--export``), or the CC and MLO views of
``--render`` patients drawn as the export draws them and rendered at ``--geometry``'s size
without writing their MRI (the full geometry's 3328 x 2560 pixels, where an export would take
hours). For every mammogram (its truth records the breast's bounding box):

* digital: the file as written (MONOCHROME1 for one patient). The segmentation's bounding box
  must match the truth's within :data:`BOX_TOLERANCE` of the image's longer side.
* film: the same breast turned into a film scan by
  :func:`~input_pipeline.synthetic.images.digitised_film` (film-edge strips touching the breast
  at the chest wall, label, ruler, skin marker), written as 16-bit MONOCHROME2 and as 12-bit
  MONOCHROME1. The mask must keep none of the artefacts' pixels and cover the breast (the
  digital mask without the marker and strips) with an intersection over union of at least
  :data:`MIN_IOU`.

Each image also goes through ``preprocess_mammogram`` at the paper's 1024 x 512; its fill is how
much of that output the true breast spans along the direction its crop is fitted to (1 when it
touches both sides; a film edge kept across the image lowers it). A failure is an error, a box
or IoU out of tolerance, an artefact pixel kept, or a fill below :data:`MIN_FILL`. Prints one
line per failure and a summary per variant.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from absl import app, flags

from input_pipeline.ingestion import mammogram
from input_pipeline.ingestion.dicom_io import PreprocessError
from input_pipeline.synthetic import export as export_module
from input_pipeline.synthetic.dicom_writer import MammogramFileOptions, write_mammogram
from input_pipeline.synthetic.images import digitised_film, render_mammogram

BOX_TOLERANCE = 0.01
MIN_IOU = 0.97
MIN_FILL = 0.97
_TAGS = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.16"}

_EXPORT = flags.DEFINE_string("export", None, "A synthetic export folder (holding "
                              "synthetic_truth.json), e.g. from `python -m "
                              "input_pipeline.synthetic --geometry demo`.")
_RENDER = flags.DEFINE_integer("render", 0, "Instead of --export: render the mammograms of this "
                               "many synthetic patients.")
_GEOMETRY = flags.DEFINE_enum("geometry", "full", sorted(export_module.GEOMETRIES),
                              "Size of the rendered mammograms (--render).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the rendered patients (--render).")


def fill(breast: np.ndarray, crop: np.ndarray, size: tuple[int, int]) -> float:
  """How much of the output the breast spans along the direction the crop is fitted to.

  Args:
    breast, crop: [row0, row1, column0, column1) boxes of the true breast and of the mask the
      crop is cut to.
    size: the output's (rows, columns).

  Returns:
    1 when the breast touches both sides of the output; less when the crop holds something
    beside the breast (a film edge across the image halves it).
  """
  scale = max((crop[1] - crop[0]) / size[0], (crop[3] - crop[2]) / size[1])
  return max((breast[1] - breast[0]) / (scale * size[0]),
             (breast[3] - breast[2]) / (scale * size[1]))


def _box(mask: np.ndarray) -> np.ndarray:
  rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
  return np.array([rows[0], rows[-1] + 1, columns[0], columns[-1] + 1])


def _write_film(folder: Path, film: np.ndarray, monochrome1: bool) -> Path:
  if monochrome1:  # a 12-bit scanner storing film density
    stored = 4095 - (film.astype(np.int64) >> 4)
    return write_mammogram(folder / "film_m1.dcm", stored, laterality="", view="", tags=_TAGS,
                           options=MammogramFileOptions(photometric="MONOCHROME1",
                                                        bits_stored=12))
  return write_mammogram(folder / "film_m2.dcm", film, laterality="", view="", tags=_TAGS)


def exported(export: Path) -> Iterator[tuple[str, Path, dict]]:
  """(name, file, truth) of every mammogram of a synthetic export."""
  truth = json.loads((export / "synthetic_truth.json").read_text())
  for patient in truth["patients"]:
    for image in (patient.get("mammogram") or {}).get("series", []):
      yield f"{patient['patient_id']} {image['description']}", export / image["file"], image


def rendered(patients: int, geometry: str, seed: int, folder: Path
             ) -> Iterator[tuple[str, Path, dict]]:
  """(name, file, truth) of the CC and MLO views of ``patients`` drawn as the export draws
  them, written into ``folder``."""
  spec = export_module.GEOMETRIES[geometry]
  for index in range(patients):
    _, latent, _ = export_module.draw_patient(seed, index, geometry)
    rng = np.random.default_rng([seed, index, 6])
    for view in ("CC", "MLO"):
      image, truth = render_mammogram(rng, latent, spec.mammogram_shape,
                                      spec.mammogram_spacing_mm, view)
      name = f"{export_module.patient_id(index)} {view}"
      path = write_mammogram(folder / f"{name.replace(' ', '_')}.dcm", image, laterality="",
                             view="", tags=_TAGS, options=MammogramFileOptions(bits_stored=14))
      yield name, path, truth


def check(images: Iterable[tuple[str, Path, dict]], seed: int = 0
          ) -> dict[str, dict[str, list]]:
  """Per variant ('digital', 'film MONOCHROME2 16-bit', 'film MONOCHROME1 12-bit'): the fills
  and the failures ('name: why')."""
  options = mammogram.MammogramOptions()
  results: dict[str, dict[str, list]] = {}

  def record(variant: str, name: str, problem: str | None, value: float = 0.0) -> None:
    entry = results.setdefault(variant, {"fills": [], "failures": []})
    entry["fills"].append(value)
    if problem is None and value < MIN_FILL:
      problem = f"fill {value:.3f}"
    if problem:
      entry["failures"].append(f"{name}: {problem}")

  rng = np.random.default_rng(seed)
  with tempfile.TemporaryDirectory() as tmp:
    for name, path, image_truth in images:
      try:
        values, _ = mammogram._decode(path)
        mask = mammogram.segment_breast(values)
        error = np.abs(_box(mask) - image_truth["breast_box_px"]).max() / max(values.shape)
        mammogram.preprocess_mammogram(path, options)
      except PreprocessError as e:
        record("digital", name, str(e))
        continue
      record("digital", name, f"box off by {error:.3f}" if error > BOX_TOLERANCE else None,
             fill(np.array(image_truth["breast_box_px"]), _box(mask), options.size))
      film, parts = digitised_film(rng, values, mask, image_truth["chest_wall_edge"])
      for monochrome1 in (False, True):
        variant = "film MONOCHROME1 12-bit" if monochrome1 else "film MONOCHROME2 16-bit"
        film_path = _write_film(Path(tmp), film, monochrome1)
        try:
          film_mask = mammogram.segment_breast(mammogram._decode(film_path)[0])
          mammogram.preprocess_mammogram(film_path, options)
        except PreprocessError as e:
          record(variant, name, str(e))
          continue
        kept = {k: int((film_mask & parts[k]).sum()) for k in
                ("strips", "label", "ruler", "marker")}
        iou = (film_mask & parts["breast"]).sum() / (film_mask | parts["breast"]).sum()
        problem = ", ".join(f"{k} {n} px kept" for k, n in kept.items() if n) or (
            f"IoU {iou:.3f}" if iou < MIN_IOU else None)
        record(variant, name, problem,
               fill(_box(parts["breast"]), _box(film_mask), options.size))
  return results


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(_EXPORT.value) == bool(_RENDER.value):
    raise app.UsageError("give --export or --render")
  with tempfile.TemporaryDirectory() as folder:
    images = (exported(Path(_EXPORT.value)) if _EXPORT.value else
              rendered(_RENDER.value, _GEOMETRY.value, _SEED.value, Path(folder)))
    results = check(images, _SEED.value)
  for variant, entry in results.items():
    for failure in entry["failures"]:
      print(f"FAIL {variant}: {failure}")
  for variant, entry in results.items():
    fills = np.array(entry["fills"])
    print(f"{variant}: {fills.size} images, {len(entry['failures'])} failures, fill min "
          f"{fills.min():.3f} median {np.median(fills):.3f}")


if __name__ == "__main__":
  app.run(main)

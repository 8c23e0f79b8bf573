"""Tests for input_pipeline/ingestion/mammogram.py: mammogram DICOM -> fixed-size breast image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from input_pipeline.ingestion import mammogram
from input_pipeline.ingestion.dicom_io import PreprocessError
from input_pipeline.synthetic.dicom_writer import MammogramFileOptions, write_mammogram
from input_pipeline.synthetic.images import digitised_film

_TAGS = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.9"}
SMALL = mammogram.MammogramOptions(size=(128, 64))
ROWS, COLUMNS = 300, 240
LABEL = np.s_[10:30, 0:40]  # burnt-in text block touching the edge opposite the chest wall
MARKER = np.s_[262:270, 70:78]  # a skin marker lying in the background


def _breast(chest_wall: str = "right", label: bool = True) -> np.ndarray:
  """[rows, columns] uint16 'For Presentation' values: a half-ellipse breast on dark air."""
  r, c = np.mgrid[:ROWS, :COLUMNS].astype(np.float64)
  depth = (COLUMNS - 1 - c) if chest_wall == "right" else c  # distance from the chest wall
  inside = ((r - 150) / 120) ** 2 + (depth / 160) ** 2 <= 1
  tissue = 20000 - 40 * depth + 8000 * np.exp(-((r - 140) ** 2 + (depth - 50) ** 2) / 400)
  image = np.where(inside, tissue, 40 + 20 * np.sin(r / 5) ** 2)
  if label:
    image[LABEL if chest_wall == "right" else np.s_[10:30, -40:]] = 60000
    image[MARKER if chest_wall == "right" else np.s_[262:270, -78:-70]] = 60000
  return np.rint(image).astype(np.uint16)


def _write(tmp_path, image, name="mg.dcm", tags=(), **kwargs):
  return write_mammogram(tmp_path / name, image, laterality="R", view="CC",
                         tags={**_TAGS, **dict(tags)}, options=MammogramFileOptions(**kwargs))


def test_segmentation_excludes_labels_and_markers():
  image = _breast().astype(np.float32)
  mask = mammogram.segment_breast(image)
  assert not mask[LABEL].any() and not mask[MARKER].any()
  r, c = np.mgrid[:ROWS, :COLUMNS]
  truth = ((r - 150) / 120) ** 2 + ((COLUMNS - 1 - c) / 160) ** 2 <= 1
  assert (mask != truth).sum() <= 0.02 * truth.sum()


def test_output_shape_dtype_range_and_chest_wall_side(tmp_path):
  out = mammogram.preprocess_mammogram(_write(tmp_path, _breast("right")), SMALL)
  assert out.shape == (128, 64) and out.dtype == np.uint16
  assert out.min() == 0 and out.max() >= 0.95 * 65535
  # The breast (240 x 160 px) is scaled by 1/2.5 into 96 x 64: it spans the full width, rows
  # 16..111, and touches the left edge (the chest wall) along its whole height.
  rows = np.nonzero(out.any(axis=1))[0]
  assert abs(rows[0] - 16) <= 1 and abs(rows[-1] - 111) <= 1
  assert (out[20:108, 0] > 0).all()
  assert out[:, :8].astype(np.float64).sum() > 10 * out[:, -8:].astype(np.float64).sum()
  # The dense blob sits 50 px (20 output px) from the chest wall, 110 px below the breast top
  # (row 140): output row (110 + 38.75) / 2.5 = 59.5.
  peak = np.unravel_index(np.argmax(out), out.shape)
  assert abs(peak[0] - 59.5) <= 2 and abs(peak[1] - 20) <= 2


def test_both_sides_and_labels_give_the_same_image(tmp_path):
  reference = mammogram.preprocess_mammogram(_write(tmp_path, _breast("right", label=False),
                                                    name="plain.dcm"), SMALL)
  for chest_wall in ("right", "left"):
    out = mammogram.preprocess_mammogram(_write(tmp_path, _breast(chest_wall),
                                                name=f"{chest_wall}.dcm"), SMALL)
    np.testing.assert_array_equal(out, reference)


def test_monochrome1_and_rescale_are_undone(tmp_path):
  image = _breast()
  reference = mammogram.preprocess_mammogram(_write(tmp_path, image, name="m2.dcm"), SMALL)
  inverted = mammogram.preprocess_mammogram(
      _write(tmp_path, 65535 - image, name="m1.dcm", photometric="MONOCHROME1"), SMALL)
  np.testing.assert_array_equal(inverted, reference)
  # With a window given in modality units, the stored values only match through the rescale.
  window = (14000.0, 12000.0)  # range 8000.5 .. 19999.5: clips the dense blob
  windowed = mammogram.preprocess_mammogram(
      _write(tmp_path, image, name="w.dcm", window=window), SMALL)
  stored = np.rint((image.astype(np.float64) + 1000) / 2).astype(np.uint16)
  rescaled = mammogram.preprocess_mammogram(
      _write(tmp_path, stored, name="r.dcm", window=window,
             tags={"RescaleSlope": 2.0, "RescaleIntercept": -1000.0}), SMALL)
  np.testing.assert_allclose(rescaled.astype(np.float64), windowed, atol=200)
  assert not np.array_equal(windowed, reference)
  # Clipping at the window's top saturates the whole dense blob at the maximum.
  assert (windowed == windowed.max()).sum() > 5 * (reference == reference.max()).sum()


def test_default_size_and_float16(tmp_path):
  path = _write(tmp_path, _breast())
  out = mammogram.preprocess_mammogram(path)
  assert out.shape == (1024, 512) and out.dtype == np.uint16
  half = mammogram.preprocess_mammogram(path, mammogram.MammogramOptions(dtype="float16"))
  assert half.shape == (1024, 512) and half.dtype == np.float16
  assert float(half.min()) == 0.0 and 0.95 <= float(half.max()) <= 1.0
  np.testing.assert_allclose(half.astype(np.float64) * 65535, out, atol=65535 * 1e-3)


def test_errors_name_the_file(tmp_path):
  path = _write(tmp_path, _breast())
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(PreprocessError, match=f"{path.name}.*pixel data"):
    mammogram.preprocess_mammogram(path, SMALL)
  blank = _write(tmp_path, np.full((64, 48), 100, np.uint16), name="blank.dcm")
  with pytest.raises(PreprocessError, match="blank.dcm.*no breast"):
    mammogram.preprocess_mammogram(blank, SMALL)
  with pytest.raises(ValueError, match="MammogramOptions.dtype"):
    mammogram.MammogramOptions(dtype="uint8")


# ---- digitised film -------------------------------------------------------------------------
FILM_ROWS, FILM_COLUMNS = 400, 320


def _digital(chest_wall: str, scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """A breast reaching the top and bottom edges at the chest wall (as on an MLO film): values
  and the true mask; ``scale`` multiplies the size."""
  rows, columns = FILM_ROWS * scale, FILM_COLUMNS * scale
  r, c = np.mgrid[:rows, :columns].astype(np.float64) / scale
  depth = c if chest_wall == "left" else FILM_COLUMNS - 1 / scale - c
  breast = ((r - FILM_ROWS / 2) / (FILM_ROWS / 2 + 2)) ** 2 + (depth / 220) ** 2 <= 1
  tissue = 9000 - 25 * depth + 5000 * np.exp(-((r - 180) ** 2 + (depth - 70) ** 2) / 900)
  noise = np.random.default_rng(1).normal(0, 40, breast.shape)
  return np.where(breast, tissue + noise, 50 + np.abs(noise)), breast


def _film(chest_wall: str, scale: int = 1):
  image, breast = _digital(chest_wall, scale)
  return digitised_film(np.random.default_rng(2), image, breast, chest_wall)


@pytest.mark.parametrize("chest_wall,scale", [("left", 1), ("right", 1), ("right", 3)])
def test_film_edges_label_ruler_and_skin_marker_are_not_breast(chest_wall, scale):
  """At scale 3 (1200 x 960) the mask comes from a copy block-averaged by 2."""
  film, truth = _film(chest_wall, scale)
  breast = _digital(chest_wall, scale)[1]
  # The strips do touch the breast at the chest wall, and the marker sits on its skin line.
  near_chest_wall = np.s_[:, :20] if chest_wall == "left" else np.s_[:, -20:]
  assert (ndimage.binary_dilation(truth["strips"]) & truth["breast"])[near_chest_wall].any()
  assert (truth["marker"] & breast).any()
  mask = mammogram.segment_breast(film.astype(np.float32))
  for artefact in ("strips", "label", "ruler", "marker"):
    assert not (mask & truth[artefact]).any(), artefact
  # The mask follows the breast to within a block along its outline, and takes all of it but
  # the margin (2 blocks) removed with the marker and the strips where they touch it.
  block = 1 if scale == 1 else 2
  outline = truth["breast"] ^ ndimage.binary_erosion(truth["breast"], iterations=block)
  assert not (mask & ~truth["breast"] & ~ndimage.binary_dilation(outline, iterations=block)).any()
  margin = ndimage.binary_dilation(truth["marker"] | truth["strips"], iterations=3 * block + 1)
  assert not (truth["breast"] & ~mask & ~margin & ~outline).any()


def _fill(out: np.ndarray) -> float:
  """How much of the output the breast spans along its fitted direction (1 = touches both)."""
  rows, columns = np.nonzero(out.any(axis=1))[0], np.nonzero(out.any(axis=0))[0]
  return max((rows[-1] - rows[0] + 1) / out.shape[0], (columns[-1] - columns[0] + 1) / out.shape[1])


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_film_gives_the_digital_output(tmp_path, photometric, bits):
  """The film scan, in every storage, preprocesses to what the artefact-free breast gives: the
  breast fills the crop, and no bright line runs along its top or bottom."""
  image, breast = _digital("right")
  film, truth = digitised_film(np.random.default_rng(2), image, breast, "right")
  # The reference: the same breast values with the marker and strip pixels as air.
  clean = np.where(truth["breast"], film, 0).astype(np.uint16)

  def stored(values):
    values = values.astype(np.int64) >> (16 - bits)
    return (2 ** bits - 1 - values) if photometric == "MONOCHROME1" else values

  out = mammogram.preprocess_mammogram(
      _write(tmp_path, stored(film), name="film.dcm", photometric=photometric,
             bits_stored=bits), SMALL)
  reference = mammogram.preprocess_mammogram(
      _write(tmp_path, stored(clean), name="clean.dcm", photometric=photometric,
             bits_stored=bits), SMALL)
  assert _fill(out) >= 0.98
  differs = np.abs(out.astype(np.float64) - reference) > 0.05 * 65535
  assert differs.mean() <= 0.01, differs.mean()
  # No full-width bright line: every output row is at most as full as the reference's.
  assert ((out > 0).mean(axis=1) <= (reference > 0).mean(axis=1) + 2 / out.shape[1]).all()

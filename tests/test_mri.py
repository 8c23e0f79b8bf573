"""Tests for input_pipeline/ingestion/mri.py: DCE exams -> LPS subtraction volumes on the breast box.

A phantom is defined in patient (LPS) space: a body block, two breasts anterior to it and an
enhancing lesion (a soft-edged sphere, present in the post-contrast volume only) at a known LPS
position. It is sampled on acquisition grids of several orientations, written as DICOM, and the
lesion must land where it belongs after preprocessing.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from input_pipeline.ingestion import mri
from input_pipeline.ingestion.dicom_io import DicomError, PreprocessError, load_series
from input_pipeline.ingestion.patient import DicomDce, NiftiDce, SeriesSelection
from input_pipeline.synthetic.dicom_writer import Geometry, SeriesOptions, write_mr_series

LESION_LPS = np.array([45.0, -15.0, 8.0])  # in the left breast, anterior, slightly superior
LESION_RADIUS_MM, LESION_EDGE_MM, LESION_ENHANCEMENT = 10.0, 2.0, 800.0
BODY, FAT = 300.0, 200.0
OPTIONS = mri.MriOptions(spacing_mm=(2.0, 2.0, 2.0), box=(48, 64, 100))


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
  a, b = np.deg2rad(z_deg), np.deg2rad(x_deg)
  rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
  return rx @ rz


# name -> (direction [3, 3] with columns = axis directions, spacing (x, y, z) mm, size (x, y, z)).
GEOMETRIES = {
    "axial": (np.eye(3), (3.0, 3.0, 4.0), (84, 56, 32)),
    "flipped": (np.diag([-1.0, 1.0, -1.0]), (3.0, 3.0, 4.0), (84, 56, 32)),
    "oblique": (_rotation(20, 15), (3.0, 3.0, 4.0), (92, 76, 44)),
    # Sagittal slices written along +x while row x column points to -x.
    "sagittal": (np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], np.float64), (3.0, 4.0, 3.0),
                 (56, 32, 84)),
}


def _phantom(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Pre- and post-contrast values at LPS points [..., 3] (mm)."""
  x, y, z = np.moveaxis(points, -1, 0)
  body = (np.abs(x) <= 100) & (y >= 10) & (y <= 70) & (np.abs(z) <= 70)
  breasts = np.zeros_like(body)
  for centre_x in (-50.0, 50.0):
    breasts |= (y < 10) & (((x - centre_x) / 42) ** 2 + ((y - 10) / 50) ** 2 + (z / 38) ** 2
                           <= 1)
  # A faint deterministic texture stands in for air noise; it is identical in pre and post.
  pre = np.where(body, BODY, np.where(breasts, FAT, 3.0 + 2.0 * np.sin(x / 7.0) ** 2))
  distance = np.linalg.norm(points - LESION_LPS, axis=-1)
  lesion = LESION_ENHANCEMENT / (1 + np.exp((distance - LESION_RADIUS_MM) / LESION_EDGE_MM))
  return pre, pre + lesion


def _sample(direction: np.ndarray, spacing, size, centre=(0.0, 0.0, 0.0)):
  """Phantom sampled on a grid centred on `centre`: (pre, post [z, y, x], origin)."""
  spacing, size = np.asarray(spacing), np.asarray(size)
  origin = np.asarray(centre) - direction @ (spacing * (size - 1) / 2)
  k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
  index = np.stack([i, j, k], axis=-1) * spacing
  pre, post = _phantom(origin + index @ direction.T)
  return pre, post, origin


def _write_exam(root, geometry: str, units: float = 1.0, **write_kwargs) -> DicomDce:
  """The phantom as a DICOM exam; `units` multiplies every value (a scanner's arbitrary units)."""
  direction, spacing, size = GEOMETRIES[geometry]
  pre, post, origin = _sample(direction, spacing, size)
  pre, post = units * pre, units * post
  grid = Geometry(origin, spacing, tuple(direction.ravel()))
  tags = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.7"}
  selections = []
  for name, volume in (("pre", pre), ("post", post)):
    paths = write_mr_series(root / name, volume, grid,
                            {**tags, "SeriesDescription": f"ax {name}"}, SeriesOptions(**write_kwargs))
    selections.append(SeriesSelection(files=tuple(paths), description=f"ax {name}"))
  return DicomDce(pre=selections[0], post=selections[1])


def _lesion_centroid(volume: mri.MriVolume) -> np.ndarray:
  """Intensity-weighted centroid of the enhancing voxels, in LPS mm."""
  values = volume.subtraction.astype(np.float64)
  weights = np.where(values > 0.1 * values.max(), values, 0.0)
  indices = np.stack(np.nonzero(weights), axis=-1)
  centroid_index = (indices * weights[weights > 0][:, None]).sum(0) / weights.sum()
  return volume.index_to_lps(centroid_index)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_lesion_lands_at_its_lps_position(tmp_path, geometry):
  volume = mri.preprocess_exam(_write_exam(tmp_path, geometry), OPTIONS)
  assert volume.subtraction.shape == (48, 64, 100)
  assert volume.subtraction.dtype == np.float16
  assert volume.spacing == (2.0, 2.0, 2.0)
  np.testing.assert_allclose(_lesion_centroid(volume), LESION_LPS, atol=1.0)


def test_box_is_placed_on_the_breasts(tmp_path):
  volume = mri.preprocess_exam(_write_exam(tmp_path, "axial"), OPTIONS)
  first = volume.index_to_lps(np.zeros(3))
  last = volume.index_to_lps(np.array(OPTIONS.box) - 1.0)
  centre = (first + last) / 2
  assert abs(centre[0]) <= 4.0  # body centred left-right (body spans x = -100..100)
  assert abs(centre[2]) <= 4.0  # breasts centred superior-inferior at z = 0
  # Breast tips at y = -40; the box starts 5 mm anterior of them, to within the coarse body
  # mask's 4 mm voxels.
  assert -52.0 <= first[1] - 1.0 <= -42.0
  assert last[1] > 70.0  # extends posteriorly past the chest wall


def test_relative_and_raw_intensities(tmp_path):
  exam = _write_exam(tmp_path, "axial")
  relative = mri.preprocess_exam(exam, OPTIONS)
  raw = mri.preprocess_exam(exam, mri.MriOptions(spacing_mm=(2.0, 2.0, 2.0), box=(48, 64, 100),
                                                 intensity="raw", dtype="int16"))
  assert raw.subtraction.dtype == np.int16 and raw.intensity_scale == 1.0
  # The lesion enhances by 800 scanner units; linear interpolation keeps the peak within 10%.
  assert 720 <= raw.subtraction.max() <= 800
  # The body's 99th percentile intensity is the body block's value.
  assert relative.intensity_scale == pytest.approx(BODY, rel=0.05)
  np.testing.assert_allclose(relative.subtraction.astype(np.float64) * relative.intensity_scale,
                             raw.subtraction, atol=2.0)


def test_scanner_units_do_not_change_relative_intensities(tmp_path):
  exam = _write_exam(tmp_path / "a", "axial")
  # The same exam from a scanner whose units are 3x larger, stored through a rescale slope.
  scaled = _write_exam(tmp_path / "b", "axial", units=3.0, rescale=(3.0, 0.0))
  pre = load_series(scaled.pre)
  assert pre.GetPixel(40, 50, 16) == pytest.approx(3 * BODY, abs=3.0)
  a = mri.preprocess_exam(exam, OPTIONS).subtraction.astype(np.float32)
  b = mri.preprocess_exam(scaled, OPTIONS).subtraction.astype(np.float32)
  np.testing.assert_allclose(a, b, atol=0.02)


def test_pre_post_grid_mismatch_is_refused_or_resampled(tmp_path):
  exam = _write_exam(tmp_path / "a", "axial")
  direction, spacing, size = GEOMETRIES["axial"]
  _, post, origin = _sample(direction, spacing, (size[0], size[1] - 4, size[2]))
  post_paths = write_mr_series(
      tmp_path / "b", post, Geometry(origin, spacing),
      {"StudyInstanceUID": "1.2.3", "SeriesDescription": "ax 1st pass"})
  mismatched = DicomDce(pre=exam.pre,
                        post=SeriesSelection(tuple(post_paths), description="ax 1st pass"))
  with pytest.raises(PreprocessError, match="series 'ax pre'.*84x56x32.*'ax 1st pass'.*84x52x32"):
    mri.preprocess_exam(mismatched, OPTIONS)
  resampled = mri.preprocess_exam(mismatched, mri.MriOptions(
      spacing_mm=(2.0, 2.0, 2.0), box=(48, 64, 100), on_size_mismatch="resample"))
  np.testing.assert_allclose(_lesion_centroid(resampled), LESION_LPS, atol=1.0)


def test_nifti_pre_post_gives_the_dicom_result(tmp_path):
  exam = _write_exam(tmp_path, "oblique")
  paths = {}
  for name, selection in (("pre", exam.pre), ("post", exam.post)):
    paths[name] = tmp_path / f"{name}.nii.gz"
    sitk.WriteImage(load_series(selection), str(paths[name]))
  from_dicom = mri.preprocess_exam(exam, OPTIONS)
  from_nifti = mri.preprocess_exam(NiftiDce(pre=paths["pre"], post=paths["post"]), OPTIONS)
  np.testing.assert_allclose(from_nifti.origin, from_dicom.origin, atol=1e-3)
  np.testing.assert_allclose(from_nifti.subtraction.astype(np.float32),
                             from_dicom.subtraction.astype(np.float32), atol=2e-3)


def test_nifti_subtraction_with_pre_gives_the_pre_post_result(tmp_path):
  exam = _write_exam(tmp_path, "axial")
  pre, post = load_series(exam.pre), load_series(exam.post)
  paths = {"pre": tmp_path / "pre.nii.gz", "sub": tmp_path / "sub.nii.gz"}
  sitk.WriteImage(pre, str(paths["pre"]))
  sitk.WriteImage(sitk.Subtract(post, pre), str(paths["sub"]))
  from_pair = mri.preprocess_exam(exam, OPTIONS)
  from_subtraction = mri.preprocess_exam(NiftiDce(pre=paths["pre"], subtraction=paths["sub"]),
                                         OPTIONS)
  assert from_subtraction.intensity_scale == from_pair.intensity_scale
  np.testing.assert_allclose(from_subtraction.subtraction.astype(np.float32),
                             from_pair.subtraction.astype(np.float32), atol=2e-3)


def test_ready_subtraction_nifti_is_boxed_from_its_own_body(tmp_path):
  direction, spacing, size = GEOMETRIES["flipped"]
  pre, post, origin = _sample(direction, spacing, size)
  # Real subtractions show the whole enhancing body faintly, not only the lesion.
  subtraction = sitk.GetImageFromArray((0.1 * pre + (post - pre)).astype(np.float32))
  subtraction.SetOrigin(tuple(origin))
  subtraction.SetSpacing(spacing)
  subtraction.SetDirection(tuple(direction.ravel()))
  path = tmp_path / "sub.nii.gz"
  sitk.WriteImage(subtraction, str(path))
  volume = mri.preprocess_exam(NiftiDce(subtraction=path), OPTIONS)
  assert volume.subtraction.shape == (48, 64, 100)
  np.testing.assert_allclose(_lesion_centroid(volume), LESION_LPS, atol=1.0)


def test_errors_name_the_input(tmp_path):
  exam = _write_exam(tmp_path, "axial")
  missing = DicomDce(pre=exam.pre, post=SeriesSelection(
      exam.post.files, temporal_position=2, description="ax post"))
  with pytest.raises(DicomError, match="'ax post'.*temporal position 2"):
    mri.preprocess_exam(missing, OPTIONS)
  with pytest.raises(PreprocessError, match="pre and post, or a subtraction"):
    mri.preprocess_exam(NiftiDce(pre=tmp_path / "pre.nii.gz"), OPTIONS)
  blank = write_mr_series(tmp_path / "blank", np.zeros((4, 8, 8)), Geometry((0, 0, 0), (4, 4, 4)),
                          {"StudyInstanceUID": "1.2.3"})
  selection = SeriesSelection(tuple(blank), description="ax blank")
  with pytest.raises(PreprocessError, match="series 'ax blank'.*no body found"):
    mri.preprocess_exam(DicomDce(pre=selection, post=selection), OPTIONS)


def test_options_are_validated():
  with pytest.raises(ValueError, match="MriOptions.intensity"):
    mri.MriOptions(intensity="zscore")
  with pytest.raises(ValueError, match="MriOptions.dtype='int16' needs intensity='raw'"):
    mri.MriOptions(dtype="int16")
  with pytest.raises(ValueError, match="MriOptions.box"):
    mri.MriOptions(box=(176, 176))
  assert mri.MriOptions(spacing_mm=[8, 8, 8], box=[22, 22, 44]).box == (22, 22, 44)

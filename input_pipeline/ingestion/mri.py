"""DCE-MRI exam -> subtraction volume on an LPS-aligned bilateral breast box (paper Methods).

Steps: load the pre- and post-contrast series; refuse (or, if asked, resample) a pair on
different grids, as the paper excluded them; subtract post - pre on the pre-contrast grid;
choose the output box from a coarse body mask of the pre-contrast volume; then resample to
isotropic spacing, orient to LPS and crop/pad to the box in ONE linear SimpleITK resample onto
the box grid (voxels outside the acquired field of view are 0).

The box (numpy order [z, y, x] = S-I x A-P x L-R voxels) is placed so that
  x: its centre is the centre of the body's left-right extent;
  y: it starts a few mm anterior of the most anterior skin surface and extends posteriorly;
  z: its centre is the centre of the breasts, weighting each axial slice by how far the body
     protrudes anteriorly there (the breasts protrude, the rest of the torso does not).
The body mask is computed on a block-averaged LPS copy at ~4 mm, so it costs little at any
input size.

Intensity: scanners report arbitrary units, so 'relative' divides the subtraction by a robust
scale of the pre-contrast body (99th percentile of the coarse pre-contrast volume inside the
body mask) and stores float16; 'raw' keeps scanner units (int16 clipped, or float16).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from input_pipeline.geometries import GEOMETRIES
from input_pipeline.ingestion.dicom_io import PreprocessError, load_nifti, load_series
from input_pipeline.ingestion.patient import DicomDce, MriExam, NiftiDce, SeriesSelection

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Spacing of the coarse copy that the body mask is computed on (mm); coarser inputs keep theirs.
_COARSE_MM = 4.0
# The box starts this far anterior of the most anterior skin surface (mm).
_ANTERIOR_MARGIN_MM = 5.0
# Body threshold = this fraction of the Otsu air/tissue threshold, so that dim (fat-suppressed)
# fat and skin stay inside the body.
_OTSU_FRACTION = 0.5
_BODY_PERCENTILE = 99.0
# Pre and post grids agree when origins differ by less than this fraction of a voxel.
_GRID_TOLERANCE = 0.1

INTENSITIES = ("relative", "raw")
DTYPES = ("float16", "int16")
ON_SIZE_MISMATCH = ("skip", "resample")


@dataclasses.dataclass(frozen=True)
class MriOptions:
  """How exams are turned into subtraction volumes.

  Attributes:
    spacing_mm: output voxel size (x, y, z) mm.
    box: output size in voxels, numpy order [z, y, x] (S-I, A-P, L-R).
    intensity: 'relative' (subtraction / pre-contrast body scale) or 'raw' (scanner units).
    dtype: 'float16' or 'int16' (int16 only with 'raw': relative values are of order 1).
    on_size_mismatch: 'skip' raises PreprocessError when pre and post lie on different grids
      (the paper excluded such exams); 'resample' resamples post onto the pre grid.
  """
  spacing_mm: tuple[float, float, float] = GEOMETRIES["full"].mri_spacing_mm
  box: tuple[int, int, int] = GEOMETRIES["full"].mri_box
  intensity: str = "relative"
  dtype: str = "float16"
  on_size_mismatch: str = "skip"

  def __post_init__(self):
    spacing = tuple(float(s) for s in self.spacing_mm)
    box = tuple(int(n) for n in self.box)
    if len(spacing) != 3 or min(spacing) <= 0:
      raise ValueError(f"MriOptions.spacing_mm must be 3 positive mm values, got "
                       f"{self.spacing_mm}")
    if len(box) != 3 or min(box) < 1 or box != tuple(self.box):
      raise ValueError(f"MriOptions.box must be 3 positive voxel counts [z, y, x], got "
                       f"{self.box}")
    for name, allowed in (("intensity", INTENSITIES), ("dtype", DTYPES),
                          ("on_size_mismatch", ON_SIZE_MISMATCH)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"MriOptions.{name} must be one of {allowed}, got "
                         f"{getattr(self, name)!r}")
    if self.intensity == "relative" and self.dtype == "int16":
      raise ValueError("MriOptions.dtype='int16' needs intensity='raw': relative intensities "
                       "are of order 1 and would be destroyed by rounding")
    object.__setattr__(self, "spacing_mm", spacing)
    object.__setattr__(self, "box", box)


@dataclasses.dataclass(frozen=True)
class MriVolume:
  """A preprocessed subtraction volume and where it lies.

  Attributes:
    subtraction: [z, y, x] post - pre, float16 or int16 (see MriOptions.intensity).
    origin: LPS position (x, y, z) mm of voxel [0, 0, 0]; the axes point to patient Left (x),
      Posterior (y) and Superior (z): the direction is the identity.
    spacing: voxel size (x, y, z) mm.
    intensity_scale: the scanner-unit value that 1.0 represents ('relative'), or 1.0 ('raw').
  """
  subtraction: np.ndarray
  origin: tuple[float, float, float]
  spacing: tuple[float, float, float]
  intensity_scale: float

  def index_to_lps(self, index_zyx: np.ndarray) -> np.ndarray:
    """Maps voxel indices [..., 3] in (z, y, x) order to LPS positions [..., 3] (x, y, z) mm."""
    index_xyz = np.asarray(index_zyx, np.float64)[..., ::-1]
    return np.asarray(self.origin) + index_xyz * np.asarray(self.spacing)


def _series_name(selection: SeriesSelection) -> str:
  folder = Path(selection.files[0]).parent if selection.files else "no files"
  return f"series '{selection.description}' ({folder})"


def _grid(image: sitk.Image) -> str:
  size = "x".join(str(n) for n in image.GetSize())
  spacing = "x".join(f"{s:.3g}" for s in image.GetSpacing())
  origin = ", ".join(f"{o:.1f}" for o in image.GetOrigin())
  return f"{size} voxels of {spacing} mm at ({origin})"


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
  spacing = np.asarray(a.GetSpacing())
  return (a.GetSize() == b.GetSize()
          and np.allclose(spacing, b.GetSpacing(), rtol=1e-3, atol=0)
          and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-3)
          and np.linalg.norm(np.subtract(a.GetOrigin(), b.GetOrigin()))
          <= _GRID_TOLERANCE * spacing.min())


def _subtract(pre: sitk.Image, post: sitk.Image, names: tuple[str, str],
              options: MriOptions) -> sitk.Image:
  """post - pre on the pre-contrast grid, float32."""
  if not _same_grid(pre, post):
    if options.on_size_mismatch == "skip":
      raise PreprocessError(
          f"pre-contrast {names[0]} is {_grid(pre)} but post-contrast {names[1]} is "
          f"{_grid(post)}; exams with mismatched pre/post grids are excluded "
          "(MriOptions.on_size_mismatch='resample' resamples post onto pre instead)")
    post = sitk.Resample(post, pre, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
  else:
    # Within tolerance but not bit-identical geometry would make SimpleITK refuse to subtract.
    post.CopyInformation(pre)
  return sitk.Subtract(post, pre)


def _coarse_lps(image: sitk.Image) -> sitk.Image:
  """Block-averaged copy of `image` on an LPS-aligned isotropic grid covering its extent."""
  spacing = np.asarray(image.GetSpacing())
  coarse = max(_COARSE_MM, float(spacing.min()))
  shrunk = sitk.BinShrink(image, [max(1, int(coarse // s)) for s in spacing])
  size = np.asarray(image.GetSize())
  corners = np.array([image.TransformContinuousIndexToPhysicalPoint(
      tuple(float(v) for v in np.where(bits, size - 0.5, -0.5)))
                      for bits in np.ndindex(2, 2, 2)])
  low, high = corners.min(axis=0), corners.max(axis=0)
  grid_size = [max(1, math.ceil((h - l) / coarse)) for l, h in zip(low, high)]
  return sitk.Resample(shrunk, grid_size, sitk.Transform(), sitk.sitkLinear,
                       tuple(float(v) for v in low + coarse / 2), (coarse,) * 3, _IDENTITY, 0.0,
                       sitk.sitkFloat32)


def _body_mask(coarse: sitk.Image, name: str) -> np.ndarray:
  """Largest connected bright region of the coarse volume: [z, y, x] bool."""
  otsu = sitk.OtsuThresholdImageFilter()
  otsu.Execute(coarse)
  threshold = _OTSU_FRACTION * otsu.GetThreshold()
  bright = sitk.GetArrayViewFromImage(coarse) > threshold
  if not threshold > 0 or not bright.any():
    raise PreprocessError(f"{name}: no body found (the volume is blank)")
  components = sitk.RelabelComponent(
      sitk.ConnectedComponent(sitk.GetImageFromArray(bright.astype(np.uint8))),
      sortByObjectSize=True)
  return sitk.GetArrayViewFromImage(components) == 1


def _box_origin(mask: np.ndarray, coarse: sitk.Image, options: MriOptions) -> np.ndarray:
  """LPS position (x, y, z) mm of voxel [0, 0, 0] of the output box."""
  step = coarse.GetSpacing()[0]
  start = np.asarray(coarse.GetOrigin())  # centre of coarse voxel 0, axes along L, P, S
  spacing = np.asarray(options.spacing_mm)
  extent = np.asarray(options.box[::-1]) * spacing  # x, y, z mm
  columns = np.flatnonzero(mask.any(axis=(0, 1)))
  body_x = start[0] + step * (columns[0] + columns[-1]) / 2
  slices = np.flatnonzero(mask.any(axis=(1, 2)))
  # Most anterior body voxel (smallest y) of each axial slice that holds body.
  anterior = mask[slices].any(axis=2).argmax(axis=1)
  protrusion = anterior.max() - anterior
  if protrusion.sum() > 0:
    breast_z = start[2] + step * float((slices * protrusion).sum() / protrusion.sum())
  else:
    breast_z = start[2] + step * (slices[0] + slices[-1]) / 2
  skin_y = start[1] + step * (anterior.min() - 0.5)
  box_start = np.array([body_x - extent[0] / 2, skin_y - _ANTERIOR_MARGIN_MM,
                        breast_z - extent[2] / 2])
  return box_start + spacing / 2


def _load(exam: MriExam, options: MriOptions) -> tuple[sitk.Image, sitk.Image, str]:
  """The subtraction, the volume to take the body from, and its name for messages."""
  if isinstance(exam, DicomDce):
    names = (_series_name(exam.pre), _series_name(exam.post))
    pre = load_series(exam.pre)
    return _subtract(pre, load_series(exam.post), names, options), pre, names[0]
  if isinstance(exam, NiftiDce):
    if exam.subtraction is not None:
      subtraction = load_nifti(exam.subtraction)
      if exam.pre is None:
        # Without a pre-contrast volume the enhancing tissue itself outlines the body.
        return subtraction, sitk.Abs(subtraction), str(exam.subtraction)
      pre = load_nifti(exam.pre)
      if not _same_grid(pre, subtraction):
        raise PreprocessError(f"pre-contrast {exam.pre} is {_grid(pre)} but subtraction "
                              f"{exam.subtraction} is {_grid(subtraction)}")
      return subtraction, pre, str(exam.pre)
    if exam.pre is None or exam.post is None:
      raise PreprocessError(f"NIfTI exam needs pre and post, or a subtraction; got {exam}")
    pre = load_nifti(exam.pre)
    names = (str(exam.pre), str(exam.post))
    return _subtract(pre, load_nifti(exam.post), names, options), pre, names[0]
  raise TypeError(f"expected DicomDce or NiftiDce, got {type(exam).__name__}")


def preprocess_exam(exam: MriExam, options: MriOptions = MriOptions()) -> MriVolume:
  """Loads one DCE exam and returns its subtraction volume on the bilateral breast box.

  Args:
    exam: DICOM pre/post series, or NIfTI pre/post volumes or a ready subtraction (whose body
      then sets the box and, for 'relative', the scale: the 99th percentile of |subtraction|).
    options: output spacing, box, intensity and storage type, pre/post mismatch policy.

  Returns:
    MriVolume with `subtraction` of shape options.box [z, y, x] on an LPS-aligned grid.

  Raises:
    PreprocessError (DicomError for unreadable DICOM): the message names the file or series.
  """
  subtraction, body_source, name = _load(exam, options)
  coarse = _coarse_lps(body_source)
  mask = _body_mask(coarse, name)
  origin = _box_origin(mask, coarse, options)
  box = sitk.Resample(subtraction, [int(n) for n in options.box[::-1]], sitk.Transform(),
                      sitk.sitkLinear, tuple(float(v) for v in origin), options.spacing_mm,
                      _IDENTITY, 0.0, sitk.sitkFloat32)
  values = sitk.GetArrayFromImage(box)  # [z, y, x]
  if options.intensity == "relative":
    scale = float(np.percentile(sitk.GetArrayViewFromImage(coarse)[mask], _BODY_PERCENTILE))
    if not scale > 0:
      raise PreprocessError(f"{name}: the body's {_BODY_PERCENTILE:g}th percentile intensity is "
                            f"{scale}; cannot scale intensities")
    values /= scale
  else:
    scale = 1.0
  info = np.iinfo(np.int16) if options.dtype == "int16" else np.finfo(np.float16)
  values = np.clip(values, info.min, info.max)
  if options.dtype == "int16":
    values = np.rint(values)
  return MriVolume(subtraction=values.astype(options.dtype),
                   origin=tuple(float(v) for v in origin),
                   spacing=options.spacing_mm, intensity_scale=scale)

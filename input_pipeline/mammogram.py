"""Mammogram DICOM -> breast image of fixed size, chest wall on the left (paper Methods).

Steps: decode with pydicom; apply the modality LUT (rescale or LUT); clip to the VOI window's
range if the file has one; invert MONOCHROME1 so that dense tissue is bright; segment the breast
(threshold + largest connected component, so burnt-in labels and markers apart from the breast
are excluded); put the chest wall on the left; min-max normalise inside the breast (background
0); crop to the breast and fit it, keeping its aspect ratio, into the output size (zero padding
on the side away from the chest wall and equally above and below), with anti-aliasing.

VOI: a 'For Presentation' image's window says which range radiologists look at; values outside
it are saturated on their display, so we clip to it. The window's shape (LINEAR, SIGMOID) and
any VOI LUT table are not applied: after min-max normalisation the model sees the full 16-bit
detail inside the range. Without a window the whole range is used.

Laterality is decided from the image, not from ImageLaterality, which names the breast but not
how the detector stored it: the chest wall is the side where the breast touches the image edge
over the longest stretch.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from input_pipeline.dicom_io import PreprocessError, decoded_pixels, read_dicom

# The breast is segmented on a block-averaged copy whose longer side is about this many pixels.
_SEGMENTATION_SIDE = 1024
# Breast threshold = background level + this fraction of (Otsu threshold - background level), so
# that the thin, dim breast periphery near the skin line stays inside.
_OTSU_FRACTION = 0.5
# Width of the image border bands compared to find the chest wall (fraction of the width).
_EDGE_BAND = 0.1

_DTYPES = ("uint16", "float16")


@dataclasses.dataclass(frozen=True)
class MammogramOptions:
  """Output of mammogram preprocessing.

  Attributes:
    size: (rows, columns) of the output image; the paper uses 1024 x 512.
    dtype: 'uint16' (0..65535) or 'float16' (0..1).
  """
  size: tuple[int, int] = (1024, 512)
  dtype: str = "uint16"

  def __post_init__(self):
    size = tuple(int(n) for n in self.size)
    if len(size) != 2 or min(size) < 1:
      raise ValueError(f"MammogramOptions.size must be (rows, columns) > 0, got {self.size}")
    if self.dtype not in _DTYPES:
      raise ValueError(f"MammogramOptions.dtype must be one of {_DTYPES}, got {self.dtype!r}")
    object.__setattr__(self, "size", size)


def _useful_range(ds: Dataset) -> tuple[float, float] | None:
  """The VOI input range in modality units, from a VOI LUT or the first window, if any."""
  if ds.get("VOILUTSequence"):
    entries, first, _ = ds.VOILUTSequence[0].LUTDescriptor
    return float(first), float(first + (entries or 65536) - 1)
  center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
  if center is None or width is None:
    return None
  # Multi-valued windows list alternatives (e.g. normal, dense); the first is the default.
  center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (center, width))
  # DICOM PS3.3 C.11.2.1.2: the linear window maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2].
  return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def read_mammogram(path: Path | str) -> np.ndarray:
  """Decodes a mammogram into display-ordered values: [rows, columns] float32, dense = bright.

  Raises:
    PreprocessError: unreadable file, no or undecodable pixel data, not one greyscale frame.
  """
  path = Path(path)
  ds = read_dicom(path)
  if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1)) != 1:
    raise PreprocessError(f"{path}: expected one greyscale frame, found "
                          f"{ds.get('NumberOfFrames', 1)} frame(s) of "
                          f"{ds.get('SamplesPerPixel', 1)} sample(s)")
  values = apply_modality_lut(decoded_pixels(ds, path), ds).astype(np.float32)
  useful = _useful_range(ds)
  if useful is not None:
    values = np.clip(values, *useful)
  if ds.get("PhotometricInterpretation") == "MONOCHROME1":
    values = values.max() + values.min() - values
  return values


def segment_breast(image: np.ndarray) -> np.ndarray:
  """Breast mask of a display-ordered mammogram (dense tissue bright, air dark).

  Thresholds a block-averaged copy between background and tissue and keeps the largest
  connected component with its holes filled, so labels and markers not touching the breast are
  excluded.

  Args:
    image: [rows, columns] float values.

  Returns:
    [rows, columns] bool mask; empty if the image is uniform.
  """
  factor = max(1, math.ceil(max(image.shape) / _SEGMENTATION_SIDE))
  coarse = sitk.BinShrink(sitk.GetImageFromArray(image.astype(np.float32, copy=False)),
                          [factor, factor])
  values = sitk.GetArrayViewFromImage(coarse)
  background = float(values.min())
  if float(values.max()) <= background:
    return np.zeros(image.shape, bool)
  otsu = sitk.OtsuThresholdImageFilter()
  otsu.Execute(coarse)
  threshold = background + _OTSU_FRACTION * (otsu.GetThreshold() - background)
  components = sitk.RelabelComponent(
      sitk.ConnectedComponent(sitk.GetImageFromArray((values > threshold).astype(np.uint8))),
      sortByObjectSize=True)
  breast = sitk.BinaryFillhole(sitk.Equal(components, 1))
  mask = np.repeat(np.repeat(sitk.GetArrayViewFromImage(breast).astype(bool), factor, axis=0),
                   factor, axis=1)
  # BinShrink drops the last partial block; extend the mask over those edge pixels.
  pad = [(0, max(0, n - m)) for n, m in zip(image.shape, mask.shape)]
  return np.pad(mask, pad, mode="edge")[:image.shape[0], :image.shape[1]]


def _chest_wall_on_right(mask: np.ndarray) -> bool:
  band = max(1, int(round(_EDGE_BAND * mask.shape[1])))
  left, right = mask[:, :band].sum(), mask[:, -band:].sum()
  if left != right:
    return bool(right > left)
  return bool(np.nonzero(mask)[1].mean() > (mask.shape[1] - 1) / 2)


def _fit(breast: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Scales a [rows, columns] crop uniformly into `size` (rows, columns).

  The crop touches the left edge and is centred vertically; a Gaussian filter anti-aliases
  when shrinking; output pixels that no input pixel maps to are 0.
  """
  rows, columns = breast.shape
  scale = max(rows / size[0], columns / size[1])  # input pixels per output pixel
  image = sitk.GetImageFromArray(breast.astype(np.float32, copy=False))
  if scale > 1:
    image = sitk.SmoothingRecursiveGaussian(image, (scale - 1) / 2)
  top = (size[0] * scale - rows) / 2  # padding above, in input pixels
  # Output pixel (r, c) covers input pixels [c * scale, (c + 1) * scale) across, likewise down.
  origin = (scale / 2 - 0.5, scale / 2 - 0.5 - top)
  fitted = sitk.Resample(image, (size[1], size[0]), sitk.Transform(), sitk.sitkLinear, origin,
                         (scale, scale), (1.0, 0.0, 0.0, 1.0), 0.0, sitk.sitkFloat32)
  return sitk.GetArrayFromImage(fitted)


def preprocess_mammogram(path: Path | str,
                         options: MammogramOptions = MammogramOptions()) -> np.ndarray:
  """Reads and preprocesses one mammogram.

  Args:
    path: the DICOM file.
    options: output size and storage type.

  Returns:
    [rows, columns] = options.size image, chest wall on the left, breast min-max normalised
    (0..65535 as uint16, or 0..1 as float16), background and padding 0.

  Raises:
    PreprocessError: the file cannot be read or holds no breast; the message names the file.
  """
  path = Path(path)
  image = read_mammogram(path)
  mask = segment_breast(image)
  if not mask.any():
    raise PreprocessError(f"{path}: no breast found (the image is uniform)")
  if _chest_wall_on_right(mask):
    image, mask = image[:, ::-1], mask[:, ::-1]
  rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
  crop = np.s_[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
  image, mask = image[crop], mask[crop]
  low, high = float(image[mask].min()), float(image[mask].max())
  normalised = np.where(mask, (image - low) / max(high - low, np.finfo(np.float32).tiny), 0.0)
  fitted = np.clip(_fit(normalised, options.size), 0.0, 1.0)
  if options.dtype == "uint16":
    return np.rint(fitted * 65535).astype(np.uint16)
  return fitted.astype(np.float16)

"""Mammogram DICOM -> breast image of fixed size, chest wall on the left (paper Methods).

Steps: decode with pydicom (any transfer syntax, see dicom_io); apply the modality LUT
(rescale or LUT); invert MONOCHROME1 so that dense tissue is bright; segment the breast, on
digital mammograms and digitised film alike (:func:`segment_breast`: film edges, rulers, labels
and skin markers are removed even where they touch the breast); clip to the VOI window's range
if the file has one; put the chest wall on the left; min-max normalise inside the breast
(background 0); crop to the breast and fit it, keeping its aspect ratio, into the output size
(zero padding on the side away from the chest wall and equally above and below), with
anti-aliasing.

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
from scipy import ndimage, stats

from input_pipeline.geometries import GEOMETRIES
from input_pipeline.ingestion.dicom_io import PreprocessError, decoded_pixels, read_dicom

# The breast is segmented on a block-averaged copy whose longer side is about this many pixels.
_SEGMENTATION_SIDE = 1024
# The breast is what stands above the air (the median of the class below the lower of two Otsu
# thresholds) by this many robust standard deviations of the air's noise, so that the thin, dim
# periphery near the skin line stays inside; but by no less than _MIN_FRACTION and no more
# than _MAX_FRACTION of the way up to that Otsu threshold (air clipped to one value has no
# noise; very noisy air would lift the threshold into the tissue).
_AIR_NOISE = 5.0
_MIN_FRACTION = 0.1
_MAX_FRACTION = 0.5
# Width of the image border bands compared to find the chest wall (fraction of the width).
_EDGE_BAND = 0.1
# Film edges and rulers (see _band_edge): a band along a border starts within _BORDER_GAP of
# it at _BORDER_COVERAGE of the positions along it, and reaches at most _BORDER_DEPTH inward.
_BORDER_GAP = 0.02
_BORDER_COVERAGE = 0.95
_BORDER_DEPTH = 0.25
# Radiopaque objects: pixels within this fraction of the value range below the maximum, in
# regions at most this fraction of the foreground, bordering the air along at least this
# fraction of their outline; removed with a margin (pixels).
_PLATEAU = 0.02
_MAX_OBJECT_FRACTION = 0.25
_OBJECT_AIR_BORDER = 0.25
_OBJECT_MARGIN = 2.0
# Bridges narrower than twice this fraction of the longer side are cut (about 20 mm on film).
_BRIDGE_RADIUS = 0.01

_DTYPES = ("uint16", "float16")


@dataclasses.dataclass(frozen=True)
class MammogramOptions:
  """Output of mammogram preprocessing.

  Attributes:
    size: (rows, columns) of the output image; the paper uses 1024 x 512.
    dtype: 'uint16' (0..65535) or 'float16' (0..1).
  """
  size: tuple[int, int] = GEOMETRIES["full"].mg_size
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


def _decode(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
  """(display-ordered values before the VOI window, the window's range in those values)."""
  ds = read_dicom(path)
  if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1)) != 1:
    raise PreprocessError(f"{path}: expected one greyscale frame, found "
                          f"{ds.get('NumberOfFrames', 1)} frame(s) of "
                          f"{ds.get('SamplesPerPixel', 1)} sample(s)")
  values = apply_modality_lut(decoded_pixels(ds, path), ds).astype(np.float32)
  useful = _useful_range(ds)
  if ds.get("PhotometricInterpretation") == "MONOCHROME1":
    flip = float(values.max()) + float(values.min())
    values = flip - values
    useful = None if useful is None else (flip - useful[1], flip - useful[0])
  return values, useful


def read_mammogram(path: Path | str) -> np.ndarray:
  """Decodes a mammogram into display-ordered values: [rows, columns] float32, dense = bright,
  clipped to the VOI window's range when the file has one.

  Raises:
    PreprocessError: unreadable, truncated file, no or undecodable pixel data, not one
      greyscale frame.
  """
  values, useful = _decode(Path(path))
  return values if useful is None else np.clip(values, *useful)


def _largest_component(mask: np.ndarray) -> np.ndarray:
  labels, count = ndimage.label(mask)
  if count <= 1:
    return labels > 0
  sizes = np.bincount(labels.ravel())
  sizes[0] = 0
  return labels == int(np.argmax(sizes))


def _within(mask: np.ndarray, radius: float) -> np.ndarray:
  """Pixels within ``radius`` (Euclidean, pixels) of ``mask``: a dilation by a disk."""
  if not mask.any():
    return mask.copy()
  return ndimage.distance_transform_edt(~mask) <= radius


def _band_edge(lines: np.ndarray) -> np.ndarray | None:
  """Where a film edge or ruler along one border ends, per position along that border.

  Args:
    lines: [depth, length] foreground, line 0 at the border.

  Returns:
    [length] number of lines to clear from the border, or None when no band runs along it.
    A band starts (after a scanner's margin at most) within :data:`_BORDER_GAP` of the border
    at :data:`_BORDER_COVERAGE` of the positions, and where it stands alone, ends within
    :data:`_BORDER_DEPTH`. Film edges are straight: a line fitted to where the band ends
    alone (robustly: a label or a ruler's ticks may join it) is extended across the positions
    where the breast touches it, and everything out to it goes.
  """
  depth, length = lines.shape
  gap = max(1, math.ceil(_BORDER_GAP * depth))
  starts = lines[:gap].any(axis=0)
  if starts.mean() < _BORDER_COVERAGE:
    return None
  first = np.argmax(lines[:gap], axis=0)
  limit = max(gap + 1, math.ceil(_BORDER_DEPTH * depth))
  # First background line after the band's start, per position (limit: not within reach).
  after = np.arange(limit)[:, None] >= first[None, :]
  ends = np.where((~lines[:limit] & after).any(axis=0),
                  np.argmax(~lines[:limit] & after, axis=0), limit)
  alone = starts & (ends < limit)
  if alone.mean() < 0.5:
    return None
  position = np.arange(length)
  # Theil-Sen first (a label or ruler ticks merged with the band are outliers), then least
  # squares on the positions within 2 lines of it.
  slope, offset = stats.theilslopes(ends[alone], position[alone])[:2]
  keep = alone & (np.abs(ends - (slope * position + offset)) <= 2.0)
  slope, offset = np.polyfit(position[keep], ends[keep], 1)
  residual = ends - (slope * position + offset)
  keep &= np.abs(residual) <= 2.0
  margin = float(residual[keep].max(initial=0.0)) + 1.0
  return np.ceil(slope * position + offset + margin).clip(0, depth).astype(int)


def _clear_border_bands(foreground: np.ndarray, chest_wall_on_right: bool) -> np.ndarray:
  """Removes film edges and rulers: straight bands along the image border (see
  :func:`_band_edge`), even where the breast touches them.

  The breast itself never runs along a whole border: it spans the chest-wall side at most. So
  that side's columns are left to the other steps; along the other three borders, a band that
  covers the border end to end is not breast.
  """
  cleared = foreground.copy()
  views = {"top": lambda a: a, "bottom": lambda a: a[::-1],
           "left": lambda a: a.T, "right": lambda a: a[:, ::-1].T}
  for side, view in views.items():
    if side == ("right" if chest_wall_on_right else "left"):
      continue
    edge = _band_edge(view(foreground))
    if edge is not None:
      band = view(cleared)  # a view: writing it clears ``cleared``
      band[np.arange(band.shape[0])[:, None] < edge[None, :]] = False
  return cleared


def _drop_radiopaque(values: np.ndarray, foreground: np.ndarray, background: float
                     ) -> np.ndarray:
  """Removes markers, labels and film edges that touch the breast: regions at the image's
  saturation level (within :data:`_PLATEAU` of the maximum) that come within
  :data:`_OBJECT_MARGIN` + 1 pixels of the air along at least :data:`_OBJECT_AIR_BORDER` of
  their outline.

  Tissue that reaches that level (dense tissue of an image whose detector saturates) lies inside
  the breast, bordered by tissue, and stays; so does anything larger than
  :data:`_MAX_OBJECT_FRACTION` of the foreground.
  """
  top = float(values.max())
  bright = foreground & (values >= top - _PLATEAU * (top - background))
  labels, count = ndimage.label(bright)
  if not count:
    return foreground
  eight = np.ones((3, 3), bool)
  # Outline pixels of each component, and those of them near the air: within the margin, as
  # block averaging and the object's own blur give it a rim between the plateau and the air.
  outline = bright & ~ndimage.binary_erosion(bright, eight, border_value=1)
  air = outline & _within(~foreground, _OBJECT_MARGIN + 1)
  index = np.arange(count + 1)
  on_air = ndimage.sum_labels(air, labels, index)
  around = ndimage.sum_labels(outline, labels, index)
  sizes = np.bincount(labels.ravel(), minlength=count + 1)
  limit = _MAX_OBJECT_FRACTION * foreground.sum()
  objects = np.isin(labels, [k for k in range(1, count + 1) if sizes[k] <= limit
                             and on_air[k] >= _OBJECT_AIR_BORDER * around[k]])
  # Their blurred rims lie between the plateau and the tissue: take a margin with them.
  return foreground & ~_within(objects, _OBJECT_MARGIN)


def segment_breast(image: np.ndarray) -> np.ndarray:
  """Breast mask of a display-ordered mammogram (dense tissue bright, air dark).

  On a block-averaged copy (longer side about :data:`_SEGMENTATION_SIDE` pixels):
    1. threshold above the air's noise (see _AIR_NOISE; three-class Otsu finds the air);
    2. remove straight bands along the border (film edges of a digitised film, rulers), which
       often touch the breast;
    3. remove radiopaque objects touching the air: skin markers, labels, film edges at the
       saturation level, even where they touch the breast;
    4. cut thin bridges (an opening by a disk of radius :data:`_BRIDGE_RADIUS` of the longer
       side), keep the largest connected region, give back the fine outline within that radius
       of it (skin line, nipple), and fill its holes.
  Labels and markers apart from the breast fall away in 4.

  Args:
    image: [rows, columns] float values.

  Returns:
    [rows, columns] bool mask; empty if the image is uniform.
  """
  factor = max(1, math.ceil(max(image.shape) / _SEGMENTATION_SIDE))
  coarse = sitk.BinShrink(sitk.GetImageFromArray(image.astype(np.float32, copy=False)),
                          [factor, factor])
  values = sitk.GetArrayFromImage(coarse)
  background = float(values.min())
  if float(values.max()) <= background:
    return np.zeros(image.shape, bool)
  # Three classes, not two: with bright film edges and labels (a film scan), a two-class split
  # falls between them and the tissue; the lower of two thresholds separates the air.
  otsu = sitk.OtsuMultipleThresholdsImageFilter()
  otsu.SetNumberOfThresholds(2)
  otsu.SetNumberOfHistogramBins(256)
  otsu.Execute(coarse)
  split = min(otsu.GetThresholds())
  air = values[values <= split]
  level = float(np.median(air))
  spread = 1.4826 * float(np.median(np.abs(air - level)))  # the air's noise, robustly
  gap = split - level
  foreground = values > level + np.clip(_AIR_NOISE * spread, _MIN_FRACTION * gap,
                                        _MAX_FRACTION * gap)
  foreground = _clear_border_bands(foreground, _chest_wall_on_right(foreground))
  foreground = _drop_radiopaque(values, foreground, background)
  radius = max(1.0, _BRIDGE_RADIUS * max(values.shape))
  core = ndimage.distance_transform_edt(foreground) > radius
  core = _within(core, radius) if core.any() else foreground
  breast = foreground & _within(_largest_component(core), radius + 1)
  breast = ndimage.binary_fill_holes(_largest_component(breast))
  mask = np.repeat(np.repeat(breast, factor, axis=0), factor, axis=1)
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
  image, useful = _decode(path)
  # Segmented before the window's clipping, which can bring dense tissue up to the level of
  # markers and labels.
  mask = segment_breast(image)
  if useful is not None:
    image = np.clip(image, *useful)
  if not mask.any():
    raise PreprocessError(f"{path}: no breast found (a uniform image, or nothing left once "
                          "film edges, labels and markers are removed)")
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

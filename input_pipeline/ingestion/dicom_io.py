"""Reads DICOM series and NIfTI volumes into float32 SimpleITK images with LPS geometry.

Pixels are decoded with pydicom from the parsed dataset, so every transfer syntax pydicom reads
works: native (implicit or explicit VR), deflated, RLE, and through its decoder plugins
(project dependencies) JPEG baseline / extended / lossless, JPEG-LS and JPEG 2000.
SimpleITK/GDCM is not used for reading because it cannot read every file pydicom can (RLE
written by pydicom, for one). A file cut off before its pixel data ends is reported as
truncated whatever its syntax (:func:`truncation`). The geometry is assembled here from the
DICOM attributes and handed to SimpleITK, whose convention the rest of the pipeline uses:
array [z, y, x], origin = LPS mm of voxel (0, 0, 0), spacing (x, y, z) mm, direction 3x3
row-major with columns = axis directions.

Slices are ordered by their position along the slice normal, never by InstanceNumber, which
scanners number in acquisition order (descending, interleaved or per temporal position).
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.errors
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels, pixel_array

from input_pipeline.ingestion.patient import SeriesSelection

# Two slices closer than this along the normal are the same position (mm).
_DUPLICATE_TOLERANCE_MM = 0.01
# A slice step may differ from the median step by this fraction before it counts as a gap.
_STEP_TOLERANCE = 0.1
# Orientation cosines and relative pixel spacings that differ by less than this are equal.
_GEOMETRY_TOLERANCE = 1e-3


class PreprocessError(Exception):
  """One patient's image cannot be used; the message names the file or series and why.

  ``prepare`` catches it, reports the reason and skips the patient.
  """


class DicomError(PreprocessError):
  """A DICOM file or series is unreadable or inconsistent."""


@dataclasses.dataclass(frozen=True)
class _Frame:
  """One 2D image: a single-frame file, or one frame of a multi-frame file."""
  path: Path
  frame_index: int | None  # position in a multi-frame file; None for a single-frame file
  position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
  orientation: np.ndarray  # (6,) ImageOrientationPatient (row direction, column direction)
  pixel_spacing: np.ndarray  # (2,) PixelSpacing: between rows, between columns (mm)
  shape: tuple[int, int]  # rows, columns
  slope: float
  intercept: float
  temporal_position: int | None


def _where(path: Path, description: str) -> str:
  return f"{path} (series '{description}')" if description else str(path)


_PIXEL_DATA = (0x7FE0, 0x0010)
_ITEM, _SEQUENCE_DELIMITER = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
_LONG_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN")


def _encapsulated_end(handle, size: int) -> int | None:
  """Walks the items of encapsulated (compressed) Pixel Data from ``handle``'s position to the
  sequence delimiter; returns where it ends, or None when the file ends first."""
  position = handle.tell()
  while position + 8 <= size:
    handle.seek(position)
    group, element, length = struct.unpack("<HHI", handle.read(8))
    position += 8
    if (group, element) == _SEQUENCE_DELIMITER:
      return position
    if (group, element) != _ITEM:
      return position  # not an item: malformed, which decoding reports in its own words
    position += length
  return None


def pixel_data_problem(handle, ds: Dataset, size: int) -> str | None:
  """Why the Pixel Data element that starts at ``handle``'s position is cut off, or None.

  ``dcmread(stop_before_pixels=True)`` leaves the file at the Pixel Data tag. A native
  element's declared length says where the file must end; an encapsulated one (any compressed
  syntax) must reach its sequence delimiter item. A cut-off download is so named cheaply, from
  the header, rather than as a decoding failure.

  Args:
    handle: the open file, positioned after the header.
    ds: the header read from it (for its byte order and VR encoding).
    size: the file's size in bytes.
  """
  start = handle.tell()
  head = handle.read(12)
  if not head:
    return None  # the file ends after a whole element: it has no pixel data, a different fault
  if len(head) < 8:
    return f"the file ends at byte {size}, before its pixel data (truncated file)"
  implicit, little = ds.original_encoding
  order = "<" if little is not False else ">"
  if struct.unpack(order + "HH", head[:4]) != _PIXEL_DATA:
    return None
  if implicit:
    header, length = 8, struct.unpack(order + "I", head[4:8])[0]
  elif head[4:6] in _LONG_VRS:
    if len(head) < 12:
      return f"the file ends at byte {size}, inside its pixel data header (truncated file)"
    header, length = 12, struct.unpack(order + "I", head[8:12])[0]
  else:
    header, length = 8, struct.unpack(order + "H", head[6:8])[0]
  if length == 0xFFFFFFFF:
    handle.seek(start + header)
    if _encapsulated_end(handle, size) is None:
      return (f"{size} bytes, but its compressed pixel data ends before its last fragment "
              "(truncated file)")
    return None
  if start + header + length > size:
    return (f"{size} bytes, but its pixel data ends at byte {start + header + length} "
            "(truncated file)")
  return None


def truncation(path: Path | str) -> str | None:
  """Why the file at ``path`` is cut off (any transfer syntax), or None if it is whole.

  A deflated file is cut off when its zlib stream is incomplete; any other when its header or
  its Pixel Data ends early (:func:`pixel_data_problem`).
  """
  path = Path(path)
  try:
    size = path.stat().st_size
    with path.open("rb") as handle:
      try:
        ds = pydicom.dcmread(handle, stop_before_pixels=True)
      except zlib.error:
        return f"{size} bytes, its deflated data stream ends early (truncated file)"
      except (EOFError, struct.error):
        return f"the file ends at byte {size}, inside its header (truncated file)"
      if ds.file_meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return None  # the whole stream inflated: nothing is missing
      return pixel_data_problem(handle, ds, size)
  except Exception:  # a file too broken to parse has no truncation to name
    return None


def read_dicom(path: Path | str, *, description: str = "") -> Dataset:
  """Reads one DICOM file, header and pixel data; any failure becomes a :class:`DicomError`
  naming the file.

  Args:
    path: the file.
    description: SeriesDescription, for messages.
  """
  path = Path(path)
  try:
    return pydicom.dcmread(path)
  except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError, KeyError,
          zlib.error, struct.error) as e:
    cut = truncation(path)
    raise DicomError(f"{_where(path, description)}: "
                     + (cut or f"not a readable DICOM file ({e})")) from e


def decode_error(path: Path | str, error: Exception | None, description: str = "") -> DicomError:
  """The error for a file whose pixel data is missing (``error`` None) or cannot be decoded.

  Says 'truncated' when the file is cut off, whatever pydicom complained about (a short
  native element, a compressed one without its delimiter, which pydicom drops silently);
  otherwise pydicom's message, which names a missing decoder plugin when that is the cause.
  """
  path = Path(path)
  cut = truncation(path)
  if cut:
    return DicomError(f"{_where(path, description)}: {cut}")
  if error is None:
    return DicomError(f"{_where(path, description)}: no pixel data")
  message = " ".join(str(error).split())  # pydicom lists missing plugins on several lines
  return DicomError(f"{_where(path, description)}: cannot decode pixel data "
                    f"({type(error).__name__}: {message})")


def decoded_pixels(ds: Dataset, path: Path | str, description: str = "") -> np.ndarray:
  """All frames of a parsed dataset's pixel data, as stored (no rescale).

  Raises:
    DicomError: no, truncated or undecodable pixel data (see :func:`decode_error`).
  """
  if "PixelData" not in ds:
    raise decode_error(path, None, description)
  try:
    return pixel_array(ds)
  except Exception as e:  # pydicom raises many types for corrupt or truncated pixel data
    raise decode_error(path, e, description) from e


def _require(ds: Dataset, keyword: str, path: Path, description: str):
  value = ds.get(keyword)
  if value is None or value == "":
    raise DicomError(f"{_where(path, description)}: missing {keyword}")
  return value


def _vector(value, length: int, keyword: str, path: Path, description: str) -> np.ndarray:
  try:
    vector = np.asarray(value, np.float64).reshape(-1)
  except (TypeError, ValueError):
    vector = np.empty(0)
  if vector.size != length or not np.isfinite(vector).all():
    raise DicomError(f"{_where(path, description)}: {keyword} should hold {length} numbers, "
                     f"found {value!r}")
  return vector


# What a frame of an enhanced file takes from its functional groups: name -> (sequence,
# attribute).
_FRAME_ATTRIBUTES = {
    "temporal": ("FrameContentSequence", "TemporalPositionIndex"),
    "slope": ("PixelValueTransformationSequence", "RescaleSlope"),
    "intercept": ("PixelValueTransformationSequence", "RescaleIntercept"),
    "position": ("PlanePositionSequence", "ImagePositionPatient"),
    "orientation": ("PlaneOrientationSequence", "ImageOrientationPatient"),
    "spacing": ("PixelMeasuresSequence", "PixelSpacing"),
}


def _group_values(group: Dataset) -> dict[str, Any]:
  """The frame attributes one functional group (a per-frame or the shared item) sets, from
  the first item of each of its sequences."""
  firsts: dict[str, Dataset | None] = {}
  values = {}
  for name, (sequence, keyword) in _FRAME_ATTRIBUTES.items():
    if sequence not in firsts:
      items = group.get(sequence) or ()
      firsts[sequence] = items[0] if len(items) else None
    value = None if firsts[sequence] is None else firsts[sequence].get(keyword)
    if value is not None:
      values[name] = value
  return values


def _check_pixel_module(ds: Dataset, path: Path, description: str) -> tuple[int, int]:
  rows = int(_require(ds, "Rows", path, description))
  columns = int(_require(ds, "Columns", path, description))
  if int(ds.get("SamplesPerPixel", 1)) != 1:
    raise DicomError(f"{_where(path, description)}: {ds.SamplesPerPixel} samples per pixel; "
                     "only greyscale images are supported")
  return rows, columns


def _classic_frames(ds: Dataset, path: Path, description: str) -> list[_Frame]:
  shape = _check_pixel_module(ds, path, description)
  temporal = ds.get("TemporalPositionIdentifier")
  return [_Frame(
      path=path, frame_index=None,
      position=_vector(_require(ds, "ImagePositionPatient", path, description), 3,
                       "ImagePositionPatient", path, description),
      orientation=_vector(_require(ds, "ImageOrientationPatient", path, description), 6,
                          "ImageOrientationPatient", path, description),
      pixel_spacing=_vector(_require(ds, "PixelSpacing", path, description), 2, "PixelSpacing",
                            path, description),
      shape=shape,
      slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
      intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
      temporal_position=None if temporal is None else int(temporal))]


def _enhanced_frames(ds: Dataset, path: Path, description: str) -> list[_Frame]:
  shape = _check_pixel_module(ds, path, description)
  per_frame = ds.get("PerFrameFunctionalGroupsSequence")
  n_frames = int(ds.get("NumberOfFrames", 1))
  if per_frame is None or len(per_frame) != n_frames:
    raise DicomError(f"{_where(path, description)}: multi-frame file with {n_frames} frames "
                     "but no matching PerFrameFunctionalGroupsSequence")
  # A per-frame group's value wins over the shared group's, which is read once.
  shared = _group_values((ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0])

  def get(values: dict[str, Any], index: int, name: str) -> Any:
    if name not in values:
      sequence, keyword = _FRAME_ATTRIBUTES[name]
      raise DicomError(f"{_where(path, description)}: frame {index + 1} has no "
                       f"{sequence}.{keyword}")
    return values[name]

  frames = []
  for index, item in enumerate(per_frame):
    values = {**shared, **_group_values(item)}
    temporal = values.get("temporal")
    frames.append(_Frame(
        path=path, frame_index=index,
        position=_vector(get(values, index, "position"), 3, "ImagePositionPatient", path,
                         description),
        orientation=_vector(get(values, index, "orientation"), 6, "ImageOrientationPatient",
                            path, description),
        pixel_spacing=_vector(get(values, index, "spacing"), 2, "PixelSpacing", path,
                              description),
        shape=shape,
        slope=float(values.get("slope") or 1.0),
        intercept=float(values.get("intercept") or 0.0),
        temporal_position=None if temporal is None else int(temporal)))
  return frames


def _select_temporal(frames: list[_Frame], selection: SeriesSelection) -> list[_Frame]:
  wanted = selection.temporal_position
  if wanted is None:
    return frames
  kept = [f for f in frames if f.temporal_position == wanted]
  if not kept:
    present = sorted({f.temporal_position for f in frames if f.temporal_position is not None})
    found = (f"the series has temporal positions {present}" if present else
             "no file carries TemporalPositionIdentifier / TemporalPositionIndex")
    raise DicomError(f"series '{selection.description}' ({Path(selection.files[0]).parent}): no "
                     f"slice at temporal position {wanted}; {found}")
  return kept


def _check_consistent(frames: list[_Frame], description: str) -> None:
  first = frames[0]
  for frame in frames[1:]:
    what = None
    if frame.shape != first.shape:
      what = f"{frame.shape[0]}x{frame.shape[1]} pixels, not {first.shape[0]}x{first.shape[1]}"
    elif np.abs(frame.orientation - first.orientation).max() > _GEOMETRY_TOLERANCE:
      what = (f"ImageOrientationPatient {frame.orientation.tolist()}, not "
              f"{first.orientation.tolist()}")
    elif (np.abs(frame.pixel_spacing - first.pixel_spacing).max()
          > _GEOMETRY_TOLERANCE * first.pixel_spacing.min()):
      what = f"PixelSpacing {frame.pixel_spacing.tolist()}, not {first.pixel_spacing.tolist()}"
    if what:
      raise DicomError(f"{_where(frame.path, description)}: {what} as in {first.path}; the "
                       "files do not form one volume")


def _stack_geometry(frames: list[_Frame], description: str
                    ) -> tuple[list[_Frame], np.ndarray, tuple[float, float, float], np.ndarray]:
  """Orders frames along the slice normal and derives the volume geometry.

  Returns:
    frames sorted by position along the normal; origin (3,) LPS mm; spacing (x, y, z) mm;
    direction [3, 3] with columns = LPS directions of the x, y, z axes.
  """
  if len(frames) < 2:
    raise DicomError(f"{_where(frames[0].path, description)}: a volume needs at least 2 "
                     f"slices, found {len(frames)}")
  row = frames[0].orientation[:3] / np.linalg.norm(frames[0].orientation[:3])
  column = frames[0].orientation[3:] / np.linalg.norm(frames[0].orientation[3:])
  normal = np.cross(row, column)
  along = np.array([f.position @ normal for f in frames])
  order = np.argsort(along, kind="stable")
  frames = [frames[i] for i in order]
  along = along[order]
  steps = np.diff(along)
  duplicate = np.flatnonzero(steps < _DUPLICATE_TOLERANCE_MM)
  if duplicate.size:
    a, b = frames[duplicate[0]], frames[duplicate[0] + 1]
    raise DicomError(
        f"{_where(b.path, description)}: {duplicate.size} slice(s) share a position with "
        f"another (e.g. {a.path.name} at {along[duplicate[0]]:.2f} mm along the normal); "
        "several temporal positions or repeated slices in one series: select a temporal "
        "position or remove the duplicates")
  step = float(np.median(steps))
  uneven = np.flatnonzero(np.abs(steps - step) > _STEP_TOLERANCE * step)
  if uneven.size:
    i = uneven[0]
    raise DicomError(
        f"{_where(frames[i + 1].path, description)}: slice step of {steps[i]:.3f} mm after "
        f"{frames[i].path.name} where the other slices are {step:.3f} mm apart; missing or "
        "extra slices")
  offsets = np.stack([f.position for f in frames]) - frames[0].position
  in_plane = offsets - np.outer(offsets @ normal, normal)
  pixel_spacing = frames[0].pixel_spacing
  if np.linalg.norm(in_plane, axis=1).max() > 0.1 * pixel_spacing.min():
    raise DicomError(f"{_where(frames[-1].path, description)}: slices are shifted within "
                     "their plane from one to the next (a sheared stack); not supported")
  spacing_z = float((along[-1] - along[0]) / (len(frames) - 1))
  spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), spacing_z)
  return frames, frames[0].position, spacing, np.column_stack([row, column, normal])


def _decode(frames: list[_Frame], datasets: dict[Path, Dataset], description: str
            ) -> np.ndarray:
  """Pixel values of the frames after rescale: [z, y, x] float32."""
  volume = np.empty((len(frames), *frames[0].shape), np.float32)
  wanted: dict[Path, list[int]] = {}
  for z, frame in enumerate(frames):
    if frame.frame_index is None:
      # Through the parsed dataset, not pydicom's path reader, which cannot read deflated files.
      pixels = decoded_pixels(datasets[frame.path], frame.path, description)
      if pixels.shape != frame.shape:
        raise DicomError(f"{_where(frame.path, description)}: pixel data of shape "
                         f"{pixels.shape}, expected {frame.shape}")
      volume[z] = pixels * frame.slope + frame.intercept
    else:
      wanted.setdefault(frame.path, []).append(z)
  for path, slots in wanted.items():
    indices = [frames[z].frame_index for z in slots]
    try:
      decoded = list(iter_pixels(datasets[path], indices=indices))
    except Exception as e:  # pydicom raises many types for corrupt or truncated pixel data
      raise decode_error(path, e, description) from e
    for z, pixels in zip(slots, decoded):
      volume[z] = pixels * frames[z].slope + frames[z].intercept
  return volume


def load_series(selection: SeriesSelection) -> sitk.Image:
  """Loads one DICOM series (or one temporal position of a multiphase series) as a volume.

  Classic single-frame files and Enhanced MR multi-frame files are accepted, in any file order.
  Each file is read once, header and pixels together; the pixels of files outside the
  selected temporal position are let go as soon as their header has been checked.

  Args:
    selection: the files, the temporal position to keep (TemporalPositionIdentifier of classic
      files, FrameContentSequence.TemporalPositionIndex of enhanced frames) and the series
      description used in messages.

  Returns:
    float32 image [z, y, x] in physical units (RescaleSlope/Intercept applied per file or
    frame), origin = ImagePositionPatient of the first slice along the normal, spacing (x, y, z)
    mm from PixelSpacing and the slice positions, direction columns = row, column and normal
    directions (LPS).

  Raises:
    DicomError: unreadable or truncated file, missing attributes or pixel data, slices of
      different size or orientation, duplicated positions, gaps, no slice at the temporal
      position, or a Siemens MOSAIC image (ImageType MOSAIC: slices tiled in one image); the
      message names the file and the series.
  """
  description = selection.description
  if not selection.files:
    raise DicomError(f"series '{description}': no files")
  frames: list[_Frame] = []
  datasets: dict[Path, Dataset] = {}  # the parsed files that hold a selected frame
  for path in map(Path, selection.files):
    ds = read_dicom(path, description=description)
    if "MOSAIC" in (str(v).strip().upper() for v in ds.get("ImageType") or ()):
      raise DicomError(f"{_where(path, description)}: a Siemens MOSAIC image (the slices of a "
                       "volume tiled in one image), which this reader does not untile; convert "
                       "the series to NIfTI with a mosaic-aware converter (dcm2niix) and give "
                       "the volumes as NIfTI")
    if "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1)) > 1:
      if "PixelData" not in ds:
        raise decode_error(path, None, description)
      own = _enhanced_frames(ds, path, description)
    else:
      own = _classic_frames(ds, path, description)
    frames.extend(own)
    if any(selection.temporal_position in (None, f.temporal_position) for f in own):
      datasets[path] = ds
  frames = _select_temporal(frames, selection)
  _check_consistent(frames, description)
  frames, origin, spacing, direction = _stack_geometry(frames, description)
  image = sitk.GetImageFromArray(_decode(frames, datasets, description))
  image.SetOrigin(tuple(float(v) for v in origin))
  image.SetSpacing(spacing)
  image.SetDirection(tuple(float(v) for v in direction.ravel()))
  return image


def load_nifti(path: Path | str) -> sitk.Image:
  """Loads a NIfTI volume as a float32 image in SimpleITK's LPS convention.

  SimpleITK converts the file's RAS qform/sform to LPS, so the geometry is directly comparable
  with DICOM-loaded volumes.

  Raises:
    PreprocessError: unreadable file or not a 3D volume (a 4D file with one volume is accepted).
  """
  path = Path(path)
  try:
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
  except RuntimeError as e:
    raise PreprocessError(f"{path}: not a readable NIfTI file ({e})") from e
  if image.GetDimension() == 4 and image.GetSize()[3] == 1:
    image = sitk.Extract(image, (*image.GetSize()[:3], 0), (0, 0, 0, 0))
  if image.GetDimension() != 3:
    raise PreprocessError(f"{path}: a {image.GetDimension()}D image of size {image.GetSize()};"
                          " expected one 3D volume")
  return image


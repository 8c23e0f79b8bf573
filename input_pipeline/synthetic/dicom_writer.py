"""Writes DICOM files the way scanners do: the synthetic export and test fixtures use this.

Geometry follows SimpleITK's convention: a volume is a numpy array [slice, row, column]
(= [z, y, x]), ``origin`` is the LPS position in mm of voxel (0, 0, 0), ``spacing`` is
(x, y, z) in mm and ``direction`` the 3x3 matrix whose columns are the LPS directions of the
x (column index), y (row index) and z (slice index) axes. In DICOM terms the first two columns
become ImageOrientationPatient, PixelSpacing is (y, x) and slice k sits at
ImagePositionPatient = origin + k * spacing_z * direction[:, 2].

An MR series is written as classic single-frame files (one per slice and temporal position) or
as one Enhanced MR multi-frame file. Either way its shared header is built and encoded once
(:class:`dicom_encoding.SeriesEncoder`); what differs per file or per frame is encoded directly
from its values (:func:`dicom_encoding.encode`), in the bytes pydicom's own writer gives the same
dataset.
Compressed transfer syntaxes go through pydicom's encoders file by file.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import itertools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from input_pipeline.synthetic import dicom_encoding

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
DIGITAL_MAMMOGRAPHY_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # For Presentation

_STUDY_DEFAULTS = {
    "PatientID": "ANON", "PatientName": "Anonymous", "PatientBirthDate": "19700101",
    "PatientSex": "F", "StudyDate": "20200101", "StudyTime": "090000",
    "AccessionNumber": "", "StudyID": "1", "ReferringPhysicianName": "",
}

# Tags of the elements written per file or per frame.
_ACQUISITION_TIME = 0x00080032
_TRIGGER_TIME = 0x00181060
_CARDIAC_SYNCHRONIZATION = 0x00189118
_FRAME_ACQUISITION_DURATION = 0x00189220
_INSTANCE_NUMBER = 0x00200013
_IMAGE_POSITION = 0x00200032
_IMAGE_ORIENTATION = 0x00200037
_IN_STACK_POSITION = 0x00209057
_TEMPORAL_POSITION_IDENTIFIER = 0x00200100
_FRAME_CONTENT = 0x00209111
_PLANE_POSITION = 0x00209113
_PLANE_ORIENTATION = 0x00209116
_TEMPORAL_POSITION_INDEX = 0x00209128
_SLICE_LOCATION = 0x00201041
_PER_FRAME_GROUPS = 0x52009230
_PIXEL_DATA = 0x7FE00010


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Where a volume's voxels lie (see the module docstring)."""
  origin: Sequence[float]
  spacing: Sequence[float]
  direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1)


@dataclasses.dataclass(frozen=True)
class SeriesOptions:
  """How an MR series is acquired, numbered and stored, besides its pixels, geometry and tags.

  Attributes:
    rescale: (RescaleSlope, RescaleIntercept); stored = (value - intercept) / slope.
    signed: int16 (True) or uint16 storage.
    enhanced: one Enhanced MR multi-frame file instead of one file per slice.
    instance_order: 'ascending' (InstanceNumber grows with the slice index k, i.e. along
      direction[:, 2], which is against the row x column normal when the direction matrix is a
      reflection), 'descending', or 'shuffled' (by ``order_seed``); classic files are named by
      InstanceNumber either way, enhanced frames follow this order.
    order_seed: seed of the 'shuffled' order.
    transfer_syntax: any syntax pydicom writes: native little endian, deflated, RLE lossless,
      and JPEG-LS / JPEG 2000 (pydicom's encoder plugins).
    trigger_times_ms: per temporal position, TriggerTime (defaults to 0, 90 s, 180 s, ...).
    uid_seed: derive every UID the writer creates from this string (deterministic files);
      None draws random UIDs.
  """
  rescale: tuple[float, float] = (1.0, 0.0)
  signed: bool = True
  enhanced: bool = False
  instance_order: str = "ascending"
  order_seed: int = 0
  transfer_syntax: str = ExplicitVRLittleEndian
  trigger_times_ms: Sequence[float] | None = None
  uid_seed: str | None = None


@dataclasses.dataclass(frozen=True)
class MammogramFileOptions:
  """How a mammogram is stored, besides its pixels, laterality, view and tags.

  Attributes:
    pixel_spacing_mm: PixelSpacing and ImagerPixelSpacing.
    photometric: MONOCHROME2 or MONOCHROME1.
    window: (WindowCenter, WindowWidth) VOI, if the modality sets one.
    bits_stored: BitsStored (12, 14 or 16 for detectors and film scanners).
    transfer_syntax: as in :class:`SeriesOptions`; ``encoding`` goes to pydicom's encoder as
      keyword arguments (``jls_error`` for JPEG-LS near-lossless, ``j2k_psnr`` / ``j2k_cr``
      for JPEG 2000).
    uid_seed: as in :class:`SeriesOptions`.
  """
  pixel_spacing_mm: float = 0.07
  photometric: str = "MONOCHROME2"
  window: tuple[float, float] | None = None
  bits_stored: int = 16
  transfer_syntax: str = ExplicitVRLittleEndian
  encoding: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  uid_seed: str | None = None


def _uid_factory(uid_seed: str | None) -> Callable[[], str]:
  """Random UIDs, or UIDs derived from (uid_seed, counter) so that reruns write the same bytes."""
  if uid_seed is None:
    return generate_uid
  counter = itertools.count()
  return lambda: generate_uid(entropy_srcs=[uid_seed, str(next(counter))])


def _base(sop_class: str, modality: str, tags: Mapping[str, Any], transfer_syntax: str,
          new_uid: Callable[[], str]) -> Dataset:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = sop_class
  meta.MediaStorageSOPInstanceUID = new_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = modality
  for key, value in {**_STUDY_DEFAULTS, **tags}.items():
    setattr(ds, key, value)
  if "StudyInstanceUID" not in tags:
    raise ValueError("tags must carry StudyInstanceUID (shared by the series of one exam)")
  ds.SeriesInstanceUID = tags.get("SeriesInstanceUID") or new_uid()
  ds.FrameOfReferenceUID = tags.get("FrameOfReferenceUID") or new_uid()
  ds.ContentDate = ds.StudyDate
  ds.SamplesPerPixel = 1
  ds.BitsAllocated = 16
  ds.BitsStored = 16
  ds.HighBit = 15
  ds._transfer_syntax = transfer_syntax  # applied in _save
  return ds


def _pixel_header(ds: Dataset, rows_columns: tuple[int, int], signed: bool) -> None:
  ds.PixelRepresentation = 1 if signed else 0
  ds.PhotometricInterpretation = getattr(ds, "PhotometricInterpretation", "MONOCHROME2")
  ds.Rows, ds.Columns = rows_columns


def _pixel_bytes(stored: np.ndarray, signed: bool) -> bytes:
  return np.ascontiguousarray(stored.astype("<i2" if signed else "<u2")).tobytes()


def _set_pixels(ds: Dataset, stored: np.ndarray, signed: bool) -> None:
  _pixel_header(ds, stored.shape[-2:], signed)
  ds.PixelData = _pixel_bytes(stored, signed)


def _save(ds: Dataset, path: Path, **encoding: Any) -> Path:
  """Writes ``ds`` in its transfer syntax; ``encoding`` goes to pydicom's encoder (e.g.
  ``jls_error``, ``j2k_psnr``)."""
  transfer_syntax = UID(ds._transfer_syntax)
  del ds._transfer_syntax
  if transfer_syntax.is_compressed:  # RLE always; JPEG-LS and JPEG 2000 with the plugins
    ds.compress(transfer_syntax, generate_instance_uid=False, **encoding)
  else:  # implicit VR, deflated: pydicom writes the dataset in the file meta's syntax
    ds.file_meta.TransferSyntaxUID = transfer_syntax
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)
  return path


# ---------------------------------------------------------------------------------------------
# MR series
# ---------------------------------------------------------------------------------------------
def _clock(offset_ms: float) -> str:
  """DICOM TM of an acquisition ``offset_ms`` after the series started (09:00:00)."""
  return (datetime.datetime(2000, 1, 1, 9) + datetime.timedelta(milliseconds=offset_ms)).strftime(
      "%H%M%S.%f")


def _to_stored(values: np.ndarray, rescale: tuple[float, float], signed: bool) -> np.ndarray:
  """Stored integers of physical ``values`` (any shape), in their little-endian dtype."""
  slope, intercept = rescale
  stored = np.rint((np.asarray(values, np.float64) - intercept) / slope)
  info = np.iinfo(np.int16 if signed else np.uint16)
  if stored.min() < info.min or stored.max() > info.max:
    raise ValueError(f"values [{values.min()}, {values.max()}] do not fit {info.dtype} with "
                     f"RescaleSlope {slope} and RescaleIntercept {intercept}")
  return np.ascontiguousarray(stored.astype("<i2" if signed else "<u2"))


@dataclasses.dataclass(frozen=True)
class _Series:
  """One series to write: its stored volumes, geometry and frame order, and what each slice
  and temporal position carries."""
  stored: list[np.ndarray]  # per temporal position, [z, y, x] stored integers
  iop: list[float]
  positions: list[list[float]]  # per slice index k, ImagePositionPatient
  normal: np.ndarray
  trigger_times: list[float]
  frames: list[tuple[int, int]]  # (temporal position t, slice index k) in acquisition order

  def slice_elements(self, number: int, t: int, k: int) -> list[dicom_encoding.Element]:
    """The elements of classic file ``number`` (1-based), which holds slice k at time t."""
    own = [(_INSTANCE_NUMBER, "IS", number), (_IMAGE_POSITION, "DS", self.positions[k]),
           (_SLICE_LOCATION, "DS", float(np.dot(self.positions[k], self.normal))),
           (_TRIGGER_TIME, "DS", float(self.trigger_times[t])),
           (_ACQUISITION_TIME, "TM", _clock(self.trigger_times[t]))]
    if len(self.stored) > 1:
      own.append((_TEMPORAL_POSITION_IDENTIFIER, "IS", t + 1))
    return own

  def frame_groups(self) -> list[list[dicom_encoding.Element]]:
    """PerFrameFunctionalGroupsSequence items of the enhanced file: each frame's position,
    orientation, stack and temporal position and trigger time."""
    return [[(_FRAME_CONTENT, "SQ", [[(_FRAME_ACQUISITION_DURATION, "FD", 0.0),
                                      (_IN_STACK_POSITION, "UL", k + 1),
                                      (_TEMPORAL_POSITION_INDEX, "UL", t + 1)]]),
             (_PLANE_POSITION, "SQ", [[(_IMAGE_POSITION, "DS", self.positions[k])]]),
             (_PLANE_ORIENTATION, "SQ", [[(_IMAGE_ORIENTATION, "DS", self.iop)]]),
             (_CARDIAC_SYNCHRONIZATION, "SQ", [[(_TRIGGER_TIME, "DS",
                                                 float(self.trigger_times[t]))]])]
            for t, k in self.frames]


def _plan(volumes: list[np.ndarray], geometry: Geometry, options: SeriesOptions) -> _Series:
  shape = volumes[0].shape
  if any(v.shape != shape for v in volumes):
    raise ValueError("all temporal positions of a series must have one shape")
  direction = np.asarray(geometry.direction, np.float64).reshape(3, 3)
  origin = np.asarray(geometry.origin, np.float64)
  iop = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
  positions = [[float(v) for v in origin + k * geometry.spacing[2] * direction[:, 2]]
               for k in range(shape[0])]
  n_t = len(volumes)
  trigger_times = (list(options.trigger_times_ms) if options.trigger_times_ms
                   else [90_000.0 * t for t in range(n_t)])
  # Frames in acquisition order: temporal position major, then slices in instance order.
  order = np.arange(shape[0])
  if options.instance_order == "descending":
    order = order[::-1]
  elif options.instance_order == "shuffled":
    order = np.random.default_rng(options.order_seed).permutation(shape[0])
  elif options.instance_order != "ascending":
    raise ValueError("instance_order must be ascending/descending/shuffled, got "
                     f"{options.instance_order}")
  return _Series(stored=[_to_stored(v, options.rescale, options.signed) for v in volumes],
                 iop=iop, positions=positions, normal=np.cross(iop[:3], iop[3:]),
                 trigger_times=trigger_times,
                 frames=[(t, int(order[k])) for t in range(n_t) for k in range(shape[0])])


def write_mr_series(out_dir: Path | str, volumes: Sequence[np.ndarray] | np.ndarray,
                    geometry: Geometry, tags: Mapping[str, Any],
                    options: SeriesOptions = SeriesOptions()) -> list[Path]:
  """Writes one MR series: a volume, or several (one per DCE phase) as a multiphase series.

  Args:
    out_dir: folder for the files (created).
    volumes: [z, y, x] physical values, or a list of such volumes (one per temporal position,
      written with TemporalPositionIdentifier / TemporalPositionIndex 1..T).
    geometry: where the voxels lie (see the module docstring).
    tags: DICOM keywords set on every file; must include StudyInstanceUID. Typical: PatientID,
      PatientName, PatientBirthDate, StudyDate, SeriesDescription, SeriesNumber,
      Manufacturer, SliceThickness; ImageType overrides ORIGINAL/PRIMARY (e.g. DERIVED for a
      subtraction series).
    options: storage, numbering, timing and UIDs (:class:`SeriesOptions`).

  Returns:
    The written paths: IM000001.dcm (enhanced), else one IM<InstanceNumber>.dcm per slice.
  """
  out_dir = Path(out_dir)
  volumes = [volumes] if isinstance(volumes, np.ndarray) else list(volumes)
  series = _plan(volumes, geometry, options)
  new_uid = _uid_factory(options.uid_seed)
  tags = {"SeriesInstanceUID": tags.get("SeriesInstanceUID") or new_uid(),
          "SliceThickness": float(geometry.spacing[2]),
          "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"], **tags}
  n_t, shape, native = len(volumes), volumes[0].shape, (
      options.transfer_syntax == ExplicitVRLittleEndian)
  rescale, signed = options.rescale, options.signed
  sop_class = ENHANCED_MR_IMAGE_STORAGE if options.enhanced else MR_IMAGE_STORAGE
  template = _base(sop_class, "MR", tags, options.transfer_syntax, new_uid)
  _pixel_header(template, shape[1:], signed)
  if options.enhanced:
    template.InstanceNumber = 1
    template.AcquisitionTime = _clock(series.trigger_times[0])
    template.NumberOfFrames = len(series.frames)
    template.NumberOfTemporalPositions = n_t
    template.SharedFunctionalGroupsSequence = DicomSequence([dicom_encoding.to_dataset([
        (0x00289110, "SQ", [[(0x00280030, "DS", [float(geometry.spacing[1]),  # PixelMeasures
                                                 float(geometry.spacing[0])]),
                             (0x00180050, "DS", float(geometry.spacing[2]))]]),
        (0x00289145, "SQ", [[(0x00281052, "DS", rescale[1]),  # PixelValueTransformation
                             (0x00281053, "DS", rescale[0]), (0x00281054, "LO", "US")]])])])
    pixels = b"".join(series.stored[t][k].tobytes() for t, k in series.frames)
    own = [(_PER_FRAME_GROUPS, "SQ", series.frame_groups()), (_PIXEL_DATA, "OW", pixels)]
    files = [("IM000001.dcm", own)]
  else:
    template.ImageOrientationPatient = series.iop
    template.PixelSpacing = [float(geometry.spacing[1]), float(geometry.spacing[0])]
    template.SpacingBetweenSlices = float(geometry.spacing[2])
    template.RescaleSlope, template.RescaleIntercept = rescale
    if n_t > 1:
      template.NumberOfTemporalPositions = n_t
    files = [(f"IM{number:06d}.dcm",
              [*series.slice_elements(number, t, k),
               (_PIXEL_DATA, "OW", series.stored[t][k].tobytes())])
             for number, (t, k) in enumerate(series.frames, start=1)]
  first_uid = template.SOPInstanceUID  # the file meta's; each file carries its own
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  if native:
    del template.SOPInstanceUID
    encoder = dicom_encoding.SeriesEncoder(template, (tag for tag, _, _ in files[0][1]))
    for number, (name, own) in enumerate(files, start=1):
      uid = first_uid if number == 1 else new_uid()
      paths.append(encoder.write(out_dir / name, uid, own))
    return paths
  for number, (name, own) in enumerate(files, start=1):  # pydicom encodes and compresses
    ds = template if number == len(files) else copy.deepcopy(template)
    ds.update(dicom_encoding.to_dataset(own))
    if number > 1:
      ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    paths.append(_save(ds, out_dir / name))
  return paths


# ---------------------------------------------------------------------------------------------
# Mammograms
# ---------------------------------------------------------------------------------------------
def write_mammogram(path: Path | str, image: np.ndarray, *, laterality: str, view: str,
                    tags: Mapping[str, Any],
                    options: MammogramFileOptions = MammogramFileOptions()) -> Path:
  """Writes a 16-bit 'For Presentation' digital mammogram.

  Args:
    image: [rows, columns] unsigned values (at most ``options.bits_stored`` bits).
    laterality: 'L' or 'R' (ImageLaterality and Laterality); '' writes neither.
    view: 'CC' or 'MLO' (ViewPosition); '' writes none (secondary-capture style exports name
      the view only in a description or a file name).
    tags: as in :func:`write_mr_series`.
    options: detector, photometric, VOI window and encoding (:class:`MammogramFileOptions`).
  """
  tags = {"ImageType": ["ORIGINAL", "PRIMARY", "",
                        {"R": "RIGHT", "L": "LEFT"}.get(laterality, "")], **tags}
  ds = _base(DIGITAL_MAMMOGRAPHY_STORAGE, "MG", tags, options.transfer_syntax,
             _uid_factory(options.uid_seed))
  ds.PresentationIntentType = "FOR PRESENTATION"
  ds.InstanceNumber = 1
  if laterality:
    ds.ImageLaterality = laterality
    ds.Laterality = laterality
  if view:
    ds.ViewPosition = view
  spacing = options.pixel_spacing_mm
  ds.PixelSpacing = [spacing, spacing]
  ds.ImagerPixelSpacing = [spacing, spacing]
  ds.PhotometricInterpretation = options.photometric
  ds.BodyPartExamined = "BREAST"
  if options.window is not None:
    ds.WindowCenter, ds.WindowWidth = float(options.window[0]), float(options.window[1])
  image = np.asarray(image)
  bits = options.bits_stored
  if image.min() < 0 or image.max() >= 2 ** bits or not 8 < bits <= 16:
    raise ValueError(f"mammogram values must fit in {bits} bits (9..16)")
  ds.BitsStored, ds.HighBit = bits, bits - 1
  _set_pixels(ds, image, signed=False)
  return _save(ds, Path(path), **dict(options.encoding))

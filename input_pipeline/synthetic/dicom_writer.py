"""Writes DICOM files the way scanners do: the synthetic export and test fixtures use this.

Geometry follows SimpleITK's convention: a volume is a numpy array [slice, row, column]
(= [z, y, x]), ``origin`` is the LPS position in mm of voxel (0, 0, 0), ``spacing`` is
(x, y, z) in mm and ``direction`` the 3x3 matrix whose columns are the LPS directions of the
x (column index), y (row index) and z (slice index) axes. In DICOM terms the first two columns
become ImageOrientationPatient, PixelSpacing is (y, x) and slice k sits at
ImagePositionPatient = origin + k * spacing_z * direction[:, 2].
"""

from __future__ import annotations

import datetime
import itertools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
DIGITAL_MAMMOGRAPHY_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # For Presentation

_STUDY_DEFAULTS = {
    "PatientID": "ANON", "PatientName": "Anonymous", "PatientBirthDate": "19700101",
    "PatientSex": "F", "StudyDate": "20200101", "StudyTime": "090000",
    "AccessionNumber": "", "StudyID": "1", "ReferringPhysicianName": "",
}


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


class _SeriesEncoder:
  """Writes the single-frame files of one series, encoding what they share once.

  A classic MR series is hundreds of files that differ in a handful of elements. pydicom's
  ``dcmwrite`` re-validates and re-encodes all ~60 elements of every file, which made writing
  the synthetic export its slowest stage. Here pydicom encodes each shared element once and
  each file's own elements per file; the file is the tag-ordered concatenation, the same bytes
  ``Dataset.save_as(..., enforce_file_format=True)`` writes (tests/test_dicom_io.py checks).
  Explicit VR little endian only.
  """

  def __init__(self, template: Dataset):
    if template._transfer_syntax != ExplicitVRLittleEndian:
      raise ValueError("the shared-element encoder writes Explicit VR Little Endian only")
    self._meta = template.file_meta
    self._encodings = template._character_set
    correct_ambiguous_vr(template, is_little_endian=True)
    self._shared = {elem.tag: self._encode(elem) for elem in template}

  def _encode(self, elem: DataElement) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, self._encodings)
    return fp.getvalue()

  def write(self, path: Path, own: Dataset) -> Path:
    """Writes the file made of the shared elements and ``own`` (which carries SOPInstanceUID
    and no element of the template; give OB/OW elements an explicit VR)."""
    encoded = {elem.tag: self._encode(elem) for elem in own}
    if encoded.keys() & self._shared.keys():
      raise ValueError(f"elements both shared and per file: {encoded.keys() & self._shared.keys()}")
    encoded.update(self._shared)
    meta = FileMetaDataset(self._meta)
    meta.MediaStorageSOPInstanceUID = own.SOPInstanceUID
    validate_file_meta(meta, enforce_standard=True)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    fp.write(b"".join(encoded[tag] for tag in sorted(encoded)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
      f.write(fp.getvalue())
    return path


def _clock(offset_ms: float) -> str:
  """DICOM TM of an acquisition ``offset_ms`` after the series started (09:00:00)."""
  return (datetime.datetime(2000, 1, 1, 9) + datetime.timedelta(milliseconds=offset_ms)).strftime(
      "%H%M%S.%f")


def _to_stored(values: np.ndarray, rescale: tuple[float, float], signed: bool) -> np.ndarray:
  slope, intercept = rescale
  stored = np.rint((np.asarray(values, np.float64) - intercept) / slope)
  info = np.iinfo(np.int16 if signed else np.uint16)
  if stored.min() < info.min or stored.max() > info.max:
    raise ValueError(f"values [{values.min()}, {values.max()}] do not fit {info.dtype} with "
                     f"RescaleSlope {slope} and RescaleIntercept {intercept}")
  return stored


def _geometry(shape, origin, spacing, direction):
  direction = np.asarray(direction, np.float64).reshape(3, 3)
  origin = np.asarray(origin, np.float64)
  iop = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
  positions = [origin + k * spacing[2] * direction[:, 2] for k in range(shape[0])]
  return iop, positions


def write_mr_series(
    out_dir: Path | str,
    volumes: Sequence[np.ndarray] | np.ndarray,
    *,
    origin: Sequence[float],
    spacing: Sequence[float],
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    tags: Mapping[str, Any],
    rescale: tuple[float, float] = (1.0, 0.0),
    signed: bool = True,
    enhanced: bool = False,
    instance_order: str = "ascending",
    transfer_syntax: str = ExplicitVRLittleEndian,
    trigger_times_ms: Sequence[float] | None = None,
    seed: int = 0,
    uid_seed: str | None = None,
) -> list[Path]:
  """Writes one MR series: a volume, or several (one per DCE phase) as a multiphase series.

  Args:
    out_dir: folder for the files (created).
    volumes: [z, y, x] physical values, or a list of such volumes (one per temporal position,
      written with TemporalPositionIdentifier 1..T).
    origin, spacing, direction: geometry (see module docstring).
    tags: DICOM keywords set on every file; must include StudyInstanceUID. Typical: PatientID,
      PatientName, PatientBirthDate, StudyDate, SeriesDescription, SeriesNumber,
      Manufacturer, SliceThickness; ImageType overrides ORIGINAL/PRIMARY (e.g. DERIVED for a
      subtraction series).
    rescale: (RescaleSlope, RescaleIntercept); stored = (value - intercept) / slope.
    signed: int16 (True) or uint16 storage.
    enhanced: one Enhanced MR multi-frame file instead of one file per slice.
    instance_order: 'ascending' (InstanceNumber grows with the slice index k, i.e. along
      direction[:, 2], which is against the row x column normal when the direction matrix is a
      reflection), 'descending', or 'shuffled'; files are named by InstanceNumber either way.
    transfer_syntax: any syntax pydicom writes: native little endian, deflated, RLE lossless,
      and JPEG-LS / JPEG 2000 (pydicom's encoder plugins).
    trigger_times_ms: per temporal position, TriggerTime (defaults to 0, 90 s, 180 s, ...).
    seed: for 'shuffled'.
    uid_seed: derive every UID the writer creates from this string (deterministic files);
      None draws random UIDs.

  Returns:
    The written paths.
  """
  out_dir = Path(out_dir)
  volumes = [volumes] if isinstance(volumes, np.ndarray) else list(volumes)
  shape = volumes[0].shape
  if any(v.shape != shape for v in volumes):
    raise ValueError("all temporal positions of a series must have one shape")
  iop, positions = _geometry(shape, origin, spacing, direction)
  pixel_spacing = [float(spacing[1]), float(spacing[0])]
  new_uid = _uid_factory(uid_seed)
  series_uid = tags.get("SeriesInstanceUID") or new_uid()
  tags = {"SeriesInstanceUID": series_uid, "SliceThickness": float(spacing[2]),
          "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"], **tags}
  n_t = len(volumes)
  trigger_times = list(trigger_times_ms) if trigger_times_ms else [90_000.0 * t
                                                                   for t in range(n_t)]
  # Frames in acquisition order: temporal position major, then slices in instance order.
  order = np.arange(shape[0])
  if instance_order == "descending":
    order = order[::-1]
  elif instance_order == "shuffled":
    order = np.random.default_rng(seed).permutation(shape[0])
  elif instance_order != "ascending":
    raise ValueError(f"instance_order must be ascending/descending/shuffled, got {instance_order}")
  frames = [(t, int(order[k])) for t in range(n_t) for k in range(shape[0])]

  if enhanced:
    ds = _base(ENHANCED_MR_IMAGE_STORAGE, "MR", tags, transfer_syntax, new_uid)
    ds.InstanceNumber = 1
    ds.AcquisitionTime = _clock(trigger_times[0])
    ds.NumberOfFrames = len(frames)
    ds.NumberOfTemporalPositions = n_t
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = pixel_spacing
    measures.SliceThickness = float(spacing[2])
    orientation = Dataset()
    orientation.ImageOrientationPatient = iop
    transform = Dataset()
    transform.RescaleSlope = rescale[0]
    transform.RescaleIntercept = rescale[1]
    transform.RescaleType = "US"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for t, k in frames:
      item = Dataset()
      content = Dataset()
      content.TemporalPositionIndex = t + 1
      content.InStackPositionNumber = k + 1
      content.FrameAcquisitionDuration = 0.0
      position = Dataset()
      position.ImagePositionPatient = [float(v) for v in positions[k]]
      timing = Dataset()
      timing.TriggerTime = float(trigger_times[t])
      item.FrameContentSequence = DicomSequence([content])
      item.PlanePositionSequence = DicomSequence([position])
      item.CardiacSynchronizationSequence = DicomSequence([timing])
      per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    stored = np.stack([_to_stored(volumes[t][k], rescale, signed) for t, k in frames])
    _set_pixels(ds, stored, signed)
    return [_save(ds, out_dir / "IM000001.dcm")]

  def own_elements(ds: Dataset, number: int, t: int, k: int) -> Dataset:
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [float(v) for v in positions[k]]
    ds.SliceLocation = float(np.dot(positions[k], np.cross(iop[:3], iop[3:])))
    ds.TriggerTime = float(trigger_times[t])
    ds.AcquisitionTime = _clock(trigger_times[t])
    if n_t > 1:
      ds.TemporalPositionIdentifier = t + 1
    return ds

  def shared_elements(ds: Dataset) -> Dataset:
    ds.ImageOrientationPatient = iop
    ds.PixelSpacing = pixel_spacing
    ds.SpacingBetweenSlices = float(spacing[2])
    ds.RescaleSlope = rescale[0]
    ds.RescaleIntercept = rescale[1]
    if n_t > 1:
      ds.NumberOfTemporalPositions = n_t
    return ds

  paths = []
  if transfer_syntax != ExplicitVRLittleEndian:  # compressed: pydicom encodes every file
    for number, (t, k) in enumerate(frames, start=1):
      ds = shared_elements(_base(MR_IMAGE_STORAGE, "MR", tags, transfer_syntax, new_uid))
      own_elements(ds, number, t, k)
      _set_pixels(ds, _to_stored(volumes[t][k], rescale, signed), signed)
      paths.append(_save(ds, out_dir / f"IM{number:06d}.dcm"))
    return paths
  template = shared_elements(_base(MR_IMAGE_STORAGE, "MR", tags, transfer_syntax, new_uid))
  _pixel_header(template, shape[1:], signed)
  first_uid = template.SOPInstanceUID  # the file meta's; each file carries its own
  del template.SOPInstanceUID
  encoder = _SeriesEncoder(template)
  for number, (t, k) in enumerate(frames, start=1):
    own = own_elements(Dataset(), number, t, k)
    own.SOPInstanceUID = first_uid if number == 1 else new_uid()
    own.add(DataElement(0x7FE00010, "OW",
                        _pixel_bytes(_to_stored(volumes[t][k], rescale, signed), signed)))
    paths.append(encoder.write(out_dir / f"IM{number:06d}.dcm", own))
  return paths


def write_mammogram(
    path: Path | str,
    image: np.ndarray,
    *,
    laterality: str,
    view: str,
    tags: Mapping[str, Any],
    pixel_spacing_mm: float = 0.07,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    bits_stored: int = 16,
    transfer_syntax: str = ExplicitVRLittleEndian,
    encoding: Mapping[str, Any] | None = None,
    uid_seed: str | None = None,
) -> Path:
  """Writes a 16-bit 'For Presentation' digital mammogram.

  Args:
    image: [rows, columns] unsigned values (at most ``bits_stored`` bits).
    laterality: 'L' or 'R' (ImageLaterality and Laterality); '' writes neither.
    view: 'CC' or 'MLO' (ViewPosition); '' writes none (secondary-capture style exports name
      the view only in a description or a file name).
    window: (WindowCenter, WindowWidth) VOI, if the modality sets one.
    bits_stored: BitsStored (12, 14 or 16 for detectors and film scanners).
    transfer_syntax: as in :func:`write_mr_series`; ``encoding`` goes to pydicom's encoder
      (``jls_error`` for JPEG-LS near-lossless, ``j2k_psnr`` / ``j2k_cr`` for JPEG 2000).
    uid_seed: as in :func:`write_mr_series`.
  """
  tags = {"ImageType": ["ORIGINAL", "PRIMARY", "",
                        {"R": "RIGHT", "L": "LEFT"}.get(laterality, "")], **tags}
  ds = _base(DIGITAL_MAMMOGRAPHY_STORAGE, "MG", tags, transfer_syntax, _uid_factory(uid_seed))
  ds.PresentationIntentType = "FOR PRESENTATION"
  ds.InstanceNumber = 1
  if laterality:
    ds.ImageLaterality = laterality
    ds.Laterality = laterality
  if view:
    ds.ViewPosition = view
  ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
  ds.ImagerPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
  ds.PhotometricInterpretation = photometric
  ds.BodyPartExamined = "BREAST"
  if window is not None:
    ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
  image = np.asarray(image)
  if image.min() < 0 or image.max() >= 2 ** bits_stored or not 8 < bits_stored <= 16:
    raise ValueError(f"mammogram values must fit in {bits_stored} bits (9..16)")
  ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
  _set_pixels(ds, image, signed=False)
  return _save(ds, Path(path), **dict(encoding or {}))


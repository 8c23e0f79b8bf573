"""Which DICOM files form which study and series, and which series are the DCE inputs.

Everything here reads headers only (``dcmread(..., stop_before_pixels=True)`` with a fixed tag
list), so a whole export is indexed quickly; pixels are read later by ``dicom_io`` from the
:class:`~input_pipeline.ingestion.patient.SeriesSelection` chosen here.

:func:`scan_folder` groups every DICOM file under a folder by StudyInstanceUID, then
SeriesInstanceUID, and keeps per series what choosing needs (description, SOP class, ImageType,
temporal positions, times, geometry, mammography laterality and view). Files that are not DICOM
(DICOMDIR, .txt, .xlsx, ...) are skipped quietly; a DICOM file whose header cannot be read is
recorded in ``ScanResult.problems`` with its path, never raised.

Which of them are the DCE inputs is ``dce_select``'s question; which breast and view a
mammogram shows, ``mammogram_view``'s.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pydicom

from input_pipeline.ingestion.dicom_io import pixel_data_problem
from input_pipeline.ingestion.mammogram_view import ImageView, mammogram_view

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
ENHANCED_MR_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
})
MR_CLASSES = ENHANCED_MR_CLASSES | {"1.2.840.10008.5.1.4.1.1.4"}
MG_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # ... For Processing
})
# Digitised film and secondary-capture exports label mammograms with these modalities.
_OTHER_MG_MODALITIES = frozenset({"CR", "DX", "OT", "SC"})

_HEADER_TAGS = [
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
    "PatientID", "StudyDate", "StudyTime", "StudyDescription", "ClinicalTrialTimePointID",
    "SeriesDescription", "SeriesNumber", "ImageType", "TemporalPositionIdentifier",
    "TriggerTime", "AcquisitionTime", "ContentTime", "Rows", "Columns", "NumberOfFrames",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "RepetitionTime",
    "EchoTime",
    "ImageLaterality", "Laterality", "ViewPosition", "PresentationIntentType",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    *("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusTotalDose",
      "ContrastBolusIngredient", "ContrastBolusStartTime", "ContrastBolusAgentSequence"),
    *("ViewCodeSequence", "PatientOrientation", "ProtocolName", "ImageComments",
      "AcquisitionDeviceProcessingDescription"),
]
# Any of these set says the image was acquired with a contrast agent (Contrast/Bolus module;
# the sequence is the Enhanced MR form).
_CONTRAST_TAGS = ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume",
                  "ContrastBolusTotalDose", "ContrastBolusIngredient", "ContrastBolusStartTime",
                  "ContrastBolusAgentSequence")



def _seconds(value) -> float | None:
  """'HHMMSS.ffffff' (DICOM TM) -> seconds since midnight."""
  text = str(value or "").strip()
  match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
  if not match:
    return None
  hours, minutes, seconds, fraction = match.groups()
  return (int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)
          + float(fraction or 0.0))


def _float(value) -> float | None:
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def _earliest(current: float | None, new: float | None) -> float | None:
  if new is None:
    return current
  return new if current is None else min(current, new)


def _rounded(values, digits: int) -> tuple[float, ...] | None:
  if values is None:
    return None
  try:
    return tuple(round(float(v), digits) + 0.0 for v in values)
  except (TypeError, ValueError):
    return None




@dataclasses.dataclass
class SeriesInfo:
  """One image series, from its headers.

  Attributes:
    uid, study_uid: SeriesInstanceUID, StudyInstanceUID.
    files, sop_instance_uids: the series' files and their SOPInstanceUIDs, in the same order.
    positions: per file, ImagePositionPatient (LPS mm, rounded to 1e-2) of a single-frame file,
      None for a multi-frame one or where absent.
    frames: number of image frames (files, or the sum of NumberOfFrames for multi-frame).
    temporal_positions: TemporalPositionIdentifier values (classic) or TemporalPositionIndex
      values (Enhanced MR, per frame) present.
    acquisition_time_s: earliest AcquisitionTime (else ContentTime), seconds since midnight.
    trigger_time_ms: earliest TriggerTime.
    orientation: ImageOrientationPatient rounded to 1e-3; pixel_spacing rounded to 1e-2 mm.
    repetition_time_ms, echo_time_ms: TR and TE when present.
    contrast: the first file carries a Contrast/Bolus attribute (agent, route, volume, dose,
      ingredient, start time).
    contrast_start_s: ContrastBolusStartTime, seconds since midnight, when given.
    laterality, view: those of the first file (see ``views``).
    views: per file, for mammograms (whose series may hold several views): laterality, view
      and PresentationIntentType (:func:`mammogram_view`).
  """
  uid: str
  study_uid: str
  description: str = ""
  modality: str = ""
  sop_class_uid: str = ""
  image_type: tuple[str, ...] = ()
  number: int | None = None
  files: list[Path] = dataclasses.field(default_factory=list)
  sop_instance_uids: list[str] = dataclasses.field(default_factory=list)
  positions: list[tuple[float, ...] | None] = dataclasses.field(default_factory=list)
  frames: int = 0
  temporal_positions: set[int] = dataclasses.field(default_factory=set)
  acquisition_time_s: float | None = None
  trigger_time_ms: float | None = None
  rows: int | None = None
  columns: int | None = None
  orientation: tuple[float, ...] | None = None
  pixel_spacing: tuple[float, ...] | None = None
  repetition_time_ms: float | None = None
  echo_time_ms: float | None = None
  contrast: bool = False
  contrast_start_s: float | None = None
  body_part: str = ""
  views: list[ImageView] = dataclasses.field(default_factory=list)

  @property
  def laterality(self) -> str:
    return self.views[0].laterality if self.views else ""

  @property
  def view(self) -> str:
    return self.views[0].view if self.views else ""

  @property
  def is_enhanced(self) -> bool:
    return self.sop_class_uid in ENHANCED_MR_CLASSES

  @property
  def is_derived(self) -> bool:
    return bool(self.image_type) and self.image_type[0] == "DERIVED"

  @property
  def is_mr(self) -> bool:
    return self.modality == "MR" or self.sop_class_uid in MR_CLASSES

  @property
  def is_mammogram(self) -> bool:
    """MG, a mammography SOP class, or a breast radiograph of a film or secondary-capture
    export (CR / DX / OT / SC with BodyPartExamined BREAST)."""
    return (self.modality == "MG" or self.sop_class_uid in MG_CLASSES
            or (self.modality in _OTHER_MG_MODALITIES and self.body_part == "BREAST"))

  @property
  def frames_per_position(self) -> int:
    return self.frames // max(1, len(self.temporal_positions))

  @property
  def geometry(self) -> tuple:
    """Series with equal geometry can be subtracted voxel by voxel."""
    return (self.rows, self.columns, self.orientation, self.pixel_spacing,
            self.frames_per_position)

  def _add(self, path: Path, ds: pydicom.Dataset) -> None:
    if not self.files:
      self.description = str(ds.get("SeriesDescription", "") or "").strip()
      self.modality = str(ds.get("Modality", "") or "").upper()
      self.sop_class_uid = str(ds.get("SOPClassUID", "") or "")
      self.image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
      number = ds.get("SeriesNumber")
      self.number = int(number) if number not in (None, "") else None
      rows, columns = ds.get("Rows"), ds.get("Columns")
      self.rows = int(rows) if rows is not None else None
      self.columns = int(columns) if columns is not None else None
      self.repetition_time_ms = _float(ds.get("RepetitionTime"))
      self.echo_time_ms = _float(ds.get("EchoTime"))
      self.orientation = _rounded(ds.get("ImageOrientationPatient"), 3)
      self.pixel_spacing = _rounded(ds.get("PixelSpacing"), 2)
      self.contrast = any(ds.get(keyword) not in (None, "") for keyword in _CONTRAST_TAGS)
      self.contrast_start_s = _seconds(ds.get("ContrastBolusStartTime"))
      self.body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    triggers = [_float(ds.get("TriggerTime"))]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None:
      self.frames += int(ds.get("NumberOfFrames") or len(per_frame))
      self._add_frames(ds, per_frame, triggers)
    else:
      self.frames += int(ds.get("NumberOfFrames") or 1)
      position = ds.get("TemporalPositionIdentifier")
      if position not in (None, ""):
        self.temporal_positions.add(int(position))
    self.files.append(path)
    self.positions.append(None if per_frame is not None else
                          _rounded(ds.get("ImagePositionPatient"), 2))
    self.sop_instance_uids.append(str(ds.get("SOPInstanceUID", "")))
    self.views.append(mammogram_view(ds, path) if self.is_mammogram else ImageView())
    time = _seconds(ds.get("AcquisitionTime"))
    if time is None:
      time = _seconds(ds.get("ContentTime"))
    self.acquisition_time_s = _earliest(self.acquisition_time_s, time)
    for trigger in triggers:
      self.trigger_time_ms = _earliest(self.trigger_time_ms, trigger)

  def _add_frames(self, ds: pydicom.Dataset, per_frame, triggers: list) -> None:
    shared = (ds.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()])[0]
    first = per_frame[0] if len(per_frame) else pydicom.Dataset()
    for group in (shared, first):
      if self.orientation is None and "PlaneOrientationSequence" in group:
        self.orientation = _rounded(
            group.PlaneOrientationSequence[0].get("ImageOrientationPatient"), 3)
      if self.pixel_spacing is None and "PixelMeasuresSequence" in group:
        self.pixel_spacing = _rounded(group.PixelMeasuresSequence[0].get("PixelSpacing"), 2)
    for item in per_frame:
      for content in item.get("FrameContentSequence") or ():
        if content.get("TemporalPositionIndex") is not None:
          self.temporal_positions.add(int(content.TemporalPositionIndex))
      for timing in item.get("CardiacSynchronizationSequence") or ():
        triggers.append(_float(timing.get("TriggerTime")
                               or timing.get("NominalCardiacTriggerDelayTime")))


@dataclasses.dataclass
class StudyInfo:
  """One study (exam) of a patient: its date, the tags that name its NAT phase, its series."""
  uid: str
  date: str = ""
  time: str = ""
  description: str = ""
  time_point_id: str = ""
  patient_id: str = ""
  series: dict[str, SeriesInfo] = dataclasses.field(default_factory=dict)

  @property
  def is_mr(self) -> bool:
    return any(s.is_mr for s in self.series.values())

  @property
  def sort_key(self) -> tuple[str, str, str]:
    return (self.date or "99999999", self.time or "", self.uid)

  def label(self) -> str:
    """How messages name the study."""
    description = self.description or "(no StudyDescription)"
    return f"study {description!r} of {self.date or 'unknown date'}"


@dataclasses.dataclass(frozen=True)
class ScanProblem:
  """A DICOM file whose header could not be read.

  Attributes:
    path: the file.
    reason: why.
    series_uid, modality: its SeriesInstanceUID and Modality where that much of the header
      could be read (a file cut off in its pixel data), else None: which series it would
      belong to is then unknown.
  """
  path: Path
  reason: str
  series_uid: str | None = None
  modality: str | None = None

  def __str__(self) -> str:
    return f"{self.path}: corrupt DICOM file ({self.reason})"


@dataclasses.dataclass
class ScanResult:
  """Studies found under a folder, and the files that could not be read."""
  studies: dict[str, StudyInfo] = dataclasses.field(default_factory=dict)
  problems: list[ScanProblem] = dataclasses.field(default_factory=list)

  def sorted_studies(self, mr: bool | None = None) -> list[StudyInfo]:
    """Studies in date order; ``mr`` keeps only MR (True) or only non-MR (False) studies."""
    studies = sorted(self.studies.values(), key=lambda s: s.sort_key)
    return [s for s in studies if mr is None or s.is_mr == mr]


def _dicom_kind(path: Path) -> str:
  """'dicom' (has the DICM preamble), 'maybe' (raw dataset without one), or 'other'."""
  if path.name.upper() == "DICOMDIR":
    return "other"
  with path.open("rb") as handle:
    head = handle.read(132)
  if len(head) >= 132 and head[128:132] == b"DICM":
    return "dicom"
  # Old exports write datasets without the 128-byte preamble; they start with group 0x0008
  # (or 0x0002) little endian. Anything else is not DICOM and is skipped quietly.
  if head[:2] in (b"\x08\x00", b"\x02\x00") or path.suffix.lower() in (".dcm", ".dicom"):
    return "maybe"
  return "other"


def read_header(path: Path, force: bool = False) -> pydicom.Dataset:
  """The header of one file (no pixels).

  Raises:
    ValueError: the header lacks the UIDs or the image size, or the pixel data is cut off
      (a truncated file).
  """
  size = path.stat().st_size
  with path.open("rb") as handle:
    ds = pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=_HEADER_TAGS,
                         force=force)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
      if not ds.get(keyword):
        raise ValueError(f"no {keyword} in the header (truncated, or not an image file)")
    modality = str(ds.get("Modality", "") or "").upper()
    if (modality not in ("MR", "MG", *_OTHER_MG_MODALITIES)
        and ds.get("SOPClassUID") not in MR_CLASSES | MG_CLASSES):
      return ds
    if ds.get("Rows") is None or ds.get("Columns") is None:
      raise ValueError("no Rows/Columns in the header (truncated file)")
    problem = pixel_data_problem(handle, ds, size)
  if problem:
    raise ValueError(problem)
  return ds


def _series_of(path: Path) -> tuple[str | None, str | None]:
  """(SeriesInstanceUID, Modality) of a file whose full header could not be read, each None
  where even that is unreadable."""
  try:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                         specific_tags=["SeriesInstanceUID", "Modality"])
  except Exception:  # noqa: BLE001 (any failure means: unknown)
    return None, None
  uid, modality = ds.get("SeriesInstanceUID"), ds.get("Modality")
  return (str(uid) if uid else None), (str(modality).upper() if modality else None)


def scan_folder(root: Path | str) -> ScanResult:
  """Indexes every DICOM file under ``root`` (any depth, any file names).

  Returns:
    The studies and series found, and one :class:`ScanProblem` per DICOM file whose header
    could not be read. Non-DICOM files and DICOMDIR are skipped without a problem.
  """
  result = ScanResult()
  for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
    kind = "dicom"
    try:
      kind = _dicom_kind(path)
      if kind == "other":
        continue
      ds = read_header(path, force=kind == "maybe")
      if ds.file_meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        continue
      study_uid = str(ds.StudyInstanceUID)
      study = result.studies.get(study_uid)
      if study is None:
        study = StudyInfo(
            uid=study_uid, date=str(ds.get("StudyDate", "") or ""),
            time=str(ds.get("StudyTime", "") or ""),
            description=str(ds.get("StudyDescription", "") or "").strip(),
            time_point_id=str(ds.get("ClinicalTrialTimePointID", "") or "").strip(),
            patient_id=str(ds.get("PatientID", "") or ""))
      series_uid = str(ds.SeriesInstanceUID)
      series = study.series.get(series_uid) or SeriesInfo(series_uid, study_uid)
      series._add(path, ds)
    except Exception as error:  # pydicom raises many types on broken files; none may escape.
      if kind == "maybe" and path.suffix.lower() not in (".dcm", ".dicom"):
        continue  # began like a raw dataset but is not one
      result.problems.append(ScanProblem(path, str(error), *_series_of(path)))
      continue
    result.studies[study_uid] = study
    study.series[series_uid] = series
  return result

"""Which DICOM files form which study and series, and which series are the DCE inputs.

Everything here reads headers only (``dcmread(..., stop_before_pixels=True)`` with a fixed tag
list), so a whole export is indexed quickly; pixels are read later by ``dicom_io`` from the
:class:`~input_pipeline.ingestion.patient.SeriesSelection` chosen here.

:func:`scan_folder` groups every DICOM file under a folder by StudyInstanceUID, then
SeriesInstanceUID, and keeps per series what choosing needs (description, SOP class, ImageType,
temporal positions, times, geometry, mammography laterality and view). Files that are not DICOM
(DICOMDIR, .txt, .xlsx, ...) are skipped quietly; a DICOM file whose header cannot be read is
recorded in ``ScanResult.problems`` with its path, never raised.

:func:`select_dce` picks the pre-contrast and the n-th post-contrast series of one MR study:
a multiphase series first (all phases in one series, split by temporal position), then series
descriptions as scanners write them, then acquisition order of same-geometry series.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Iterable

import pydicom

from input_pipeline.ingestion.dicom_io import pixel_data_problem
from input_pipeline.ingestion.patient import DicomDce, SeriesSelection

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
    "ImageOrientationPatient", "PixelSpacing", "RepetitionTime", "EchoTime",
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

# Series descriptions are compared lower-cased with every character except letters, digits,
# '+' and '-' turned into spaces ('Ph1/ax 3d dyn' -> 'ph1 ax 3d dyn', 'ax t1 +c' stays).
_NOT_DCE = re.compile(
    r"\b(?:loc|locali[sz]er|scout|survey|3 ?plane|tri ?pilot|cal|calibration|t2\w*|stir|tirm|"
    r"dwi|diffusion|adc|trace\w*|ep2d|b ?\d{3,4}|mip|sub|subs|subtract\w*|ser|pe\d?|mask|"
    r"seg|segmentation|cad|mpr|reformat\w*)\b")
_NOT_DCE_IMAGE_TYPES = frozenset({"SUB", "SUBTRACT", "SUBTRACTION", "MIP", "MPR",
                                  "PROJECTION IMAGE", "LOCALIZER"})
_PRE_STRONG = re.compile(r"\bpre\b|\bprecontrast\b|\bnative?\b|\bunenhanced\b")
_PRE_WEAK = re.compile(r"(?:^|\s)c-(?:\s|$)|\bw/?o\b|\bwithout\b|\bnon-?contrast\b")
_ORDINAL_WORDS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6}
_POST_ORDINAL = (
    re.compile(r"\b(\d)(?:st|nd|rd|th)\b"),
    re.compile(r"\bpost ?-? ?(\d)\b"),
    re.compile(r"\bpass ?(\d)\b"),
    re.compile(r"\b(" + "|".join(_ORDINAL_WORDS) + r")\b"),
)
_POST_ANY = re.compile(r"\bpost\b|\+c\b|\bc\+|\bgd\b|\bgad\w*|\bcontrast\b|\bdelayed?\b|\benh\b")
_PHASE_NUMBER = re.compile(r"\bph ?(\d+)\b")
_DYNAMIC = re.compile(r"\bdyn\w*|\bdce\b|vibrant|fl3d|\bvibe\b|thrive|\blava\b|twist|\bfame\b|"
                      r"\b3d\b|multiphase|\bph ?\d")
# Long TR or TE means T2 weighting or diffusion, whatever the description says.
_MAX_DCE_REPETITION_MS = 1000.0
_MAX_DCE_ECHO_MS = 40.0


class DiscoveryError(Exception):
  """The files of a patient cannot give the inputs asked for; the message says why."""


def normalise_description(text: str) -> str:
  return " ".join(re.sub(r"[^a-z0-9+\-]+", " ", (text or "").lower()).split())


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


# --------------------------------------------------------------------------------------------
# Mammography view and laterality
# --------------------------------------------------------------------------------------------
# ViewCodeSequence codes (SNOMED-RT as DICOM CID 4014 lists them, and their SNOMED CT ids).
_VIEW_CODES = {"R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO",
               "R-10224": "ML", "399260004": "ML", "R-10228": "LM", "399352003": "LM",
               "R-1024A": "XCCL", "399099002": "XCCL", "R-1024B": "XCCM", "399192003": "XCCM"}
_VIEW_WORDS = (("MLO", r"medio ?lateral oblique|oblique"), ("CC", r"cranio ?caudal"),
               ("ML", r"medio ?lateral"), ("LM", r"latero ?medial"))
_VIEW_TOKENS = ("xccl", "xccm", "mlo", "cc", "ml", "lm")
_SIDE_WORDS = {"left": "L", "lt": "L", "l": "L", "right": "R", "rt": "R", "r": "R"}
# 'lcc', 'rmlo', 'leftcc': a side and a view written as one token.
_SIDE_VIEW_TOKEN = re.compile(r"(left|right|l|r)(" + "|".join(_VIEW_TOKENS) + r")")


@dataclasses.dataclass(frozen=True)
class ImageView:
  """What one mammography image shows, and which attribute said so.

  Attributes:
    laterality: 'L', 'R', or '' when nothing says.
    view: ViewPosition's code ('CC', 'MLO', 'ML', 'LM', 'XCCL', ...), or '' when nothing says.
    intent: PresentationIntentType ('FOR PRESENTATION', 'FOR PROCESSING' or '').
    laterality_from, view_from: the attribute that gave it ('ImageLaterality', 'ViewCodeSequence',
      'SeriesDescription', 'file name', ...), '' when none did.
  """
  laterality: str = ""
  view: str = ""
  intent: str = ""
  laterality_from: str = ""
  view_from: str = ""


def _text_view(text: str) -> tuple[str, str]:
  """(laterality, view) a description or a file name states; '' for what it does not."""
  words = " ".join(re.sub(r"[^a-z0-9]+", " ", (text or "").lower()).split())
  side, view = "", ""
  for token in words.split():
    match = _SIDE_VIEW_TOKEN.fullmatch(token)
    if match:
      side = side or _SIDE_WORDS[match.group(1)]
      view = view or match.group(2).upper()
    elif token in _VIEW_TOKENS:
      view = view or token.upper()
    elif token in _SIDE_WORDS:
      side = side or _SIDE_WORDS[token]
  if not view:
    view = next((code for code, words_re in _VIEW_WORDS if re.search(words_re, words)), "")
  return side, view


def _orientation_view(value) -> tuple[str, str]:
  """(laterality, view) from PatientOrientation's column direction (DICOM PS3.3 C.8.11.7:
  L CC 'A\\R', R CC 'P\\L', L MLO 'A\\FR', R MLO 'P\\FL'): going down the image runs
  medially, toward the other side; a head or foot component means an oblique or lateral view."""
  parts = [str(v).upper() for v in (value or [])]
  if len(parts) != 2:
    return "", ""
  column = parts[1]
  side = "L" if "R" in column and "L" not in column else (
      "R" if "L" in column and "R" not in column else "")
  return side, ("" if not side else "CC" if not set(column) & {"F", "H"} else "")


def mammogram_view(ds: pydicom.Dataset, path: Path) -> ImageView:
  """Laterality and view of a mammography image from every place exports put them.

  In this order, the first that says wins, each for itself: ImageLaterality, Laterality;
  ViewPosition, ViewCodeSequence (code, then meaning); SeriesDescription, ProtocolName,
  ImageComments, AcquisitionDeviceProcessingDescription ('L CC', 'RMLO', 'left
  craniocaudal'); PatientOrientation (its column direction gives the side, and CC when it has no
  head or foot component); last the file and folder names ('..._LEFT_CC/1-1.dcm').
  """
  found = {"laterality": ("", ""), "view": ("", "")}

  def offer(source: str, side: str = "", view: str = "") -> None:
    if side in ("L", "R") and not found["laterality"][0]:
      found["laterality"] = (side, source)
    if view and not found["view"][0]:
      found["view"] = (view, source)

  for keyword in ("ImageLaterality", "Laterality"):
    offer(keyword, side=str(ds.get(keyword, "") or "").strip().upper())
  offer("ViewPosition", view=str(ds.get("ViewPosition", "") or "").strip().upper())
  for item in ds.get("ViewCodeSequence") or ():
    code = _VIEW_CODES.get(str(item.get("CodeValue", "") or "").strip())
    offer("ViewCodeSequence", view=code or _text_view(str(item.get("CodeMeaning", "")))[1])
  for keyword in ("SeriesDescription", "ProtocolName", "ImageComments",
                  "AcquisitionDeviceProcessingDescription"):
    offer(keyword, *_text_view(str(ds.get(keyword, "") or "")))
  offer("PatientOrientation", *_orientation_view(ds.get("PatientOrientation")))
  for part in (path.stem, *reversed(path.parent.parts[-3:])):
    offer("file name", *_text_view(part))
  (side, side_from), (view, view_from) = found["laterality"], found["view"]
  return ImageView(side, view, str(ds.get("PresentationIntentType", "") or "").strip().upper(),
                   side_from, view_from)


@dataclasses.dataclass
class SeriesInfo:
  """One image series, from its headers.

  Attributes:
    uid, study_uid: SeriesInstanceUID, StudyInstanceUID.
    files, sop_instance_uids: the series' files and their SOPInstanceUIDs, in the same order.
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


@dataclasses.dataclass
class ScanResult:
  """Studies found under a folder, and the files that could not be read (``'path: why'``)."""
  studies: dict[str, StudyInfo] = dataclasses.field(default_factory=dict)
  problems: list[str] = dataclasses.field(default_factory=list)

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


def scan_folder(root: Path | str) -> ScanResult:
  """Indexes every DICOM file under ``root`` (any depth, any file names).

  Returns:
    The studies and series found, and one problem line per DICOM file whose header could not
    be read. Non-DICOM files and DICOMDIR are skipped without a problem.
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
      result.problems.append(f"{path}: corrupt DICOM file ({error})")
      continue
    result.studies[study_uid] = study
    study.series[series_uid] = series
  return result


# --------------------------------------------------------------------------------------------
# Choosing the DCE series
# --------------------------------------------------------------------------------------------
def is_dce_candidate(series: SeriesInfo) -> bool:
  """An MR image series that could be a DCE phase (not a localizer, T2, DWI, MIP, map...)."""
  if not series.is_mr or series.frames_per_position < 2:
    return False
  if _NOT_DCE.search(normalise_description(series.description)):
    return False
  if _NOT_DCE_IMAGE_TYPES.intersection(series.image_type):
    return False
  if (series.repetition_time_ms or 0.0) >= _MAX_DCE_REPETITION_MS:
    return False
  return (series.echo_time_ms or 0.0) < _MAX_DCE_ECHO_MS


def _post_ordinal(text: str) -> int | None:
  for pattern in _POST_ORDINAL:
    match = pattern.search(text)
    if match:
      token = match.group(1)
      return _ORDINAL_WORDS.get(token) or int(token)
  return None


@dataclasses.dataclass(frozen=True)
class _Role:
  """What a series description and its times say about its place in the dynamic scan.

  Attributes:
    pre: 2 explicit ('pre', 'native'), 1 weak ('c-', 'w/o'), 0 not pre-contrast.
    post: says post-contrast ('1st pass', 'post 2', '+c', ...).
    ordinal: which post-contrast phase, when the description says so.
    dynamic: looks like a dynamic acquisition ('dyn', 'vibrant', 'ph2', ...).
    timed: AcquisitionTime or TriggerTime is known.
    order: acquisition order key: time, trigger time, 'PhN' number, SeriesNumber.
  """
  pre: int
  post: bool
  ordinal: int | None
  dynamic: bool
  timed: bool
  order: tuple


def _role(series: SeriesInfo) -> _Role:
  text = normalise_description(series.description)
  ordinal = _post_ordinal(text)
  pre = 2 if _PRE_STRONG.search(text) else 1 if _PRE_WEAK.search(text) else 0
  phase = _PHASE_NUMBER.search(text)
  unknown = math.inf
  order = (unknown if series.acquisition_time_s is None else series.acquisition_time_s,
           unknown if series.trigger_time_ms is None else series.trigger_time_ms,
           int(phase.group(1)) if phase else unknown,
           unknown if series.number is None else series.number)
  post = ordinal is not None or (pre == 0 and bool(_POST_ANY.search(text)))
  timed = series.acquisition_time_s is not None or series.trigger_time_ms is not None
  return _Role(pre, post, ordinal, bool(_DYNAMIC.search(text)), timed, order)


def _seen(series: Iterable[SeriesInfo]) -> str:
  return ", ".join(repr(s.description or "(no description)") for s in
                   sorted(series, key=lambda s: (s.number is None, s.number or 0, s.description)))


def _size(series: SeriesInfo) -> str:
  return (f"{series.columns}x{series.rows}x{series.frames_per_position} voxels, "
          f"spacing {series.pixel_spacing}, orientation {series.orientation}")


def _from_multiphase(series: SeriesInfo, post_index: int) -> DicomDce:
  positions = sorted(series.temporal_positions)
  if post_index >= len(positions):
    raise DiscoveryError(
        f"multiphase series {series.description!r} has {len(positions)} temporal positions; "
        f"post-contrast phase {post_index} needs {post_index + 1}")
  files = tuple(series.files)
  return DicomDce(pre=SeriesSelection(files, positions[0], series.description),
                  post=SeriesSelection(files, positions[post_index], series.description))


def _contrast_evidence(group: list[SeriesInfo]) -> dict[str, bool]:
  """Which series the contrast tags say were acquired after the injection.

  A series acquired at or after ContrastBolusStartTime was; one acquired before it was not.
  Without a start time, a series carrying contrast tags was, and one without them was not.
  Tags only count when they set series apart: some vendors copy the agent onto every series of
  the exam, the pre-contrast one included, and then they say nothing.
  """
  starts = [s.contrast_start_s for s in group if s.contrast_start_s is not None]
  start = min(starts) if starts else None
  after = {s.uid: (s.acquisition_time_s >= start
                   if start is not None and s.acquisition_time_s is not None else s.contrast)
           for s in group}
  return after if len(set(after.values())) > 1 else {}


def _pick_in_group(group: list[SeriesInfo], post_index: int
                   ) -> tuple[SeriesInfo | None, SeriesInfo | None]:
  """(pre, post) among series of one geometry; either is None when it cannot be told."""
  roles = {s.uid: _role(s) for s in group}
  # A series the contrast tags place after the injection is never the pre-contrast one.
  for uid, after in _contrast_evidence(group).items():
    if after:
      roles[uid] = dataclasses.replace(roles[uid], pre=0, post=True)
  ordered = sorted(group, key=lambda s: roles[s.uid].order)
  explicit = [s for s in ordered if roles[s.uid].pre and not roles[s.uid].post]
  if explicit:
    pre = min(explicit, key=lambda s: (-roles[s.uid].pre, -roles[s.uid].dynamic))
    rest = [s for s in ordered if not roles[s.uid].pre]
  else:
    # No description says pre-contrast: the one series not labelled post-contrast is, or
    # else the earliest of them, if their order is known (times, 'PhN' numbers, or series
    # numbers beside labelled post-contrast series).
    unlabelled = [s for s in ordered if not roles[s.uid].post]
    labelled = len(unlabelled) < len(ordered)
    if not unlabelled or len(ordered) < 2:
      return None, None
    if len(unlabelled) > 1:
      first, second = roles[unlabelled[0].uid], roles[unlabelled[1].uid]
      if first.order == second.order or not (first.timed or labelled
                                             or first.order[2] < math.inf):
        return None, None
    pre = unlabelled[0]
    rest = [s for s in ordered if s is not pre]
  # A series acquired before the pre-contrast one cannot be post-contrast.
  rest = [s for s in rest if not roles[s.uid].order[0] < roles[pre.uid].order[0]]
  posts = sorted(rest, key=lambda s: (roles[s.uid].ordinal or math.inf, roles[s.uid].order))
  numbered = [s for s in posts if roles[s.uid].ordinal == post_index]
  if numbered:
    return pre, numbered[0]
  return pre, posts[post_index - 1] if len(posts) >= post_index else None


def select_dce(series: Iterable[SeriesInfo], post_index: int = 1) -> DicomDce:
  """Chooses the pre-contrast and the ``post_index``-th post-contrast series of one MR study.

  In this order:
    1. a multiphase series (at least two temporal positions, e.g. GE 'Ax Vibrant MultiPhase',
       I-SPY2 'original DCE'): its first temporal position is the pre-contrast phase and the
       ``post_index``-th after it the post-contrast one;
    2. series descriptions ('ax dyn pre' / 'ax dyn 1st pass', 'T1 FL3D AX PRE' / 'POST 1',
       'Ph1/ax 3d dyn', 'ax t1 +c', ...), pairing only series of one geometry;
    3. the acquisition order (AcquisitionTime, TriggerTime, SeriesNumber) of same-geometry
       series: the earliest is pre-contrast.
  In 2 and 3 the contrast tags overrule: a series acquired after ContrastBolusStartTime, or
  the one carrying contrast tags when others of its geometry do not, is never pre-contrast.
  Localizers, T2, DWI/ADC, MIPs, subtractions and other derived series are never chosen
  (derived multiphase series only when no original one exists).

  Args:
    series: the series of one study.
    post_index: 1 for the first post-contrast phase (the paper's choice), 2 for the second...

  Raises:
    DiscoveryError: no pre- or no post-contrast series; the message lists the descriptions
      seen.
  """
  if post_index < 1:
    raise ValueError(f"post_index must be >= 1, got {post_index}")
  series = list(series)
  candidates = [s for s in series if is_dce_candidate(s)]
  multiphase = [s for s in candidates if len(s.temporal_positions) >= 2]
  if multiphase:
    best = min(multiphase, key=lambda s: (
        s.is_derived, -(s.rows or 0) * (s.columns or 0) * s.frames_per_position,
        -len(s.temporal_positions)))
    return _from_multiphase(best, post_index)

  groups: dict[tuple, list[SeriesInfo]] = {}
  for s in candidates:
    if not s.is_derived:
      groups.setdefault(s.geometry, []).append(s)
  found_pre = None
  best_pair, best_rank = None, None
  for group in groups.values():
    pre, post = _pick_in_group(group, post_index)
    found_pre = found_pre or pre
    if pre is None or post is None:
      continue
    rank = (_role(pre).pre, sum(_role(s).dynamic for s in group), len(group))
    if best_rank is None or rank > best_rank:
      best_pair, best_rank = (pre, post), rank
  if best_pair is None:
    # Pairing across geometries finds the pair that the grouping kept apart (e.g. a pre-contrast
    # series named like the posts, alone in its geometry): a size mismatch, said as such.
    pre, post = _pick_in_group([s for s in candidates if not s.is_derived], post_index)
    if pre is not None and post is not None and pre.geometry != post.geometry:
      raise DiscoveryError(
          f"pre/post size mismatch: pre-contrast {pre.description!r} is {_size(pre)}, "
          f"post-contrast {post.description!r} is {_size(post)}")
    if found_pre is None:
      raise DiscoveryError(f"no pre-contrast series among: {_seen(series) or 'no series'}")
    posts = [s for s in candidates if s.geometry != found_pre.geometry and _role(s).post
             and not s.is_derived]
    if posts:
      raise DiscoveryError(
          f"pre/post size mismatch: pre-contrast {found_pre.description!r} is "
          f"{_size(found_pre)}, post-contrast {posts[0].description!r} is {_size(posts[0])}")
    raise DiscoveryError(
        f"no post-contrast series (phase {post_index}) with the geometry of pre-contrast "
        f"{found_pre.description!r} among: {_seen(series)}")
  pre, post = best_pair
  return DicomDce(pre=SeriesSelection(tuple(pre.files), None, pre.description),
                  post=SeriesSelection(tuple(post.files), None, post.description))

"""The generic layout: a clinical CSV and one folder of DICOM (or NIfTI) per patient.

::

  root/clinical.csv            one row per patient: patient_id, the pCR label, rhpc columns
  root/<patient_id>/...        DICOM in any folder structure, MR and MG studies mixed
  root/<patient_id>/pre_pre.nii.gz, pre_post.nii.gz (or pre_sub.nii.gz), mid_..., post_...

The NAT phase of each MR study comes from, in this order: DICOM ClinicalTrialTimePointID
(T0 Pre-NAT, T1 early treatment (ignored unless ``t1_phase``), T2 Mid-NAT, T3 Post-NAT; or
'pre' / 'mid' / 'post'), keywords in StudyDescription ('pre-NAT', 'baseline', 'mid-NAT',
'interim', 'post-NAT', 'pre-surgery', 'follow-up', or an I-SPY style '..._T2'), and last the
StudyDate order of the studies left (one -> Pre-NAT; two -> Pre-NAT and ``two_study_followup``;
three -> Pre-NAT, Mid-NAT, Post-NAT). The mammogram views are the Pre-NAT MG images of the
tumour side (the clinical laterality, or :data:`UNKNOWN_SIDE_RULE`): its best CC and its best
MLO image, view ``mg_view`` first (:func:`choose_mammogram`). Every other image or series is
listed with the reason it is not used (:class:`~input_pipeline.ingestion.patient.Unused`).

:func:`patient_imaging` is shared with the I-SPY2 adapter. clinical.csv is read by
``clinical_csv.py``; what a folder holds unused, unreadable files included, is told by
``unused.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import re
from pathlib import Path
from typing import Any, Mapping

from input_pipeline import clinical_table, schema
from input_pipeline.ingestion.dce_select import DiscoveryError, select_dce
from input_pipeline.ingestion.dicom_scan import SeriesInfo, StudyInfo, scan_folder
from input_pipeline.ingestion.layouts.assemble import Joined, assemble
from input_pipeline.ingestion.layouts.clinical_csv import PATIENT_ID_COLUMN, read_clinical_csv
from input_pipeline.ingestion.layouts.phases import T1, phase_of_text, resolve_phases
from input_pipeline.ingestion.layouts.unused import (
    unread_note,
    unreadable_files,
    unreadable_warning,
    unused_series,
)
from input_pipeline.ingestion.mammogram_view import ImageView
from input_pipeline.ingestion.patient import (
    Imaging,
    MammogramImage,
    MriExam,
    NiftiDce,
    PatientSource,
    Unused,
)
from input_pipeline.schema import Phase

CLINICAL_FILE = "clinical.csv"
_VIEWS = ("CC", "MLO")
_SIDE_NAMES = {"L": "left", "R": "right"}
_MISSING = frozenset({"", "nan", "na", "none", "null", "unknown", "missing"})

def _phase_option(name: str | None, field: str, allowed: tuple[str, ...]) -> Phase | None:
  if name is None:
    return None
  if name not in allowed:
    raise ValueError(f"{field} must be one of {allowed}, got {name!r}")
  return Phase[name.upper()]


def _date(study: StudyInfo) -> datetime.date | None:
  try:
    return datetime.datetime.strptime(study.date, "%Y%m%d").date()
  except ValueError:
    return None


# The rule for a patient whose tumour side the clinical table does not give (docs/data.md,
# "Which images are used"); prepare and predict both come here.
UNKNOWN_SIDE_RULE = ("the breast the Pre-NAT mammography study images alone; if it images "
                     "both, the one with more images (a work-up adds views of the tumour side); "
                     "on a tie, the left (breast cancer is slightly more common on the left)")


@dataclasses.dataclass(frozen=True)
class _Image:
  study: StudyInfo
  series: SeriesInfo
  path: Path
  view: ImageView

  def item(self) -> str:
    name = self.series.description or f"{self.view.laterality} {self.view.view}".strip()
    return f"MG image {name or '(no description)'!r} of {self.study.label()}"


def _view_rank(view: str, preferred: str) -> int:
  """0 the preferred view, 1 the other of CC / MLO, 2 another known view, 3 unknown."""
  if view == preferred:
    return 0
  return 1 if view in _VIEWS else 2 if view else 3


def _side_by_rule(images: list[_Image]) -> tuple[str | None, str]:
  """(side, how it was chosen) when the clinical table does not give it (UNKNOWN_SIDE_RULE)."""
  counts = collections.Counter(i.view.laterality for i in images if i.view.laterality)
  if not counts:
    return None, "no image states its side either; any image may be taken"
  if len(counts) == 1:
    side = next(iter(counts))
    return side, f"the study images the {_SIDE_NAMES[side]} breast only"
  side = max(counts, key=lambda s: (counts[s], s == "L"))
  how = ("both breasts imaged equally, the left taken" if counts["L"] == counts["R"] else
         f"the {_SIDE_NAMES[side]} breast has more images ({counts[side]} against "
         f"{counts['L' if side == 'R' else 'R']})")
  return side, how


def _chosen_views(candidates: list[_Image], preferred: str) -> list[_Image]:
  """The best image of each of CC and MLO among ``candidates``, the preferred view first; when
  neither is there, the one best image of another (or an unknown) view. Best: 'For
  Presentation' before 'For Processing', then the path."""
  def best(images: list[_Image]) -> _Image | None:
    return min(images, key=lambda i: (_view_rank(i.view.view, preferred),
                                      i.view.intent == "FOR PROCESSING", str(i.path)),
               default=None)

  views = [best([i for i in candidates if i.view.view == view])
           for view in (preferred, *(v for v in _VIEWS if v != preferred))]
  chosen = [image for image in views if image is not None]
  if chosen:
    return chosen
  other = best(candidates)
  return [other] if other is not None else []


def choose_mammogram(studies: list[StudyInfo], side: str | None, pre_mr: StudyInfo | None,
                     mg_view: str = "CC"
                     ) -> tuple[tuple[MammogramImage, ...], list[Unused], list[str]]:
  """The Pre-NAT mammogram views of the tumour side ('L' / 'R'), every other mammogram with the
  reason it is not used, and warnings.

  The Pre-NAT MG study is the one tagged or described Pre-NAT; else, among untagged MG studies,
  the one nearest in date to the Pre-NAT MRI (the earliest when that date is unknown). In it:
  the images of the tumour side (when the clinical table does not give it: UNKNOWN_SIDE_RULE;
  when no image states the tumour side, those that state no side, with a warning). Of those,
  the best CC and the best MLO image are used, view ``mg_view`` first ('For Presentation' before
  'For Processing'); without either, one image of another view, else one whose view nothing
  states (with a warning).

  Returns:
    (the views used, preferred first (empty without a mammogram), unused images, warnings).
  """
  images = [_Image(study, series, path, view) for study in studies
            for series in study.series.values() if series.is_mammogram
            for path, view in zip(series.files, series.views)]
  if not images:
    return (), [], []
  mg = sorted({i.study.uid: i.study for i in images}.values(), key=lambda s: s.sort_key)
  phases = {s.uid: phase_of_text(s.time_point_id, True) or phase_of_text(s.description, False)
            for s in mg}
  chosen = [s for s in mg if phases[s.uid] == Phase.PRE]
  if not chosen:
    anchor = _date(pre_mr) if pre_mr is not None else None

    def distance(study: StudyInfo) -> int:
      date = _date(study)
      return abs((date - anchor).days) if date and anchor else 0

    untagged = [s for s in mg if phases[s.uid] is None]
    chosen = sorted(untagged, key=lambda s: (distance(s), s.sort_key))[:1]
  unused = [Unused(i.item(), str(i.path),
                   f"mammography study of another time point ({phases[i.study.uid]})"
                   if phases[i.study.uid] not in (None, Phase.PRE) else
                   "not the Pre-NAT mammography study (the one nearest the Pre-NAT MRI is)")
            for i in images if i.study.uid not in {s.uid for s in chosen}]
  images = [i for i in images if i.study.uid in {s.uid for s in chosen}]
  warnings: list[str] = []
  rule = ""
  if side is None:
    side, how = _side_by_rule(images)
    rule = " (by rule)"
    warnings.append(f"tumour side unknown in the clinical table: {how}")
  candidates = [i for i in images if side is None or i.view.laterality == side]
  if not candidates and images:
    candidates = [i for i in images if not i.view.laterality]
    if candidates:
      warnings.append(f"no image states the {_SIDE_NAMES[side]} side; took one that states "
                      "no side")
  preferred = mg_view.upper()
  used = _chosen_views(candidates, preferred)
  if len(used) == 1 and _view_rank(used[0].view.view, preferred) >= 2:
    view = used[0].view.view
    warnings.append(f"mammogram view {view}: no CC or MLO image" if view
                    else "mammogram view not found (no ViewPosition, ViewCodeSequence, "
                    "description, orientation or file name gives it)")
  names = " and ".join(i.view.view or "unknown-view" for i in used)
  for image in images:
    if image in used:
      continue
    if image.view.laterality and side and image.view.laterality != side:
      reason = (f"{_SIDE_NAMES[image.view.laterality]} breast; the tumour side is "
                f"{_SIDE_NAMES[side]}{rule}")
    elif image not in candidates:
      reason = "states no side while another image states the tumour side"
    else:
      reason = (f"same breast, view {image.view.view or 'unknown'}"
                f"{', For Processing' if image.view.intent == 'FOR PROCESSING' else ''}; "
                f"the {names} image{'s are' if len(used) > 1 else ' is'} used")
    unused.append(Unused(image.item(), str(image.path), reason))
  return tuple(MammogramImage(i.path, i.view.view) for i in used), unused, warnings


def _nifti_exams(folder: Path) -> dict[Phase, NiftiDce]:
  found: dict[str, Path] = {}
  for path in folder.iterdir():
    match = re.fullmatch(r"(pre|mid|post)_(pre|post|sub)\.nii(?:\.gz)?", path.name)
    if match and path.is_file():
      found[f"{match.group(1)}_{match.group(2)}"] = path
  exams = {}
  for name in schema.PHASE_NAMES:
    pre, post, sub = (found.get(f"{name}_{kind}") for kind in ("pre", "post", "sub"))
    if pre is None and post is None and sub is None:
      continue
    if sub is None and (pre is None or post is None):
      raise DiscoveryError(f"{folder}: {name}_pre and {name}_post (or {name}_sub) NIfTI are "
                           f"needed together; found only {(pre or post).name}")
    exams[Phase[name.upper()]] = NiftiDce(pre=pre, post=post, subtraction=sub)
  return exams


def patient_imaging(folder: Path, *, side: str | None = None,
                    two_study_followup: Phase = Phase.POST, t1_phase: Phase | None = None,
                    mg_view: str = "CC", post_index: int = 1) -> Imaging:
  """The DCE exams per phase, the mammogram views, and what else the patient folder holds.

  Raises:
    DiscoveryError: an unreadable DICOM file that may belong to a series used
      (:func:`unreadable_files`), a study whose phase or DCE series cannot be told, or a phase
      given twice (DICOM and NIfTI).
  """
  scan = scan_folder(folder)
  mri: dict[Phase, MriExam] = {}
  mr_studies = scan.sorted_studies(mr=True)
  studies = resolve_phases(mr_studies, two_study_followup, t1_phase)
  used: dict[str, set[Path]] = {}
  for phase, study in studies.items():
    try:
      dce = select_dce(study.series.values(), post_index)
    except DiscoveryError as error:
      raise DiscoveryError(f"{phase.label} {study.label()}: {error}{unread_note(scan)}") from None
    mri[phase] = dataclasses.replace(dce, study_description=study.description)
    used[study.uid] = set(dce.pre.files) | set(dce.post.files)
  assigned = {s.uid for s in studies.values()}
  reasons = {s.uid: ("MR study of the early-treatment time point (T1): used only with the "
                     "t1_phase=mid layout option" if phase_of_text(s.time_point_id, True) == T1
                     or phase_of_text(s.description, False) == T1 else
                     "MR study given no NAT phase")
             for s in mr_studies if s.uid not in assigned}
  nifti = _nifti_exams(folder)
  for phase, exam in nifti.items():
    if phase in mri:
      raise DiscoveryError(f"{phase.label} is given twice: as DICOM {studies[phase].label()} "
                           f"and as NIfTI {exam.pre or exam.subtraction}")
    mri[phase] = exam
  mammograms, unused_mg, warnings = choose_mammogram(scan.sorted_studies(mr=False), side,
                                                     studies.get(Phase.PRE), mg_view)
  used_files = set().union(*used.values(), [m.path for m in mammograms])
  unreadable = unreadable_files(scan, used_files)
  imaging = Imaging(dict(sorted(mri.items())), mammograms,
                    unused_series(scan, used, reasons, post_index) + unused_mg + unreadable,
                    warnings + unreadable_warning(unreadable))
  if not imaging.mri and not imaging.mammograms:
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    found = sum(len(s.files) for st in scan.studies.values() for s in st.series.values())
    imaging.empty = (
        "the folder is empty" if not files else
        f"none of its {files} files is a DICOM image or a NIfTI exam{unread_note(scan)}"
        if not found else
        f"none of its {found} DICOM images is used (see the unused images)")
  return imaging


def tumour_side(row: Mapping[str, Any]) -> str | None:
  """'L' / 'R' from the clinical row's laterality column (any header schema knows)."""
  column = clinical_table.find_columns(row.keys()).get("laterality")
  if column is None:
    return None
  code, _ = clinical_table.parse_value(schema.BY_NAME["laterality"], row[column])
  return {0: "L", 1: "R"}.get(code)


def _label(row: Mapping[str, Any], column: str | None) -> tuple[int | None, str | None]:
  if column is None:
    return None, None
  raw = row.get(column)
  if re.sub(r"[\s./\-]+", "", clinical_table.normalise(raw)) in _MISSING:
    return None, None
  label = clinical_table.parse_label(raw)
  if label is None:
    return None, (f"pCR label {raw!r} in column {column!r} not recognised "
                  "(use 1/0, pCR/non-pCR or yes/no)")
  return label, None


def find_file(root: Path, names: tuple[str, ...], depth: int = 2) -> Path | None:
  """The first of ``names`` in ``root`` or up to ``depth`` folders below it (not deeper, so
  a table is found beside a download without walking its million DICOM files)."""
  for level in range(depth + 1):
    for name in names:
      found = sorted(root.glob("/".join(["*"] * level + [name])))
      if found:
        return found[0]
  return None


@dataclasses.dataclass(frozen=True)
class GenericOptions:
  """The generic layout's options (``prepare --layout_option NAME=VALUE``).

  Attributes:
    two_study_followup: NAT phase of the later of two undated-phase MR studies ('mid', 'post').
    t1_phase: 'mid' makes a T1 (early treatment) study Mid-NAT when no study is; None
      ignores T1 studies.
    mg_view: the mammography view stored first ('CC' or 'MLO'; both are used when present).
    post_index: which post-contrast phase is subtracted (1 = first).
    column_map: 'HEADER=variable;...': clinical.csv columns read as these rhpc variables.
    ignore_columns: 'HEADER;...': clinical.csv columns that hold no rhpc variable.
    clinical_encoding: the text encoding of clinical.csv (a Python codec name).

  Raises:
    ValueError: an option out of its range.
  """
  two_study_followup: str = "post"
  t1_phase: str | None = None
  mg_view: str = "CC"
  post_index: int = 1
  column_map: str | None = None
  ignore_columns: str | None = None
  clinical_encoding: str = "utf-8-sig"

  def __post_init__(self):
    _phase_option(self.two_study_followup, "two_study_followup", ("mid", "post"))
    _phase_option(self.t1_phase, "t1_phase", ("mid",))
    if self.mg_view.upper() not in _VIEWS:
      raise ValueError(f"mg_view must be 'CC' or 'MLO', got {self.mg_view!r}")

  @classmethod
  def of(cls, fields: Mapping[str, Any]) -> GenericOptions:
    """The options named in ``fields``; an unknown name is a ValueError that lists the known."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
      raise ValueError(f"unknown generic layout option(s) {unknown}; known: {known}")
    return cls(**fields)


def discover(root: Path | str, options: GenericOptions | None = None, *, workers: int = 1,
             progress: bool = False, **fields: Any) -> list[PatientSource]:
  """Finds every patient of a generic export.

  Args:
    root: the folder holding clinical.csv and one folder per patient.
    options: the layout's options; default: ``GenericOptions`` of ``fields``.
    workers: processes scanning patient folders (see ``workers.map_patients``).
    progress: show the scan's progress bar (input_pipeline.cli.progress).
    **fields: :class:`GenericOptions` fields by name (what ``layouts.discover`` passes on).

  Returns:
    One PatientSource per patient in the CSV or with a folder, sorted by id; patients that
    cannot be used carry ``error`` (a folder without a CSV row, a row without a folder, an
    unrecognised label, unreadable DICOM, a study without pre-contrast series...).

  Raises:
    FileNotFoundError / ValueError: no clinical.csv, no patient_id column, a header close to
      an rhpc variable's but not one (clinical_table.check_columns), text not in
      ``clinical_encoding``, a malformed row, a bad option.
  """
  root = Path(root)
  if options is None:
    options = GenericOptions.of(fields)
  elif fields:
    raise ValueError(f"discover: give options or {sorted(fields)}, not both")
  followup = _phase_option(options.two_study_followup, "two_study_followup", ("mid", "post"))
  t1 = _phase_option(options.t1_phase, "t1_phase", ("mid",))
  csv_path = root / CLINICAL_FILE
  if not csv_path.is_file():
    raise FileNotFoundError(f"{root}: no {CLINICAL_FILE} (one row per patient, a "
                            f"{PATIENT_ID_COLUMN!r} column and the pCR label)")
  headers, rows = read_clinical_csv(
      csv_path, clinical_table.ColumnChoices.parse(options.column_map, options.ignore_columns),
      options.clinical_encoding)
  label_column = clinical_table.find_label_column(headers)
  folders = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}

  def join(key: str) -> Joined:
    source = PatientSource(key)
    if key not in rows:
      return Joined.skipped(source, f"folder {folders[key]} has no row in {csv_path}")
    if len(rows[key]) > 1:
      return Joined.skipped(source, f"{len(rows[key])} rows for this patient in {csv_path}")
    source.clinical = row = rows[key][0]
    if key not in folders:
      return Joined.skipped(source, f"no folder {root / key} for this row of {csv_path}")
    source.label, source.error = _label(row, label_column)
    if source.error:
      return Joined(source)
    return Joined(source, FolderScan(folders[key], tumour_side(row), followup, t1,
                                     options.mg_view, options.post_index))

  return assemble(set(rows) | set(folders), join, workers=workers, progress=progress)


@dataclasses.dataclass(frozen=True)
class FolderScan:
  """One patient folder and the options of :func:`patient_imaging` (the I-SPY2 adapter's
  folders are read the same way)."""
  folder: Path
  side: str | None = None
  two_study_followup: Phase = Phase.POST
  t1_phase: Phase | None = None
  mg_view: str = "CC"
  post_index: int = 1

  def imaging(self) -> Imaging:
    return patient_imaging(self.folder, side=self.side,
                           two_study_followup=self.two_study_followup, t1_phase=self.t1_phase,
                           mg_view=self.mg_view, post_index=self.post_index)

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
three -> Pre-, Mid-, Post-NAT). The mammogram is the Pre-NAT MG image of the tumour side (the
clinical laterality), view ``mg_view`` first, then the other of CC / MLO.

:func:`patient_imaging` is shared with the I-SPY2 adapter.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import re
from pathlib import Path
from typing import Any, Mapping

from input_pipeline import clinical_table, schema
from input_pipeline.dicom_scan import DiscoveryError, StudyInfo, scan_folder, select_dce
from input_pipeline.patient import MriExam, NiftiDce, PatientSource
from input_pipeline.schema import Phase
from input_pipeline.workers import map_patients

CLINICAL_FILE = "clinical.csv"
PATIENT_ID_COLUMN = "patient_id"
_VIEWS = ("CC", "MLO")
_MISSING = frozenset({"", "nan", "na", "none", "null", "unknown", "missing"})

_T1, _FOLLOW_UP = "t1", "follow-up"
# A time-point tag is 'T0'..'T3' anywhere; a description only names one after 'MRI'
# ('ISPY2_MRI_T2', 'ISPY2MRIT0'), since 'T1'/'T2' alone there more likely mean weightings.
_TAG_TIME_POINT = re.compile(r"(?:^|[^a-z0-9])t ?([0-3])(?:$|[^0-9])")
_DESCRIBED_TIME_POINT = re.compile(r"mri[ _\-]*t([0-3])(?:$|[^0-9])")
_TREATMENT = r"(?:nat|nac|nact|neoadjuvant|treatment|therapy|chemo\w*)"
_DESCRIBED = (
    (Phase.POST, re.compile(rf"\bpost ?{_TREATMENT}\b|\bposttreatment\b|\bpre ?(?:op|operative|"
                            r"surgery|surgical)\b|\bpreoperative\b|\bpresurgical\b")),
    (Phase.MID, re.compile(rf"\bmid ?{_TREATMENT}?\b|\bmidtreatment\b|\binterim\b|"
                           rf"\bduring ?{_TREATMENT}\b")),
    (Phase.PRE, re.compile(rf"\bpre ?{_TREATMENT}\b|\bpretreatment\b|\bprenat\b|\bbaseline\b")),
    (_FOLLOW_UP, re.compile(r"\bfollow ?up\b|\bfollowup\b")),
)


def _phase_option(name: str | None, field: str, allowed: tuple[str, ...]) -> Phase | None:
  if name is None:
    return None
  if name not in allowed:
    raise ValueError(f"{field} must be one of {allowed}, got {name!r}")
  return Phase[name.upper()]


def phase_of_text(text: str, tag: bool) -> Phase | str | None:
  """The phase a ClinicalTrialTimePointID (``tag``) or StudyDescription names.

  Returns a Phase, 't1' (early treatment), 'follow-up' (Mid or Post, by date), or None when
  the text says nothing.
  """
  text = (text or "").strip().lower()
  if not text:
    return None
  if tag and text in schema.PHASE_NAMES:
    return Phase[text.upper()]
  match = (_TAG_TIME_POINT if tag else _DESCRIBED_TIME_POINT).search(text)
  if match:
    point = int(match.group(1))
    if point == 1:
      return _T1
    return {0: Phase.PRE, 2: Phase.MID, 3: Phase.POST}[point]
  words = " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())
  for phase, pattern in _DESCRIBED:
    if pattern.search(words):
      return phase
  return None


def resolve_phases(studies: list[StudyInfo], two_study_followup: Phase = Phase.POST,
                   t1_phase: Phase | None = None) -> dict[Phase, StudyInfo]:
  """Which MR study is which NAT phase (see the module docstring for the rules).

  Args:
    studies: the patient's MR studies in date order.
    two_study_followup: the phase of the later of two studies known only by date.
    t1_phase: the phase a T1 (early treatment) study takes when no other study has it;
      None ignores T1 studies.

  Raises:
    DiscoveryError: two studies claim one phase, or more studies than phases are left.
  """
  assigned: dict[Phase, StudyInfo] = {}
  pending: list[tuple[StudyInfo, bool]] = []  # (study, is a follow-up)
  early: list[StudyInfo] = []
  for study in studies:
    phase = phase_of_text(study.time_point_id, tag=True)
    if phase is None:
      phase = phase_of_text(study.description, tag=False)
    if phase == _T1:
      early.append(study)
    elif phase is None or phase == _FOLLOW_UP:
      pending.append((study, phase == _FOLLOW_UP))
    elif phase in assigned:
      raise DiscoveryError(f"two MR studies are {phase.label}: {assigned[phase].label()} and "
                           f"{study.label()}")
    else:
      assigned[phase] = study
  if pending and Phase.PRE not in assigned and not pending[0][1]:
    assigned[Phase.PRE] = pending.pop(0)[0]
  free = [p for p in (Phase.MID, Phase.POST) if p not in assigned]
  if len(pending) == 1 and len(free) == 2:
    free = [two_study_followup]
  if len(pending) > len(free):
    raise DiscoveryError(
        f"cannot tell the NAT phase of {len(pending)} MR studies ("
        + ", ".join(s.label() for s, _ in pending) + "): set ClinicalTrialTimePointID or a "
        "StudyDescription keyword (pre-NAT / mid-NAT / post-NAT)")
  for (study, _), phase in zip(pending, free):
    assigned[phase] = study
  if t1_phase is not None and t1_phase not in assigned and len(early) == 1:
    assigned[t1_phase] = early[0]
  return dict(sorted(assigned.items()))


def _date(study: StudyInfo) -> datetime.date | None:
  try:
    return datetime.datetime.strptime(study.date, "%Y%m%d").date()
  except ValueError:
    return None


def choose_mammogram(studies: list[StudyInfo], side: str | None, pre_mr: StudyInfo | None,
                     mg_view: str = "CC") -> Path | None:
  """The Pre-NAT mammogram of the tumour side ('L' / 'R'), or None.

  The Pre-NAT MG study is the one tagged or described Pre-NAT; else, among untagged MG studies,
  the one nearest in date to the Pre-NAT MRI (the earliest when that date is unknown).
  """
  mg = [s for s in studies if any(x.modality == "MG" for x in s.series.values())]
  if side is None or not mg:
    return None
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
  views = (mg_view.upper(), *[v for v in _VIEWS if v != mg_view.upper()])
  images = [(views.index(view), intent != "FOR PRESENTATION", path)
            for study in chosen for series in study.series.values() if series.modality == "MG"
            for path, (laterality, view, intent) in zip(series.files, series.views)
            if laterality == side and view in views]
  return min(images)[2] if images else None


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
                    mg_view: str = "CC", post_index: int = 1
                    ) -> tuple[dict[Phase, MriExam], Path | None]:
  """The DCE exams per phase and the mammogram in one patient folder.

  Raises:
    DiscoveryError: an unreadable DICOM file, a study whose phase or DCE series cannot be
      told, or a phase given twice (DICOM and NIfTI).
  """
  scan = scan_folder(folder)
  if scan.problems:
    more = f" (and {len(scan.problems) - 1} more)" if len(scan.problems) > 1 else ""
    raise DiscoveryError(f"{scan.problems[0]}{more}; repair or remove the file")
  mri: dict[Phase, MriExam] = {}
  studies = resolve_phases(scan.sorted_studies(mr=True), two_study_followup, t1_phase)
  for phase, study in studies.items():
    try:
      dce = select_dce(study.series.values(), post_index)
    except DiscoveryError as error:
      raise DiscoveryError(f"{phase.label} {study.label()}: {error}") from None
    mri[phase] = dataclasses.replace(dce, study_description=study.description)
  for phase, exam in _nifti_exams(folder).items():
    if phase in mri:
      raise DiscoveryError(f"{phase.label} is given twice: as DICOM {studies[phase].label()} "
                           f"and as NIfTI {exam.pre or exam.subtraction}")
    mri[phase] = exam
  mammogram = choose_mammogram(scan.sorted_studies(mr=False), side, studies.get(Phase.PRE),
                               mg_view)
  return dict(sorted(mri.items())), mammogram


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


def read_clinical_csv(path: Path) -> tuple[list[str], dict[str, list[dict[str, str]]]]:
  """(headers, rows by patient id) of the clinical CSV."""
  with path.open(newline="", encoding="utf-8-sig") as handle:
    reader = csv.DictReader(handle)
    headers = list(reader.fieldnames or [])
    id_column = next((h for h in headers if clinical_table.normalise(h) == "patient id"), None)
    if id_column is None:
      raise ValueError(f"{path}: no {PATIENT_ID_COLUMN!r} column (columns: {headers})")
    rows: dict[str, list[dict[str, str]]] = {}
    for row in reader:
      key = (row.get(id_column) or "").strip()
      if key:
        rows.setdefault(key, []).append(row)
  return headers, rows


def discover(root: Path | str, *, two_study_followup: str = "post",
             t1_phase: str | None = None, mg_view: str = "CC",
             post_index: int = 1, workers: int = 1) -> list[PatientSource]:
  """Finds every patient of a generic export.

  Args:
    root: the folder holding clinical.csv and one folder per patient.
    two_study_followup: NAT phase of the later of two undated-phase MR studies ('mid', 'post').
    t1_phase: 'mid' makes a T1 (early treatment) study Mid-NAT when no study is; None
      ignores T1 studies.
    mg_view: preferred mammography view ('CC' or 'MLO').
    post_index: which post-contrast phase is subtracted (1 = first).
    workers: processes scanning patient folders (see ``workers.map_patients``).

  Returns:
    One PatientSource per patient in the CSV or with a folder, sorted by id; patients that
    cannot be used carry ``error`` (a folder without a CSV row, a row without a folder, an
    unrecognised label, unreadable DICOM, a study without pre-contrast series...).

  Raises:
    FileNotFoundError / ValueError: no clinical.csv, no patient_id column, a bad option.
  """
  root = Path(root)
  followup = _phase_option(two_study_followup, "two_study_followup", ("mid", "post"))
  t1 = _phase_option(t1_phase, "t1_phase", ("mid",))
  if mg_view.upper() not in _VIEWS:
    raise ValueError(f"mg_view must be 'CC' or 'MLO', got {mg_view!r}")
  csv_path = root / CLINICAL_FILE
  if not csv_path.is_file():
    raise FileNotFoundError(f"{root}: no {CLINICAL_FILE} (one row per patient, a "
                            f"{PATIENT_ID_COLUMN!r} column and the pCR label)")
  headers, rows = read_clinical_csv(csv_path)
  label_column = clinical_table.find_label_column(headers)
  folders = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
  sources, scans = [], []
  for key in sorted(set(rows) | set(folders)):
    source = PatientSource(key)
    sources.append(source)
    if key not in rows:
      source.error = f"folder {folders[key]} has no row in {csv_path}"
      continue
    if len(rows[key]) > 1:
      source.error = f"{len(rows[key])} rows for this patient in {csv_path}"
      continue
    source.clinical = row = rows[key][0]
    if key not in folders:
      source.error = f"no folder {root / key} for this row of {csv_path}"
      continue
    source.label, source.error = _label(row, label_column)
    if source.error:
      continue
    scans.append((source, (folders[key], tumour_side(row), followup, t1, mg_view, post_index)))
  results = map_patients(_imaging_job, [job for _, job in scans], workers,
                         (DiscoveryError, OSError))
  for (source, _), (imaging, error) in zip(scans, results):
    source.error = error
    if imaging is not None:
      source.mri, source.mammogram = imaging
  return sources


def _imaging_job(folder, side, followup, t1, mg_view, post_index):
  return patient_imaging(folder, side=side, two_study_followup=followup, t1_phase=t1,
                         mg_view=mg_view, post_index=post_index)

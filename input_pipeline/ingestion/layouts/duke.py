"""Duke-Breast-Cancer-MRI (TCIA, doi:10.7937/TCIA.e3sv-re93) as it is published.

Images, as the NBIA Data Retriever writes them (descriptive or classic folder names; both work
because only DICOM headers are read)::

  Duke-Breast-Cancer-MRI/Breast_MRI_001/01-01-1990-NA-MRI BREAST BILATERAL WWO-97538/
      3.000000-ax dyn pre-93877/1-001.dcm ...
  Duke-Breast-Cancer-MRI/Breast_MRI_001/<StudyInstanceUID>/<SeriesInstanceUID>/1-001.dcm

Tables beside them (found in ``root`` or up to two folders below it, unless given):

* ``Clinical_and_Other_Features.xlsx``: sheet 'Data'; a group row, a header row (names with
  double and trailing spaces: compared whitespace-normalised), a row of value legends, then
  one row per patient ('Patient ID' = 'Breast_MRI_001').
* ``Breast-Cancer-MRI-filepath_filename-mapping.xlsx`` (or the same as .csv), optional: one
  row per file; ``original_path_and_filename`` ('DICOM_Images/Breast_MRI_001/post_1/
  Breast_MRI_001_post_1_005.dcm') names the sequence (pre, post_1..post_4, T1), and
  ``sop_instance_UID`` / ``classic_path`` ('.../<StudyUID>/<SeriesUID>/1-005.dcm') the file.
  When given it decides pre and post-contrast series; else series descriptions do.

Only Pre-NAT MRI exists and there are no mammograms. The label is 'Pathologic Response to
Neoadjuvant Therapy': 1 pCR; 2 non-pCR; 3 DCIS only remaining -> pCR (ypT0/is, the usual pCR
definition, also the paper's); 4 LCIS only remaining -> pCR (LCIS is not invasive disease
and not even a precursor lesion treated as cancer, so no invasive disease remains);
5 or NA -> unavailable, the patient is skipped. Patients who did not receive neoadjuvant
therapy ('Received Neoadjuvant Therapy or Not' = 2) are skipped too.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import openpyxl

from input_pipeline.ingestion.dce_select import DiscoveryError, select_dce
from input_pipeline.ingestion.dicom_scan import ScanResult, scan_folder
from input_pipeline.ingestion.layouts.assemble import Joined, assemble
from input_pipeline.ingestion.layouts.generic import find_file
from input_pipeline.ingestion.layouts.unused import (
    unread_note,
    unreadable_files,
    unreadable_warning,
    unused_series,
)
from input_pipeline.ingestion.patient import DicomDce, Imaging, PatientSource, SeriesSelection
from input_pipeline.schema import Phase

CLINICAL_FILE = "Clinical_and_Other_Features.xlsx"
MAPPING_FILE = "Breast-Cancer-MRI-filepath_filename-mapping"  # .xlsx or .csv
PATIENT = re.compile(r"Breast_MRI_\d+")
LABEL_COLUMN = "Pathologic Response to Neoadjuvant Therapy"
NAT_COLUMN = "Received Neoadjuvant Therapy or Not"
_RESPONSE_TO_LABEL = {1: 1, 2: 0, 3: 1, 4: 1}
_MISSING = frozenset({"", "NA", "N/A", "NC", "NP", "NAN", "NONE"})

_MOL_SUBTYPES = {0: "Luminal-like ER+/HER2-", 1: "Triple positive ER+/HER2+",
                 2: "HER2-enriched ER-/HER2+", 3: "Triple negative"}
_HISTOLOGY = {0: "ductal", 1: "ductal", 2: "lobular", 4: "lobular"}  # the rest: 'other'
_IN_SITU_ONLY = (0, 4)  # DCIS, LCIS
_GRADES = {1: "well", 2: "moderate", 3: "poor"}  # Nottingham grade 1 low .. 3 high
_T_STAGES = {-1: "TX", 0: "T0", 1: "T1", 2: "T2", 3: "T3", 4: "T4", 5: "Tis"}
_N_STAGES = {-1: "NX", 0: "N0", 1: "N1", 2: "N2", 3: "N3"}
_THERAPIES = (("Neoadjuvant Chemotherapy", "chemotherapy"),
              ("Neoadjuvant Endocrine Therapy Medications", "hormonal therapy"),
              ("Neoadjuvant Anti-Her2 Neu Therapy", "immunotherapy"))


def header_key(text: Any) -> str:
  """Duke headers compare lower-cased with runs of whitespace collapsed."""
  return " ".join(str(text or "").split()).lower()


def code(value: Any) -> int | None:
  """A Duke coded value as int; None for NA / NC (not collected) / NP / blank."""
  if value is None or str(value).strip().upper() in _MISSING:
    return None
  try:
    return int(float(str(value).strip()))
  except ValueError:
    return None


def read_clinical(path: Path) -> dict[str, dict[str, Any]]:
  """Rows of Clinical_and_Other_Features.xlsx by 'Patient ID', keyed by :func:`header_key`.

  The header row is the one holding 'Patient ID' (the second of three in the published file);
  rows whose id is not 'Breast_MRI_<n>' (the legend row) are skipped.
  """
  book = openpyxl.load_workbook(path, read_only=True, data_only=True)
  try:
    sheet = book["Data"] if "Data" in book.sheetnames else book.worksheets[0]
    headers: list[str] | None = None
    rows: dict[str, dict[str, Any]] = {}
    for values in sheet.iter_rows(values_only=True):
      if headers is None:
        if any(header_key(v) == "patient id" for v in values):
          headers = _unique([header_key(v) or f"(column {i + 1})" for i, v in enumerate(values)])
        continue
      row = dict(zip(headers, values))
      key = str(row.get("patient id") or "").strip()
      if PATIENT.fullmatch(key):
        rows[key] = row
  finally:
    book.close()
  if headers is None:
    raise ValueError(f"{path}: no 'Patient ID' header cell; is this Duke's {CLINICAL_FILE}?")
  return rows


def _unique(headers: list[str]) -> list[str]:
  seen: dict[str, int] = {}
  out = []
  for header in headers:
    seen[header] = seen.get(header, 0) + 1
    out.append(header if seen[header] == 1 else f"{header} ({seen[header]})")
  return out


def _clock_location(position: Any, side: str | None) -> str | None:
  """ICD-O subsite from a clock-face 'Position' ('L9' = left breast, 9 o'clock).

  Quadrants as registries code them: upper-outer is 9-12 o'clock on the right breast and
  12-3 on the left; a tumour exactly on 12, 3, 6 or 9 o'clock lies on a quadrant border and
  is C50.8 (overlapping). Anything that is not a clock position is passed on as written, for
  the schema's aliases ('UOQ', 'central', ...).
  """
  if position is None or str(position).strip().upper() in _MISSING:
    return None
  text = str(position).strip().upper()
  match = re.fullmatch(r"([LR])?\s*(\d{1,2})(?::(\d{2}))?(?:\s*(?:O'?CLOCK|H))?", text)
  if not match:
    return text
  side = match.group(1) or side
  if side not in ("L", "R") or not 1 <= int(match.group(2)) <= 12:
    return None
  hour = int(match.group(2)) % 12 + int(match.group(3) or 0) / 60
  if hour in (0, 3, 6, 9):
    return "C50.8"
  upper, outer = hour < 3 or hour > 9, (hour < 6) == (side == "L")
  return {(True, False): "C50.2", (False, False): "C50.3", (True, True): "C50.4",
          (False, True): "C50.5"}[(upper, outer)]


def rhpc_values(row: Mapping[str, Any]) -> dict[str, Any]:
  """The rhpc variables of one clinical row, keyed by schema variable names, as values
  ``mrp_jax.schema.parse_value`` understands (None where Duke has no value).

  Mapped: laterality ('Tumor Location'), location ('Position'), focality
  ('Multicentric/Multifocal'), density ('Breast Density', passed on as written), molecular
  subtype ('Mol Subtype', else ER/PR/HER2), histology and in-situ-only tumours
  ('Histologic type'), differentiation ('Nottingham grade'), age (-'Date of Birth (Days)',
  counted from diagnosis), menopause, cT / cN / cM ('Staging(...)' with -1 for x, cM also
  'Metastatic at Presentation'), therapy (the three neoadjuvant therapy columns). Duke has
  no sex, weight, menarche, BRCA1/2, CHEK2, TP53 or tumour type.
  """
  get = lambda name: row.get(header_key(name))  # noqa: E731
  values: dict[str, Any] = {}
  side = {"L": "L", "R": "R"}.get(str(get("Tumor Location") or "").strip().upper())
  values["laterality"] = {"L": "left", "R": "right"}.get(side)
  values["location"] = _clock_location(get("Position"), side)
  focal = code(get("Multicentric/Multifocal"))
  values["focality"] = {0: "unifocal", 1: "multifocal"}.get(focal)
  density = get("Breast Density")
  values["density"] = None if str(density or "").strip().upper() in _MISSING else density
  subtype = code(get("Mol Subtype"))
  values["molecular_subtype"] = _MOL_SUBTYPES.get(subtype) or _receptor_subtype(
      code(get("ER")), code(get("PR")), code(get("HER2")))
  histology = code(get("Histologic type"))
  values["histology"] = None if histology is None else _HISTOLOGY.get(histology, "other")
  values["in_situ"] = "yes" if histology in _IN_SITU_ONLY else None
  values["differentiation"] = _GRADES.get(code(get("Nottingham grade")))
  birth_days = get("Date of Birth (Days)")
  try:
    values["age"] = round(abs(float(birth_days)) / 365.25, 2)
  except (TypeError, ValueError):
    values["age"] = None
  values["menopause"] = {0: "pre", 1: "post"}.get(code(get("Menopause (at diagnosis)")))
  values["ct"] = _T_STAGES.get(code(get("Staging(Tumor Size)# [T]")))
  values["cn"] = _N_STAGES.get(code(get("Staging(Nodes)#(Nx replaced by -1)[N]")))
  metastasis = code(get("Staging(Metastasis)#(Mx -replaced by -1)[M]"))
  if metastasis not in (0, 1):
    metastasis = code(get("Metastatic at Presentation (Outside of Lymph Nodes)"))
  values["cm"] = {0: "M0", 1: "M1"}.get(metastasis)
  given = [name for column, name in _THERAPIES if code(get(column)) == 1]
  values["therapy"] = " + ".join(given) or None
  return values


def _receptor_subtype(er: int | None, pr: int | None, her2: int | None) -> str | None:
  if her2 not in (0, 1) or (er is None and pr is None):
    return None  # HER2 2 is borderline
  positive = er == 1 or pr == 1
  if not positive and (er is None or pr is None):
    return None
  return {(True, 0): _MOL_SUBTYPES[0], (True, 1): _MOL_SUBTYPES[1],
          (False, 1): _MOL_SUBTYPES[2], (False, 0): _MOL_SUBTYPES[3]}[(positive, her2)]


def label_of(row: Mapping[str, Any]) -> tuple[int | None, str | None]:
  """(label, reason to skip)."""
  received = code(row.get(header_key(NAT_COLUMN)))
  if received == 2:
    return None, f"did not receive neoadjuvant therapy ({NAT_COLUMN!r} = 2)"
  raw = row.get(header_key(LABEL_COLUMN))
  label = _RESPONSE_TO_LABEL.get(code(raw))
  if label is None:
    return None, f"pCR unavailable ({LABEL_COLUMN!r} = {raw!r})"
  return label, None


class FileMapping:
  """Breast-Cancer-MRI-filepath_filename-mapping: which files are each patient's sequences."""

  def __init__(self, headers: Sequence[Any], rows: Iterable[Sequence[Any]],
               sequences: Iterable[str]):
    wanted = set(sequences)
    keys = [re.sub(r"[^a-z]", "", str(h or "").lower()) for h in headers]
    original, sop, classic = (keys.index(k) if k in keys else None for k in (
        "originalpathandfilename", "sopinstanceuid", "classicpath"))
    if original is None or (sop is None and classic is None):
      raise ValueError("the file mapping needs the columns original_path_and_filename and "
                       f"sop_instance_UID or classic_path; it has {list(headers)}")
    # patient -> sequence -> (SOPInstanceUIDs, SeriesInstanceUIDs)
    self.files: dict[str, dict[str, tuple[set[str], set[str]]]] = {}
    pattern = re.compile(r"(Breast_MRI_\d+)[/\\]([^/\\]+)[/\\][^/\\]*$")
    for row in rows:
      match = pattern.search(str(row[original] or ""))
      if not match or match.group(2).lower() not in wanted:
        continue
      uids = self.files.setdefault(match.group(1), {}).setdefault(
          match.group(2).lower(), (set(), set()))
      if sop is not None and row[sop]:
        uids[0].add(str(row[sop]).strip())
      elif classic is not None and row[classic]:
        parts = re.split(r"[/\\]", str(row[classic]))
        if len(parts) >= 3:
          uids[1].add(parts[-2])

  @classmethod
  def read(cls, path: Path, sequences: Iterable[str]) -> "FileMapping":
    try:
      if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
          rows = csv.reader(handle)
          return cls(next(rows), rows, sequences)
      book = openpyxl.load_workbook(path, read_only=True, data_only=True)
      try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        return cls(next(rows), rows, sequences)
      finally:
        book.close()
    except ValueError as error:
      raise ValueError(f"{path}: {error}") from None

  def for_patient(self, patient: str) -> "FileMapping | None":
    """The mapping of one patient (what a discovery worker needs), None if it has no rows."""
    if patient not in self.files:
      return None
    one = object.__new__(FileMapping)
    one.files = {patient: self.files[patient]}
    return one

  def selection(self, patient: str, sequence: str, scan: ScanResult) -> SeriesSelection:
    """The scanned files the mapping lists as ``sequence`` of ``patient``."""
    sops, series_uids = self.files[patient].get(sequence, (set(), set()))
    if not sops and not series_uids:
      raise DiscoveryError(f"the file mapping lists no {sequence!r} files for {patient}")
    paths, description = [], ""
    for study in scan.studies.values():
      for series in study.series.values():
        for path, sop in zip(series.files, series.sop_instance_uids):
          if sop in sops or series.uid in series_uids:
            paths.append(path)
            description = description or series.description
    if sops and len(paths) != len(sops):
      raise DiscoveryError(f"the file mapping lists {len(sops)} {sequence!r} files for "
                           f"{patient}; {len(paths)} of them are in the patient folder")
    if not paths:
      raise DiscoveryError(f"the {sequence!r} series the file mapping names for {patient} is "
                           "not in the patient folder")
    return SeriesSelection(tuple(sorted(paths)), None, description)


def patient_folders(root: Path) -> dict[str, Path]:
  """'Breast_MRI_<n>' folders anywhere under ``root`` (not descending into them)."""
  found = {}
  for folder, subfolders, _ in os.walk(root):
    for name in list(subfolders):
      if PATIENT.fullmatch(name):
        found.setdefault(name, Path(folder) / name)
        subfolders.remove(name)
  return found


@dataclasses.dataclass(frozen=True)
class _FolderScan:
  """One Duke patient folder: its key, its rows of the file mapping, the post-contrast phase."""
  folder: Path
  key: str
  mapping: FileMapping | None
  post_index: int

  def imaging(self) -> Imaging:
    return _patient_imaging(self.folder, self.key, self.mapping, self.post_index)


def _patient_imaging(folder: Path, key: str, mapping: FileMapping | None,
                     post_index: int) -> Imaging:
  scan = scan_folder(folder)
  studies = scan.sorted_studies(mr=True)
  if not studies:
    raise DiscoveryError(f"no MR study in {folder}")
  study = studies[0]  # Duke has one (Pre-NAT) exam per patient
  if mapping is not None and key in mapping.files:
    dce = DicomDce(pre=mapping.selection(key, "pre", scan),
                   post=mapping.selection(key, f"post_{post_index}", scan),
                   study_description=study.description)
  else:
    try:
      dce = select_dce(study.series.values(), post_index)
    except DiscoveryError as error:
      raise DiscoveryError(f"{study.label()}: {error}{unread_note(scan)}") from None
    dce = DicomDce(dce.pre, dce.post, study.description)
  later = {s.uid: "a later MR study (Duke has one Pre-NAT exam per patient: the first is used)"
           for s in studies[1:]}
  used = set(dce.pre.files) | set(dce.post.files)
  unreadable = unreadable_files(scan, used)
  unused = unused_series(scan, {study.uid: used}, later, post_index) + unreadable
  return Imaging(mri={Phase.PRE: dce}, unused=unused, warnings=unreadable_warning(unreadable))


def discover(root: Path | str, *, clinical_file: Path | str | None = None,
             mapping_file: Path | str | None = None, post_index: int = 1, workers: int = 1,
             progress: bool = False) -> list[PatientSource]:
  """Finds every Duke patient with images or a clinical row.

  Args:
    root: the download folder (holding Duke-Breast-Cancer-MRI/ or the Breast_MRI_* folders).
    clinical_file: Clinical_and_Other_Features.xlsx; default: found under ``root``.
    mapping_file: the filepath/filename mapping (.xlsx or .csv); default: found under
      ``root`` if there; without it series descriptions decide.
    post_index: which post-contrast phase (post_1 .. post_4) is subtracted.
    workers: processes scanning patient folders (see ``workers.map_patients``).
    progress: show the scan's progress bar (input_pipeline.cli.progress).

  Returns:
    PatientSources sorted by id, Pre-NAT MRI only; clinical holds the rhpc variables by
    schema name. Patients without images, clinical row, label or NAT carry ``error``.
  """
  root = Path(root)
  if not 1 <= post_index <= 4:
    raise ValueError(f"post_index must be 1..4 for Duke (post_1..post_4), got {post_index}")
  clinical_path = Path(clinical_file) if clinical_file else find_file(root, (CLINICAL_FILE,))
  if clinical_path is None or not clinical_path.is_file():
    raise FileNotFoundError(f"{clinical_file or root}: no {CLINICAL_FILE} (pass clinical_file=)")
  clinical = read_clinical(clinical_path)
  mapping_path = Path(mapping_file) if mapping_file else find_file(
      root, (f"{MAPPING_FILE}.xlsx", f"{MAPPING_FILE}.csv"))
  mapping = (FileMapping.read(mapping_path, ("pre", f"post_{post_index}"))
             if mapping_path else None)
  folders = patient_folders(root)

  def join(key: str) -> Joined:
    source = PatientSource(key)
    if key not in clinical:
      return Joined.skipped(source, f"no row in {clinical_path}")
    source.clinical = rhpc_values(clinical[key])
    source.label, source.error = label_of(clinical[key])
    if source.error:
      return Joined(source)
    if key not in folders:
      return Joined.skipped(source, f"no {key} image folder under {root}")
    return Joined(source, _FolderScan(folders[key], key, mapping and mapping.for_patient(key),
                                      post_index))

  return assemble(set(clinical) | set(folders), join, workers=workers, progress=progress)

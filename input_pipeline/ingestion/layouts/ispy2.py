"""I-SPY2 (TCIA, doi:10.7937/TCIA.D8Z0-9T85) as it is published.

Images: one folder per patient, ``ISPY2-<Patient_ID>``, holding one study per MRI visit,
as the NBIA Data Retriever writes them, e.g.::

  ISPY2/ISPY2-105513/04-04-2001-105513T0-ISPY2MRIT0-94842/
      61800.000000-ISPY2 VOLSER bi-lateral original DCE-07436/1-001.dcm ...

StudyDescription ('ISPY2_MRI_T0', older downloads 'ISPY2MRIT0') and ClinicalTrialTimePointID
(0012,0050) name the visit: T0 pre-treatment -> Pre-NAT, T1 early treatment (3 weeks; ignored
unless ``t1_phase``), T2 inter-regimen -> Mid-NAT, T3 pre-surgery -> Post-NAT. All DCE phases
are in one series ('ISPY2: VOLSER: ...: original DCE') split by TemporalPositionIdentifier;
the derived SER / PE2 / analysis-mask series are never chosen. No mammograms.

Clinical table ``ISPY2-Imaging-Cohort-1-Clinical-Data.xlsx`` (one header row): Patient_ID
(integer, joined to the folder's number), Arm, Race, Age_at_Screening, menopausal_status,
HR, HER2, MP, pCR (0/1).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import openpyxl

from input_pipeline import schema
from input_pipeline.ingestion.layouts import generic
from input_pipeline.ingestion.layouts.assemble import Joined, assemble
from input_pipeline.ingestion.layouts.generic import find_file
from input_pipeline.ingestion.patient import PatientSource

CLINICAL_FILE = "ISPY2-Imaging-Cohort-1-Clinical-Data.xlsx"
PATIENT = re.compile(r"ISPY2-(\d+)")
# Every I-SPY2 arm is a taxane (or T-DM1) regimen followed by anthracycline-cyclophosphamide;
# these agents add anti-HER2 or immune therapy ('immunotherapy' in the schema).
_IMMUNE_OR_ANTI_HER2 = re.compile(
    r"pembrolizumab|durvalumab|trastuzumab|herceptin|pertuzumab|t-?dm1|neratinib", re.I)


def _key(text: Any) -> str:
  return re.sub(r"[^a-z0-9]", "", str(text or "").lower())


def _binary(value: Any) -> int | None:
  text = str(value if value is not None else "").strip().lower()
  if text in ("1", "1.0", "pos", "positive", "yes"):
    return 1
  if text in ("0", "0.0", "neg", "negative", "no"):
    return 0
  return None


def read_clinical(path: Path) -> dict[int, dict[str, Any]]:
  """Rows of the clinical xlsx by integer Patient_ID, keyed by the headers as written."""
  book = openpyxl.load_workbook(path, read_only=True, data_only=True)
  try:
    headers: list[str] | None = None
    rows: dict[int, dict[str, Any]] = {}
    for values in book.worksheets[0].iter_rows(values_only=True):
      if headers is None:
        if any(_key(v) == "patientid" for v in values):
          headers = [str(v).strip() if v is not None else "" for v in values]
        continue
      row = dict(zip(headers, values))
      patient = next((v for k, v in row.items() if _key(k) == "patientid"), None)
      try:
        rows[int(float(str(patient).strip()))] = row
      except ValueError:
        continue
  finally:
    book.close()
  if headers is None:
    raise ValueError(f"{path}: no 'Patient_ID' header cell; is this {CLINICAL_FILE}?")
  return rows


def rhpc_values(row: Mapping[str, Any]) -> dict[str, Any]:
  """The rhpc variables of one clinical row, keyed by schema variable names.

  Mapped: age (Age_at_Screening), menopause (menopausal_status text: pre-, peri- -> pre,
  post- -> post; anything else Unknown), molecular subtype (HR and HER2: HR+/HER2- luminal-
  like, HR+/HER2+ triple positive, HR-/HER2+ HER2-enriched, HR-/HER2- triple negative; the
  schema names these by ER, and HR+ is ER+ and/or PR+), therapy (Arm: chemotherapy always,
  plus immunotherapy for anti-HER2 or immune agents). The table has nothing else.
  """
  by_key = {_key(k): v for k, v in row.items()}
  values: dict[str, Any] = {}
  try:
    values["age"] = float(by_key.get("ageatscreening"))
  except (TypeError, ValueError):
    values["age"] = None
  status = str(by_key.get("menopausalstatus") or "").lower()
  values["menopause"] = ("pre" if "pre" in status or "peri" in status
                         else "post" if "post" in status else None)
  hr, her2 = _binary(by_key.get("hr")), _binary(by_key.get("her2"))
  values["molecular_subtype"] = None if hr is None or her2 is None else {
      (1, 0): "Luminal-like ER+/HER2-", (1, 1): "Triple positive ER+/HER2+",
      (0, 1): "HER2-enriched ER-/HER2+", (0, 0): "Triple negative"}[(hr, her2)]
  arm = str(by_key.get("arm") or "").strip()
  values["therapy"] = None if not arm else (
      "chemotherapy + immunotherapy" if _IMMUNE_OR_ANTI_HER2.search(arm) else "chemotherapy")
  return values


def patient_folders(root: Path) -> dict[int, Path]:
  """'ISPY2-<n>' folders at any depth under ``root`` (not descending into them)."""
  found: dict[int, Path] = {}
  pending = [root]
  while pending:
    folder = pending.pop()
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
      match = PATIENT.fullmatch(child.name)
      if match:
        found.setdefault(int(match.group(1)), child)
      else:
        pending.append(child)
  return found


def discover(root: Path | str, *, clinical_file: Path | str | None = None,
             t1_phase: str | None = None, post_index: int = 1, workers: int = 1,
             progress: bool = False) -> list[PatientSource]:
  """Finds every I-SPY2 patient with images or a clinical row.

  Args:
    root: the download folder (holding ISPY2/ or the ISPY2-* folders).
    clinical_file: the clinical xlsx; default: ISPY2-Imaging-Cohort-1-Clinical-Data.xlsx in
      ``root`` or up to two folders below it.
    t1_phase: 'mid' to use the T1 (early treatment) visit as Mid-NAT when there is no T2;
      None ignores T1 visits.
    post_index: which post-contrast temporal position is subtracted.
    workers: processes scanning patient folders (see ``workers.map_patients``).
    progress: show the scan's progress bar (input_pipeline.cli.progress).

  Returns:
    PatientSources keyed 'ISPY2-<n>', sorted by number; clinical holds the rhpc variables by
    schema name. Patients without images, clinical row or pCR carry ``error``.
  """
  root = Path(root)
  if t1_phase not in (None, "mid"):
    raise ValueError(f"t1_phase must be None or 'mid', got {t1_phase!r}")
  path = Path(clinical_file) if clinical_file else find_file(root, (CLINICAL_FILE,))
  if path is None or not path.is_file():
    raise FileNotFoundError(f"{clinical_file or root}: no {CLINICAL_FILE} (pass "
                            "clinical_file=)")
  clinical = read_clinical(path)
  folders = patient_folders(root)

  def join(number: int) -> Joined:
    source = PatientSource(f"ISPY2-{number}")
    if number not in clinical:
      return Joined.skipped(source, f"no Patient_ID {number} row in {path}")
    row = clinical[number]
    source.clinical = rhpc_values(row)
    source.label = _binary(next((v for k, v in row.items() if _key(k) == "pcr"), None))
    if source.label is None:
      return Joined.skipped(source, f"pCR unavailable in {path}")
    if number not in folders:
      return Joined.skipped(source, f"no ISPY2-{number} image folder under {root}")
    return Joined(source, generic.FolderScan(
        folders[number], None, schema.Phase.POST, schema.Phase.MID if t1_phase else None, "CC",
        post_index))

  return assemble(set(clinical) | set(folders), join, workers=workers, progress=progress)

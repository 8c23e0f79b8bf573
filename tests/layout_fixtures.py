"""Small DICOM trees and tables in the generic, Duke and I-SPY2 layouts, for the tests.

Volumes are 4 x 8 x 8 voxels (one file per slice), written with
input_pipeline.synthetic.dicom_writer.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import openpyxl
import pydicom
from pydicom.uid import generate_uid

from input_pipeline.synthetic.dicom_writer import (
  Geometry,
  SeriesOptions,
  write_mammogram,
  write_mr_series,
)

SHAPE = (4, 8, 8)


def study_tags(patient: str, date: str, description: str = "",
               time_point: str | None = None) -> dict[str, Any]:
  tags = {"StudyInstanceUID": generate_uid(), "PatientID": patient, "StudyDate": date,
          "StudyDescription": description}
  if time_point is not None:
    tags["ClinicalTrialTimePointID"] = time_point
  return tags


def mr_series(folder: Path, study: dict[str, Any], description: str, number: int, *,
              phases: int = 1, shape: Sequence[int] = SHAPE, enhanced: bool = False,
              trigger_ms: float | None = None, derived: bool = False,
              extra: dict[str, Any] | None = None) -> list[Path]:
  """Writes one series into ``folder`` and returns its files."""
  volumes = [np.full(shape, 100.0 * (t + 1)) for t in range(phases)]
  tags = {**study, "SeriesDescription": description, "SeriesNumber": number,
          "Manufacturer": "GE MEDICAL SYSTEMS", **(extra or {})}
  triggers = [trigger_ms + 60_000.0 * t for t in range(phases)] if trigger_ms is not None \
      else None
  paths = write_mr_series(folder, volumes if phases > 1 else volumes[0],
                          Geometry((0, 0, 0), (1.0, 1.0, 2.0)), tags,
                          SeriesOptions(enhanced=enhanced, trigger_times_ms=triggers))
  if derived:
    for path in paths:
      ds = pydicom.dcmread(path)
      ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
      ds.save_as(path)
  return paths


def dce_study(folder: Path, study: dict[str, Any], pre: str | None = "ax dyn pre",
              posts: Sequence[str] = ("ax dyn 1st pass",)) -> dict[str, list[Path]]:
  """A study with a localizer, a T2 and DCE series described as given; files by description."""
  written = {"3-Plane Loc": mr_series(folder / "1", study, "3-Plane Loc", 1, shape=(3, 8, 8)),
             "Ax T2 FSE": mr_series(folder / "2", study, "Ax T2 FSE", 2,
                                    extra={"RepetitionTime": 4000.0, "EchoTime": 90.0})}
  names = ([pre] if pre else []) + list(posts)
  for number, name in enumerate(names, start=3):
    written[name] = mr_series(folder / str(number), study, name, number)
  return written


def mammograms(folder: Path, study: dict[str, Any]) -> dict[tuple[str, str], Path]:
  """Four views, one file each: {(laterality, view): path}."""
  out = {}
  for number, (side, view) in enumerate((("L", "CC"), ("L", "MLO"), ("R", "CC"),
                                         ("R", "MLO")), start=1):
    tags = {**study, "SeriesDescription": f"{side} {view}", "SeriesNumber": number}
    out[side, view] = write_mammogram(folder / f"{number}_{side}_{view}" / "IM000001.dcm",
                                      np.full((16, 12), 1000, np.uint16), laterality=side,
                                      view=view, tags=tags)
  return out


def truncate(path: Path) -> Path:
  """Cuts a file inside its header, just before Rows (0028,0010): its UIDs survive."""
  data = path.read_bytes()
  path.write_bytes(data[:data.index(b"\x28\x00\x10\x00US")])
  return path


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
  with path.open("w", newline="", encoding="utf-8") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return path


def write_xlsx(path: Path, rows: Sequence[Sequence[Any]], sheet: str = "Sheet1") -> Path:
  book = openpyxl.Workbook()
  book.active.title = sheet
  for row in rows:
    book.active.append(list(row))
  book.save(path)
  return path


# --------------------------------------------------------------------------------------------
# Duke: Clinical_and_Other_Features.xlsx with its three header rows and untidy header names.
# --------------------------------------------------------------------------------------------
DUKE_HEADERS = [
    "Patient ID", "Date of Birth (Days)", "Menopause  (at diagnosis) ", "ER", "PR", "HER2",
    "Mol Subtype", "Staging(Tumor Size)# [T]", "Staging(Nodes)#(Nx replaced by -1)[N] ",
    "Staging(Metastasis)#(Mx -replaced by -1)[M]", "Tumor Grade", None, None,
    "Nottingham grade", "Histologic type", "Tumor Location", "Position",
    "Multicentric/Multifocal", "Breast Density", "Neoadjuvant Chemotherapy",
    "Neoadjuvant Endocrine Therapy Medications ", "Neoadjuvant Anti-Her2 Neu Therapy",
    "Received Neoadjuvant Therapy or Not", "Pathologic Response to Neoadjuvant Therapy ",
]
DUKE_LEGEND = [
    None, "(days)", "{0 = pre, 1 = post, 2 = N/A}", "{0 = neg, 1 = pos}", "{0 = neg, 1 = pos}",
    "{0 = neg, 1 = pos, 2 = borderline}",
    "{0 = luminal-like, 1 = ER/PR pos, HER2 pos, 2 = her2, 3 = trip neg}", "{-1 = Tx}",
    "{-1 = Nx}", "{-1 = Mx}", "Tubule", "Nuclear", "Mitotic", "{1 = low, 2 = int, 3 = high}",
    "{0 = DCIS, 1 = ductal, 2 = lobular, ...}", "{L, R}", "", "{0 = no, 1 = yes}", "",
    "{0 = no, 1 = yes}", "{0 = no, 1 = yes}", "{0 = no, 1 = yes}", "{1 = yes, 2 = no}",
    "{1 = pCR, 2 = non-pCR, 3 = DCIS left, 4 = LCIS left, 5 = NA}",
]


def duke_row(patient: str, *, response: Any, received: Any = 1, subtype: Any = 2,
             side: str = "R") -> list[Any]:
  """A row: post-menopausal, ER-/PR-/HER2+, cT2 N1 M0, Nottingham 3, ductal, 10 o'clock,
  unifocal, density not collected, chemotherapy + anti-HER2, 50 years old."""
  return [patient, -18262, 1, 0, 0, 1, subtype, 2, 1, 0, 2, 2, 3, 3, 1, side, f"{side}10",
          0, "NC", 1, 0, 1, received, response]


def write_duke_clinical(path: Path, rows: Sequence[Sequence[Any]]) -> Path:
  groups = ["Patient Information", "Demographics"] + [None] * (len(DUKE_HEADERS) - 2)
  return write_xlsx(path, [groups, DUKE_HEADERS, DUKE_LEGEND, *rows], sheet="Data")


def duke_folder(root: Path, patient: str) -> Path:
  """The descriptive NBIA path of a patient's (only) study."""
  return (root / "manifest-1654812109500" / "Duke-Breast-Cancer-MRI" / patient /
          "01-01-1990-NA-MRI BREAST BILATERAL WWO-97538")


def write_duke_mapping(path: Path, entries: Sequence[tuple[str, str, Sequence[Path]]]) -> Path:
  """Mapping rows for (patient, sequence, files), as in the published spreadsheet."""
  rows = [["original_path_and_filename", "descriptive_path", "classic_path",
           "sop_instance_UID"]]
  for patient, sequence, files in entries:
    for k, file in enumerate(files, start=1):
      ds = pydicom.dcmread(file, stop_before_pixels=True)
      rows.append([f"DICOM_Images/{patient}/{sequence}/{patient}_{sequence}_{k:03d}.dcm",
                   f"Duke-Breast-Cancer-MRI/{patient}/{file.parent.parent.name}/"
                   f"{file.parent.name}/1-{k:03d}.dcm",
                   f"Duke-Breast-Cancer-MRI/{patient}/{ds.StudyInstanceUID}/"
                   f"{ds.SeriesInstanceUID}/1-{k:03d}.dcm", ds.SOPInstanceUID])
  return write_xlsx(path, rows)


# --------------------------------------------------------------------------------------------
# I-SPY2
# --------------------------------------------------------------------------------------------
ISPY2_HEADERS = ["Patient_ID", "Arm", "Race", "Age_at_Screening", "menopausal_status", "HR",
                 "HER2", "MP", "pCR"]
ISPY2_DCE = "ISPY2: VOLSER: uni-lateral cropped: original DCE"


def ispy2_visit(patient_folder: Path, number: int, visit: int, date: str, *,
                description: str | None = None, tag: bool = True) -> list[Path]:
  """One I-SPY2 MRI visit: a 3-phase VOLSER DCE series and its derived SER map."""
  study = study_tags(f"ISPY2-{number}", date,
                     f"ISPY2_MRI_T{visit}" if description is None else description,
                     f"T{visit}" if tag else None)
  folder = patient_folder / f"{date[4:6]}-{date[6:]}-{date[:4]}-{number}T{visit}-ISPY2MRIT{visit}"
  dce = mr_series(folder / f"61800.000000-{ISPY2_DCE.replace(':', '')}", study, ISPY2_DCE,
                  61800, phases=3)
  mr_series(folder / "61801.000000-SER", study, "ISPY2: VOLSER: uni-lateral cropped: SER",
            61801, derived=True)
  return dce

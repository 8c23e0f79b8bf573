"""Tests of the layout adapters (generic, Duke, I-SPY2) and their registry."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import layout_fixtures as fx
import numpy as np
import pydicom
import pytest

from input_pipeline import clinical_table, schema, synthetic
from input_pipeline.ingestion import layouts
from input_pipeline.ingestion.dce_select import DiscoveryError
from input_pipeline.ingestion.dicom_scan import scan_folder
from input_pipeline.ingestion.layouts import duke, generic, ispy2
from input_pipeline.ingestion.patient import DicomDce, NiftiDce
from input_pipeline.schema import Phase


def _by_key(sources):
  return {s.key: s for s in sources}


def _views(found) -> list[tuple[Path, str]]:
  """The mammogram views an Imaging or PatientSource uses: [(file, view name)], in order."""
  return [(m.path, m.view) for m in found.mammograms]


def _parsed(clinical: dict) -> dict:
  return clinical_table.parse_rows([clinical]).decode(0)


# ---- generic --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generic_root(tmp_path_factory) -> tuple[Path, dict]:
  """Patients G01..G07 and G09 (folder only); G08 has a row but no folder."""
  root = tmp_path_factory.mktemp("generic")
  made: dict = {}
  # G01: phases from ClinicalTrialTimePointID (T1 ignored); mammograms of both sides.
  g01 = root / "G01"
  for visit, date in (("T0", "20200110"), ("T1", "20200201"), ("T2", "20200401"),
                      ("T3", "20200701")):
    made["G01", visit] = fx.dce_study(g01 / f"mr_{visit}",
                                      fx.study_tags("G01", date, "MRI breast", visit))
  made["G01", "MG"] = fx.mammograms(g01 / "mg", fx.study_tags("G01", "20200105", "MG"))
  made["G01", "MG_late"] = fx.mammograms(g01 / "mg2", fx.study_tags("G01", "20210105", "MG"))
  # G02: phases from StudyDescription keywords, dates deliberately out of order.
  made["G02", "pre"] = fx.dce_study(root / "G02" / "a",
                                    fx.study_tags("G02", "20200601", "MRI Mamma pre-NAT"))
  made["G02", "post"] = fx.dce_study(root / "G02" / "b",
                                     fx.study_tags("G02", "20200101", "MRI Mamma post-NAT"))
  # G03: no phase tags: StudyDate order.
  made["G03", "first"] = fx.dce_study(root / "G03" / "x", fx.study_tags("G03", "20200101"))
  made["G03", "second"] = fx.dce_study(root / "G03" / "y", fx.study_tags("G03", "20200501"))
  # G04: a file cut inside its header.
  files = fx.dce_study(root / "G04", fx.study_tags("G04", "20200101"))
  made["G04", "cut"] = fx.truncate(files["ax dyn 1st pass"][2])
  # G05: a study without pre-contrast series.
  fx.dce_study(root / "G05", fx.study_tags("G05", "20200101", "MRI pre-NAT"), pre=None,
               posts=("ax dyn 1st pass", "ax dyn 2nd pass"))
  # G06: NIfTI volumes.
  (root / "G06").mkdir()
  for name in ("pre_pre.nii.gz", "pre_post.nii.gz", "mid_sub.nii.gz", "notes.txt"):
    (root / "G06" / name).write_bytes(b"")
  # G07: label not recognised. G09: folder without a row.
  fx.dce_study(root / "G07", fx.study_tags("G07", "20200101"))
  fx.dce_study(root / "G09", fx.study_tags("G09", "20200101"))
  rows = [{"patient_id": "G01", "pCR": "pCR", "Laterality": "right", "Age": "51",
           "Subtype": "TNBC"},
          {"patient_id": "G02", "pCR": "0", "Laterality": "L", "Age": "40", "Subtype": ""},
          {"patient_id": "G03", "pCR": "no", "Laterality": "", "Age": "", "Subtype": ""},
          {"patient_id": "G04", "pCR": "1", "Laterality": "", "Age": "", "Subtype": ""},
          {"patient_id": "G05", "pCR": "1", "Laterality": "", "Age": "", "Subtype": ""},
          {"patient_id": "G06", "pCR": "", "Laterality": "", "Age": "", "Subtype": ""},
          {"patient_id": "G07", "pCR": "maybe", "Laterality": "", "Age": "", "Subtype": ""},
          {"patient_id": "G08", "pCR": "1", "Laterality": "", "Age": "", "Subtype": ""}]
  fx.write_csv(root / "clinical.csv", rows)
  return root, made


@pytest.fixture(scope="module")
def generic_sources(generic_root) -> list:
  return generic.discover(generic_root[0])


def test_generic_phases_from_time_point_tags_and_mammogram_of_tumour_side(generic_root,
                                                                          generic_sources):
  root, made = generic_root
  g01 = _by_key(generic_sources)["G01"]
  assert g01.error is None and g01.label == 1
  assert sorted(g01.mri) == [Phase.PRE, Phase.MID, Phase.POST]
  for phase, visit in ((Phase.PRE, "T0"), (Phase.MID, "T2"), (Phase.POST, "T3")):
    exam = g01.mri[phase]
    assert isinstance(exam, DicomDce) and exam.study_description == "MRI breast"
    assert sorted(exam.pre.files) == sorted(made["G01", visit]["ax dyn pre"])
    assert sorted(exam.post.files) == sorted(made["G01", visit]["ax dyn 1st pass"])
  # Tumour on the right: the right CC and MLO views of the mammogram nearest the Pre-NAT MRI,
  # the preferred view first.
  right = {view: made["G01", "MG"]["R", view] for view in ("CC", "MLO")}
  assert _views(g01) == [(right["CC"], "CC"), (right["MLO"], "MLO")]
  g01_mlo = _by_key(generic.discover(root, mg_view="MLO"))["G01"]
  assert _views(g01_mlo) == [(right["MLO"], "MLO"), (right["CC"], "CC")]
  left = {str(made["G01", "MG"]["L", view]) for view in ("CC", "MLO")}
  assert {u.where for u in g01.unused if u.where in left} == left
  assert g01.clinical["Subtype"] == "TNBC"
  assert _parsed(g01.clinical)["molecular_subtype"] == "Triple negative"


def test_generic_t1_visit_can_be_mid_nat_when_no_t2(generic_root):
  root, _ = generic_root
  scan_studies = scan_folder(root / "G01").sorted_studies(mr=True)
  without_t2 = [s for s in scan_studies if s.time_point_id != "T2"]
  phases = generic.resolve_phases(without_t2, t1_phase=Phase.MID)
  assert {p: s.time_point_id for p, s in phases.items()} == {
      Phase.PRE: "T0", Phase.MID: "T1", Phase.POST: "T3"}
  assert Phase.MID not in generic.resolve_phases(without_t2)


def test_generic_phases_from_description_keywords_and_dates(generic_root, generic_sources):
  root, made = generic_root
  sources = _by_key(generic_sources)
  g02 = sources["G02"]
  assert sorted(g02.mri) == [Phase.PRE, Phase.POST]
  assert sorted(g02.mri[Phase.PRE].pre.files) == sorted(made["G02", "pre"]["ax dyn pre"])
  assert sorted(g02.mri[Phase.POST].pre.files) == sorted(made["G02", "post"]["ax dyn pre"])
  assert g02.mammograms == ()  # no mammogram in the folder
  g03 = sources["G03"]
  assert sorted(g03.mri[Phase.PRE].pre.files) == sorted(made["G03", "first"]["ax dyn pre"])
  assert sorted(g03.mri[Phase.POST].pre.files) == sorted(made["G03", "second"]["ax dyn pre"])
  g03_mid = _by_key(generic.discover(root, two_study_followup="mid"))["G03"]
  assert sorted(g03_mid.mri) == [Phase.PRE, Phase.MID]


def test_generic_bad_patients_get_errors_and_the_others_are_intact(generic_root,
                                                                   generic_sources):
  _, made = generic_root
  sources = generic_sources
  by_key = _by_key(sources)
  assert [s.key for s in sources] == [f"G0{i}" for i in range(1, 10)]
  assert str(made["G04", "cut"]) in by_key["G04"].error
  assert "corrupt DICOM" in by_key["G04"].error and by_key["G04"].mri == {}
  assert by_key["G05"].error.startswith("Pre-NAT study 'MRI pre-NAT' of 20200101: "
                                        "no pre-contrast series among: ")
  assert "'ax dyn 1st pass'" in by_key["G05"].error
  assert by_key["G07"].error == ("pCR label 'maybe' in column 'pCR' not recognised "
                                 "(use 1/0, pCR/non-pCR or yes/no)")
  assert "no folder" in by_key["G08"].error and "G08" in by_key["G08"].error
  assert "has no row" in by_key["G09"].error
  usable = [s.key for s in sources if s.error is None]
  assert usable == ["G01", "G02", "G03", "G06"]
  assert [by_key[k].label for k in usable] == [1, 0, 0, None]


def test_generic_nifti_exams(generic_root, generic_sources):
  root, _ = generic_root
  g06 = _by_key(generic_sources)["G06"]
  assert g06.mri == {
      Phase.PRE: NiftiDce(pre=root / "G06" / "pre_pre.nii.gz",
                          post=root / "G06" / "pre_post.nii.gz"),
      Phase.MID: NiftiDce(subtraction=root / "G06" / "mid_sub.nii.gz")}


def test_generic_rejects_bad_options_and_missing_table(tmp_path):
  with pytest.raises(FileNotFoundError, match="clinical.csv"):
    generic.discover(tmp_path)
  fx.write_csv(tmp_path / "clinical.csv", [{"id": "x", "pCR": "1"}])
  with pytest.raises(ValueError, match="no 'patient_id' column"):
    generic.discover(tmp_path)
  with pytest.raises(ValueError, match="two_study_followup"):
    generic.discover(tmp_path, two_study_followup="pre")
  with pytest.raises(ValueError, match="mg_view must be 'CC' or 'MLO'"):
    generic.GenericOptions(mg_view="ML")
  # --layout_option NAME=VALUE with a misspelt name: refused, the known names listed.
  with pytest.raises(ValueError, match=r"unknown generic layout option\(s\) \['mg_views'\]; "
                     r"known: \['two_study_followup', .*'mg_view'"):
    layouts.discover("generic", tmp_path, mg_views="MLO")


@pytest.mark.parametrize("text,tag,expected", [
    ("T0", True, Phase.PRE), ("t2", True, Phase.MID), ("T3", True, Phase.POST),
    ("T1", True, "t1"), ("post", True, Phase.POST), ("ISPY2_MRI_T2", False, Phase.MID),
    ("ISPY2MRIT0", False, Phase.PRE), ("MRI breast baseline", False, Phase.PRE),
    ("MR mamma interim", False, Phase.MID), ("MRI pre-surgery", False, Phase.POST),
    ("follow-up MRI", False, "follow-up"), ("MRI BREAST T1 T2", False, None),
    ("MRI BREAST", False, None)])
def test_phase_of_text(text, tag, expected):
  assert generic.phase_of_text(text, tag) == expected


def test_generic_on_a_synthetic_export(tmp_path):
  rows, truths = [], {}
  for index in (0, 4, 8):  # plain, GE multiphase, no pre-contrast series
    row, truth, _ = synthetic.generate_patient(tmp_path, seed=3, index=index)
    rows.append(row)
    truths[truth["patient_id"]] = truth
  with open(tmp_path / "clinical.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  for source in generic.discover(tmp_path):
    truth = truths[source.key]
    if truth["skip_keyword"]:
      assert truth["skip_keyword"] in source.error
      continue
    assert source.error is None and source.label == truth["label"]
    assert sorted(p.name.lower() for p in source.mri) == sorted(truth["phases"])
    for study in truth["studies"]:
      roles = {s["role"]: Path(s["folder"]).name for s in study["series"]}
      exam = source.mri[Phase[study["phase"].upper()]]
      if "multiphase" in roles:
        assert exam.pre.files[0].parent.name == roles["multiphase"]
        assert (exam.pre.temporal_position, exam.post.temporal_position) == (1, 2)
      else:
        assert exam.pre.files[0].parent.name == roles["pre"]
        assert exam.post.files[0].parent.name == roles["post_1"]
    if truth["mammogram"]:
      # Every view the export wrote (CC, and MLO for most), CC first.
      written = {s["view"]: tmp_path / s["file"] for s in truth["mammogram"]["series"]}
      assert _views(source) == [(written[v], v) for v in ("CC", "MLO") if v in written]
    else:
      assert source.mammograms == ()


# ---- Duke -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def duke_root(tmp_path_factory) -> tuple[Path, dict]:
  root = tmp_path_factory.mktemp("duke")
  made: dict = {}
  study = lambda p: fx.study_tags(p, "19900101", "MRI BREAST BILATERAL W & WO")  # noqa: E731
  # 001: descriptions only; 'ax t1 tse c-' is pre-contrast too, but of another geometry.
  folder = fx.duke_folder(root, "Breast_MRI_001")
  tags = study("Breast_MRI_001")
  made["001"] = fx.dce_study(folder, tags, "ax dyn pre", ("ax dyn 1st pass", "ax dyn 2nd pass"))
  fx.mr_series(folder / "26.000000-ax t1 tse c-", tags, "ax t1 tse c-", 26, shape=(3, 8, 8))
  # 002: DCIS only remaining; one GE multiphase series.
  made["002"] = fx.mr_series(fx.duke_folder(root, "Breast_MRI_002") / "4.000000-Ax Vibrant",
                             study("Breast_MRI_002"), "Ax Vibrant MultiPhase", 4, phases=3)
  # 003: response 5 (unavailable). 004: no neoadjuvant therapy.
  for key in ("003", "004"):
    fx.dce_study(fx.duke_folder(root, f"Breast_MRI_{key}"), study(f"Breast_MRI_{key}"))
  # 005: the mapping decides (series 3 was a repeated pre-contrast scan).
  folder, tags = fx.duke_folder(root, "Breast_MRI_005"), study("Breast_MRI_005")
  made["005"] = {n: fx.mr_series(folder / f"{n}.000000-{d.replace('/', '')}", tags, d, n)
                 for n, d in ((3, "ax 3d dyn pre"), (4, "ax 3d dyn"), (5, "Ph1/ax 3d dyn"),
                              (6, "Ph2/ax 3d dyn"))}
  # 006: a file cut inside its header.
  files = fx.dce_study(fx.duke_folder(root, "Breast_MRI_006"), study("Breast_MRI_006"))
  made["006"] = fx.truncate(files["ax dyn pre"][1])
  fx.write_duke_mapping(root / "Breast-Cancer-MRI-filepath_filename-mapping.xlsx", [
      ("Breast_MRI_005", "pre", made["005"][4]), ("Breast_MRI_005", "post_1", made["005"][5]),
      ("Breast_MRI_005", "post_2", made["005"][6])])
  rows = [fx.duke_row("Breast_MRI_001", response=1),
          fx.duke_row("Breast_MRI_002", response=3, subtype="NA", side="L"),
          fx.duke_row("Breast_MRI_003", response=5),
          fx.duke_row("Breast_MRI_004", response="NA", received=2),
          fx.duke_row("Breast_MRI_005", response=2),
          fx.duke_row("Breast_MRI_006", response=4),
          fx.duke_row("Breast_MRI_007", response=1)]
  fx.write_duke_clinical(root / "Clinical_and_Other_Features.xlsx", rows)
  return root, made


def test_duke_series_labels_and_skips(duke_root):
  root, made = duke_root
  sources = duke.discover(root)
  by_key = _by_key(sources)
  assert [s.key for s in sources] == [f"Breast_MRI_00{i}" for i in range(1, 8)]
  p1 = by_key["Breast_MRI_001"]
  assert p1.error is None and p1.label == 1 and list(p1.mri) == [Phase.PRE]
  assert sorted(p1.mri[Phase.PRE].pre.files) == sorted(made["001"]["ax dyn pre"])
  assert sorted(p1.mri[Phase.PRE].post.files) == sorted(made["001"]["ax dyn 1st pass"])
  assert p1.mammograms == ()
  p2 = by_key["Breast_MRI_002"]
  assert p2.label == 1 and p2.error is None  # 3: DCIS only remaining -> pCR
  exam = p2.mri[Phase.PRE]
  assert exam.pre.files == exam.post.files == tuple(sorted(made["002"]))
  assert (exam.pre.temporal_position, exam.post.temporal_position) == (1, 2)
  assert by_key["Breast_MRI_003"].label is None
  assert by_key["Breast_MRI_003"].error == (
      "pCR unavailable ('Pathologic Response to Neoadjuvant Therapy' = 5)")
  assert by_key["Breast_MRI_004"].error.startswith("did not receive neoadjuvant therapy")
  p6 = by_key["Breast_MRI_006"]
  assert p6.label == 1 and str(made["006"]) in p6.error  # 4: LCIS only -> pCR, but corrupt
  assert "no Breast_MRI_007 image folder" in by_key["Breast_MRI_007"].error


def test_duke_mapping_is_preferred_over_descriptions(duke_root):
  root, made = duke_root
  p5 = _by_key(duke.discover(root))["Breast_MRI_005"]
  assert p5.label == 0 and p5.error is None
  assert p5.mri[Phase.PRE].pre.files == tuple(sorted(made["005"][4]))
  assert p5.mri[Phase.PRE].post.files == tuple(sorted(made["005"][5]))
  second = _by_key(duke.discover(root, post_index=2))["Breast_MRI_005"]
  assert second.mri[Phase.PRE].post.files == tuple(sorted(made["005"][6]))
  # A mapping without SOP UIDs names whole series through classic_path.
  series_uid = {n: pydicom.dcmread(made["005"][n][0]).SeriesInstanceUID for n in (3, 6)}
  csv_mapping = root.parent / "duke_mapping.csv"
  fx.write_csv(csv_mapping, [
      {"original_path_and_filename": f"DICOM_Images/Breast_MRI_005/{sequence}/x_001.dcm",
       "classic_path": f"Duke-Breast-Cancer-MRI/Breast_MRI_005/1.2/{series_uid[n]}/1-001.dcm"}
      for sequence, n in (("pre", 3), ("post_1", 6))])
  by_series = _by_key(duke.discover(root, mapping_file=csv_mapping))["Breast_MRI_005"]
  assert by_series.mri[Phase.PRE].pre.files == tuple(sorted(made["005"][3]))
  assert by_series.mri[Phase.PRE].post.files == tuple(sorted(made["005"][6]))


def test_duke_mapping_with_missing_files_or_columns(duke_root, tmp_path):
  root, made = duke_root
  scan = scan_folder(made["005"][4][0].parent)
  present = [pydicom.dcmread(f).SOPInstanceUID for f in made["005"][4]]
  mapping = duke.FileMapping(
      ["original_path_and_filename", "sop_instance_UID"],
      [[f"DICOM_Images/Breast_MRI_005/pre/x_{k}.dcm", uid]
       for k, uid in enumerate(present + ["1.2.3.4.5"])], ["pre"])
  with pytest.raises(duke.DiscoveryError, match="lists 5 'pre' files for Breast_MRI_005; 4 of"):
    mapping.selection("Breast_MRI_005", "pre", scan)
  with pytest.raises(duke.DiscoveryError, match="no 'post_1' files"):
    mapping.selection("Breast_MRI_005", "post_1", scan)
  bad = fx.write_csv(tmp_path / "mapping.csv", [{"path": "x"}])
  with pytest.raises(ValueError, match="mapping.csv: the file mapping needs the columns"):
    duke.discover(root, mapping_file=bad)


def test_duke_clinical_values_parse_without_unknowns(duke_root):
  root, _ = duke_root
  by_key = _by_key(duke.discover(root))
  clinical = by_key["Breast_MRI_001"].clinical
  assert clinical["age"] == pytest.approx(50.0, abs=0.01)
  report = clinical_table.ParseReport()
  parsed = clinical_table.parse_rows([clinical], report)
  assert report.unparsed == {}
  decoded = parsed.decode(0)
  assert decoded == {
      **{name: None for name in schema.VARIABLE_NAMES},
      "location": "C50.4", "laterality": "right", "focality": "unifocal",
      "molecular_subtype": "HER2-enriched ER-/HER2+", "histology": "ductal",
      "differentiation": "poor", "age": pytest.approx(50.0, abs=0.01), "menopause": "post",
      "ct": "2", "cn": "1", "cm": "0", "therapy": ["chemotherapy", "immunotherapy"]}
  # Every value Duke has is known after parsing; density was 'NC' (not collected).
  known = {k for k, v in clinical.items() if v is not None}
  assert known == {k for k, v in decoded.items() if v is not None}
  # Mol Subtype 'NA' falls back to ER/PR/HER2; 10 o'clock on the left breast is upper-inner.
  left = _parsed(by_key["Breast_MRI_002"].clinical)
  assert left["molecular_subtype"] == "HER2-enriched ER-/HER2+"
  assert left["laterality"] == "left" and left["location"] == "C50.2"


@pytest.mark.parametrize("position,side,expected", [
    ("R10", None, "C50.4"), ("R 2", None, "C50.2"), ("L2", None, "C50.4"),
    ("L 7:30", None, "C50.3"), ("R7", None, "C50.5"), ("12", "L", "C50.8"), ("L3", None, "C50.8"),
    ("UOQ", "L", "UOQ"), ("NA", "L", None), ("R13", None, None)])
def test_duke_clock_positions(position, side, expected):
  assert duke._clock_location(position, side) == expected


def test_duke_header_rows_and_whitespace(duke_root):
  root, _ = duke_root
  rows = duke.read_clinical(root / "Clinical_and_Other_Features.xlsx")
  assert sorted(rows) == [f"Breast_MRI_00{i}" for i in range(1, 8)]  # legend row skipped
  row = rows["Breast_MRI_001"]
  assert row["menopause (at diagnosis)"] == 1
  assert row["pathologic response to neoadjuvant therapy"] == 1
  assert row["(column 12)"] == 2 and row["tumor grade"] == 2


# ---- I-SPY2 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ispy2_root(tmp_path_factory) -> tuple[Path, dict]:
  root = tmp_path_factory.mktemp("ispy2")
  made: dict = {}
  p1 = root / "ISPY2" / "ISPY2-100001"
  made[1, "T0"] = fx.ispy2_visit(p1, 100001, 0, "20120101")
  made[1, "T1"] = fx.ispy2_visit(p1, 100001, 1, "20120201")
  made[1, "T2"] = fx.ispy2_visit(p1, 100001, 2, "20120401", description="")  # tag only
  made[1, "T3"] = fx.ispy2_visit(p1, 100001, 3, "20120701", description="ISPY2MRIT3",
                                 tag=False)  # old-style description only
  p2 = root / "ISPY2" / "ISPY2-100002"
  made[2, "T0"] = fx.ispy2_visit(p2, 100002, 0, "20130101")
  made[2, "T1"] = fx.ispy2_visit(p2, 100002, 1, "20130201")
  fx.ispy2_visit(root / "ISPY2" / "ISPY2-100003", 100003, 0, "20140101")
  fx.write_xlsx(root / ispy2.CLINICAL_FILE, [
      fx.ISPY2_HEADERS,
      [100001, "Paclitaxel + Pembrolizumab", "White", 45.5, "Premenopausal", 1, 0, 1, 1],
      [100002, "Paclitaxel", "Asian", 60.2, "Postmenopausal", 0, 0, 1, 0],
      [100003, "Paclitaxel + Neratinib", "Black", 50.0, "N/A", 0, 1, 0, None],
      [100004, "Paclitaxel", "White", 38.0, "Premenopausal", 1, 1, 0, 1]])
  return root, made


def test_ispy2_visits_and_multiphase_series(ispy2_root):
  root, made = ispy2_root
  sources = ispy2.discover(root)
  by_key = _by_key(sources)
  assert [s.key for s in sources] == ["ISPY2-100001", "ISPY2-100002", "ISPY2-100003",
                                      "ISPY2-100004"]
  p1 = by_key["ISPY2-100001"]
  assert p1.error is None and p1.label == 1
  assert sorted(p1.mri) == [Phase.PRE, Phase.MID, Phase.POST]
  for phase, visit in ((Phase.PRE, "T0"), (Phase.MID, "T2"), (Phase.POST, "T3")):
    exam = p1.mri[phase]
    assert exam.pre.files == exam.post.files == tuple(sorted(made[1, visit]))
    assert (exam.pre.temporal_position, exam.post.temporal_position) == (1, 2)
    assert exam.pre.description == fx.ISPY2_DCE
  assert by_key["ISPY2-100002"].label == 0 and list(by_key["ISPY2-100002"].mri) == [Phase.PRE]
  assert by_key["ISPY2-100003"].error.startswith("pCR unavailable")
  assert "no ISPY2-100004 image folder" in by_key["ISPY2-100004"].error
  with_t1 = _by_key(ispy2.discover(root, t1_phase="mid", post_index=2))["ISPY2-100002"]
  assert with_t1.mri[Phase.MID].pre.files == tuple(sorted(made[2, "T1"]))
  assert with_t1.mri[Phase.MID].post.temporal_position == 3


def test_ispy2_clinical_values(ispy2_root):
  root, _ = ispy2_root
  by_key = _by_key(ispy2.discover(root))
  expected = {
      "ISPY2-100001": ("Luminal-like ER+/HER2-", "pre", ["chemotherapy", "immunotherapy"]),
      "ISPY2-100002": ("Triple negative", "post", ["chemotherapy"]),
      "ISPY2-100003": ("HER2-enriched ER-/HER2+", None, ["chemotherapy", "immunotherapy"]),
      "ISPY2-100004": ("Triple positive ER+/HER2+", "pre", ["chemotherapy"])}
  report = clinical_table.ParseReport()
  parsed = clinical_table.parse_rows([by_key[k].clinical for k in expected], report)
  assert report.unparsed == {}
  for row, (key, (subtype, menopause, therapy)) in enumerate(expected.items()):
    decoded = parsed.decode(row)
    assert (decoded["molecular_subtype"], decoded["menopause"], decoded["therapy"]) == (
        subtype, menopause, therapy), key
  assert math.isclose(parsed.decode(0)["age"], 45.5)


# ---- registry -------------------------------------------------------------------------------
def test_parallel_discovery_finds_the_same_patients(generic_root, duke_root, ispy2_root):
  # Folder scans run in spawned worker processes; errors of bad patients come back as errors.
  for adapter, root in ((generic.discover, generic_root[0]), (duke.discover, duke_root[0]),
                        (ispy2.discover, ispy2_root[0])):
    serial = adapter(root)
    assert any(s.error for s in serial) and any(s.mri for s in serial)
    assert adapter(root, workers=2) == serial


def test_registry(generic_root, tmp_path):
  root, _ = generic_root
  assert set(layouts.LAYOUTS) == {"generic", "duke", "ispy2"}
  assert [s.key for s in layouts.discover("generic", root)][:2] == ["G01", "G02"]
  with pytest.raises(ValueError, match="unknown layout 'tcia'; known layouts: duke, "
                                       "generic, ispy2"):
    layouts.discover("tcia", root)
  with pytest.raises(FileNotFoundError, match="not a folder"):
    layouts.discover("duke", tmp_path / "missing")


# ---- mammography view and side without ViewPosition -----------------------------------------
_CODES = {"CC": ("R-10242", "cranio-caudal"), "MLO": ("R-10226", "medio-lateral oblique")}
_ORIENTATION = {("L", "CC"): ["A", "R"], ("R", "CC"): ["P", "L"], ("L", "MLO"): ["A", "FR"],
                ("R", "MLO"): ["P", "FL"]}


def _untagged_mammograms(folder: Path, where: str, images=(("L", "CC"), ("L", "MLO"),
                                                           ("R", "CC"), ("R", "MLO"))):
  """Mammograms without ViewPosition and (Image)Laterality; ``where`` says which attribute or
  name carries side and view instead. Returns {(side, view): path}."""
  study = fx.study_tags("M1", "20200105", "Mammo")
  out = {}
  for number, (side, view) in enumerate(images, start=1):
    tags = {**study, "SeriesNumber": number, "SeriesDescription": "Mammo"}
    name = f"{number}"
    if where == "description":
      tags["SeriesDescription"] = f"{side} {view}"
    elif where == "protocol":
      tags["ProtocolName"] = f"{side}{view}"
    elif where == "code":
      tags["ImageLaterality"] = side
      code = pydicom.Dataset()
      code.CodeValue, code.CodingSchemeDesignator = _CODES[view][0], "SRT"
      code.CodeMeaning = _CODES[view][1]
      tags["ViewCodeSequence"] = pydicom.Sequence([code])
    elif where == "orientation":
      tags["PatientOrientation"] = _ORIENTATION[side, view]
    elif where == "file name":
      name = f"Mass-Training_P_00001_{'LEFT' if side == 'L' else 'RIGHT'}_{view}"
    elif where == "side only":
      tags["ImageLaterality"] = side
    out[side, view] = fx.write_mammogram(folder / name / "1-1.dcm", np.full((16, 12), 1000,
                                         np.uint16), laterality="", view="", tags=tags)
  return out


@pytest.mark.parametrize("where", ["description", "protocol", "code", "orientation",
                                   "file name"])
def test_view_and_side_from_where_exports_put_them(tmp_path, where):
  made = _untagged_mammograms(tmp_path, where)
  imaging = generic.patient_imaging(tmp_path, side="R")
  assert imaging.warnings == []
  reasons = {Path(u.where): u.reason for u in imaging.unused}
  assert reasons[made["L", "CC"]] == "left breast; the tumour side is right"
  if where == "orientation":
    # PatientOrientation names no oblique view: the MLO images are of unknown view there.
    assert _views(imaging) == [(made["R", "CC"], "CC")]
    assert reasons[made["R", "MLO"]] == "same breast, view unknown; the CC image is used"
  else:
    assert _views(imaging) == [(made["R", "CC"], "CC"), (made["R", "MLO"], "MLO")]
    assert _views(generic.patient_imaging(tmp_path, side="L", mg_view="MLO")) == [
        (made["L", "MLO"], "MLO"), (made["L", "CC"], "CC")]
  assert set(reasons) == set(made.values()) - {path for path, _ in _views(imaging)}


def test_an_image_whose_view_nothing_states_is_taken_with_a_warning(tmp_path):
  made = _untagged_mammograms(tmp_path, "side only", images=(("L", "CC"), ("R", "CC")))
  imaging = generic.patient_imaging(tmp_path, side="L")
  assert _views(imaging) == [(made["L", "CC"], "")]  # the file's view is stated nowhere
  assert imaging.warnings == ["mammogram view not found (no ViewPosition, ViewCodeSequence, "
                              "description, orientation or file name gives it)"]


@pytest.mark.parametrize("images,expected,how", [
    ((("R", "CC"), ("R", "MLO"), ("L", "CC")), (("R", "CC"), ("R", "MLO")),
     "the right breast has more images (2 against 1)"),
    ((("R", "CC"), ("L", "CC")), (("L", "CC"),), "both breasts imaged equally, the left taken"),
    ((("R", "MLO"),), (("R", "MLO"),), "the study images the right breast only"),
])
def test_unknown_tumour_side_is_chosen_by_the_stated_rule(tmp_path, images, expected, how):
  made = _untagged_mammograms(tmp_path, "description", images=images)
  imaging = generic.patient_imaging(tmp_path, side=None)
  assert _views(imaging) == [(made[side, view], view) for side, view in expected]
  assert imaging.warnings == [f"tumour side unknown in the clinical table: {how}"]
  other = [u.reason for u in imaging.unused if "breast; the tumour side" in u.reason]
  assert all(r.endswith("(by rule)") for r in other)


def test_every_unused_series_has_its_reason(tmp_path):
  study = fx.study_tags("U1", "20200101", "MRI pre-NAT")
  written = fx.dce_study(tmp_path / "mr", study, "ax dyn pre",
                         ("ax dyn 1st pass", "ax dyn 2nd pass"))
  early = fx.study_tags("U1", "20200201", "MRI", "T1")
  fx.dce_study(tmp_path / "mr_t1", early)
  imaging = generic.patient_imaging(tmp_path, side="R")
  reasons = {u.item: u.reason for u in imaging.unused}
  label = "study 'MRI pre-NAT' of 20200101"
  assert reasons[f"MR series '3-Plane Loc' of {label}"].startswith("not a DCE phase")
  assert reasons[f"MR series 'Ax T2 FSE' of {label}"].startswith("not a DCE phase")
  assert reasons[f"MR series 'ax dyn 2nd pass' of {label}"] == (
      "a DCE series other than the pre-contrast one and post-contrast phase 1")
  assert sum("early-treatment time point (T1)" in r for r in reasons.values()) == 4
  assert len(imaging.unused) == 3 + 4 and imaging.empty is None
  used = {p for exam in imaging.mri.values() for p in (*exam.pre.files, *exam.post.files)}
  assert used == set(written["ax dyn pre"]) | set(written["ax dyn 1st pass"])


def test_a_folder_without_images_says_why(tmp_path):
  (tmp_path / "empty").mkdir()
  assert generic.patient_imaging(tmp_path / "empty").empty == "the folder is empty"
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "report.txt").write_text("no images")
  assert generic.patient_imaging(tmp_path / "notes").empty == (
      "none of its 1 files is a DICOM image or a NIfTI exam")


def _patient_with_everything(folder: Path) -> tuple[dict, dict]:
  made = fx.dce_study(folder / "mr", fx.study_tags("P", "20200101", "MRI pre-NAT"))
  views = fx.mammograms(folder / "mg", fx.study_tags("P", "20200101", "Mammo pre-NAT"))
  return made, views


@pytest.mark.parametrize("damage", ["junk_in_localizer", "truncated_localizer_slice",
                                    "truncated_unused_view", "truncated_preferred_view"])
def test_a_broken_file_of_an_unused_series_is_listed_not_fatal(tmp_path, damage):
  made, views = _patient_with_everything(tmp_path)
  if damage == "junk_in_localizer":
    broken = made["3-Plane Loc"][0].with_name("junk.dcm")
    broken.write_bytes(b"not a DICOM file")
  elif damage == "truncated_localizer_slice":
    broken = fx.truncate(made["3-Plane Loc"][1])
  else:
    broken = fx.truncate(views["L", "MLO" if damage == "truncated_unused_view" else "CC"])
  imaging = generic.patient_imaging(tmp_path, side="L")
  # A broken view is not used; the other view of the tumour side still is.
  used = {"truncated_unused_view": ["CC"], "truncated_preferred_view": ["MLO"]}.get(
      damage, ["CC", "MLO"])
  assert _views(imaging) == [(views["L", v], v) for v in used]
  assert list(imaging.mri) == [Phase.PRE]
  assert imaging.warnings == [("unreadable DICOM files outside the series used: 1 (listed with "
                               "the unused images); readable, they might have been chosen")]
  assert sorted(imaging.mri[Phase.PRE].pre.files) == sorted(made["ax dyn pre"])
  [entry] = [u for u in imaging.unused if u.where == str(broken)]
  assert entry.item == f"unreadable file {broken.name!r}"
  assert entry.reason.startswith("corrupt DICOM file (") and "not in a series used" in entry.reason


@pytest.mark.parametrize("damage", ["junk_beside_pre", "truncated_post_slice",
                                    "pixels_cut_in_pre", "junk_beside_used_view"])
def test_a_broken_file_that_may_belong_to_a_used_series_stops_the_patient(tmp_path, damage):
  made, views = _patient_with_everything(tmp_path)
  if damage == "junk_beside_pre":
    broken = made["ax dyn pre"][0].with_name("junk.dcm")
    broken.write_bytes(b"not a DICOM file")
  elif damage == "truncated_post_slice":
    broken = fx.truncate(max(made["ax dyn 1st pass"]))
  elif damage == "pixels_cut_in_pre":
    # Without its middle slice the pre-contrast series no longer matches the posts' geometry:
    # chosen without it, a post-contrast phase would pass for pre-contrast.
    broken = sorted(made["ax dyn pre"])[2]
    broken.write_bytes(broken.read_bytes()[:-40])
  else:
    broken = views["L", "CC"].with_name("junk.dcm")
    broken.write_bytes(b"not a DICOM file")
  # Either the choice of series fails for want of the slice (and names the file), or the
  # choice is made and the file may belong to a series chosen.
  with pytest.raises(DiscoveryError, match=re.escape(f"{broken}: corrupt DICOM file")):
    generic.patient_imaging(tmp_path, side="L")

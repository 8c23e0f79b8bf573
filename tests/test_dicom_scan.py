"""Tests of input_pipeline.ingestion.dicom_scan and dce_select: indexing DICOM headers and
choosing the DCE series."""

from __future__ import annotations

import math
from pathlib import Path

import layout_fixtures as fx
import pytest

from input_pipeline.ingestion import dce_select, dicom_scan
from input_pipeline.ingestion.dce_select import DiscoveryError, select_dce
from input_pipeline.ingestion.dicom_scan import SeriesInfo, scan_folder


def _series(description: str, number: int, *, time_s: float | None = None,
            trigger_ms: float | None = None, rows: int = 8, slices: int = 4,
            positions: tuple[int, ...] = (), image_type=("ORIGINAL", "PRIMARY"),
            modality: str = "MR", repetition_ms: float | None = 5.0) -> SeriesInfo:
  """A series as scan_folder would index it, without files on disk."""
  frames = slices * max(1, len(positions))
  return SeriesInfo(
      uid=f"1.2.{number}", study_uid="1.2", description=description, modality=modality,
      image_type=tuple(image_type), number=number,
      files=[Path(f"s{number}/IM{k}.dcm") for k in range(frames)],
      sop_instance_uids=[f"1.2.{number}.{k}" for k in range(frames)], frames=frames,
      temporal_positions=set(positions), acquisition_time_s=time_s, trigger_time_ms=trigger_ms,
      rows=rows, columns=8, orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
      pixel_spacing=(1.0, 1.0), repetition_time_ms=repetition_ms, echo_time_ms=2.0)


def _chosen(dce) -> tuple[str, str]:
  return dce.pre.description, dce.post.description


# ---- scan_folder ----------------------------------------------------------------------------
def test_scan_groups_studies_and_series_and_skips_non_dicom(tmp_path):
  first = fx.study_tags("P1", "20200101", "MRI pre-NAT", "T0")
  second = fx.study_tags("P1", "20200601", "MRI post-NAT")
  pre = fx.mr_series(tmp_path / "a" / "pre", first, "ax dyn pre", 3, trigger_ms=0.0)
  fx.mr_series(tmp_path / "a" / "post", first, "ax dyn 1st pass", 4, trigger_ms=90_000.0)
  multi = fx.mr_series(tmp_path / "b" / "multi", second, "Ax Vibrant MultiPhase", 5, phases=3)
  enhanced = fx.mr_series(tmp_path / "b" / "enh", second, "enhanced dce", 6, phases=2,
                          enhanced=True)
  pre[0].rename(pre[0].with_suffix(""))  # DICOM without .dcm
  (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
  (tmp_path / "notes.txt").write_text("not dicom")
  (tmp_path / "table.xlsx").write_bytes(b"PK\x03\x04 zip")

  scan = scan_folder(tmp_path)

  assert scan.problems == []
  assert [s.description for s in scan.sorted_studies()] == ["MRI pre-NAT", "MRI post-NAT"]
  study = scan.sorted_studies()[0]
  assert study.time_point_id == "T0" and study.date == "20200101"
  by_name = {s.description: s for st in scan.studies.values() for s in st.series.values()}
  assert set(by_name) == {"ax dyn pre", "ax dyn 1st pass", "Ax Vibrant MultiPhase",
                          "enhanced dce"}
  assert len(by_name["ax dyn pre"].files) == 4
  assert pre[0].with_suffix("") in by_name["ax dyn pre"].files
  assert by_name["ax dyn 1st pass"].trigger_time_ms == 90_000.0
  assert by_name["ax dyn 1st pass"].acquisition_time_s == 9 * 3600 + 90
  assert by_name["Ax Vibrant MultiPhase"].temporal_positions == {1, 2, 3}
  assert by_name["Ax Vibrant MultiPhase"].frames == len(multi) == 12
  assert by_name["Ax Vibrant MultiPhase"].frames_per_position == 4
  enh = by_name["enhanced dce"]
  assert enh.is_enhanced and enh.files == enhanced and enh.frames == 8
  assert enh.temporal_positions == {1, 2}
  assert enh.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) and enh.pixel_spacing == (1.0, 1.0)
  assert len(set(by_name["ax dyn pre"].sop_instance_uids)) == 4


def test_scan_records_truncated_files_as_problems(tmp_path):
  study = fx.study_tags("P1", "20200101")
  files = fx.mr_series(tmp_path / "s", study, "ax dyn pre", 3)
  header_cut = fx.truncate(files[1])
  pixels_cut = files[2]
  pixels_cut.write_bytes(pixels_cut.read_bytes()[:-40])
  (tmp_path / "junk.dcm").write_bytes(b"this is not a dicom file at all")

  scan = scan_folder(tmp_path)

  problems = {p.path: p for p in scan.problems}
  assert set(problems) == {header_cut, pixels_cut, tmp_path / "junk.dcm"}
  assert str(problems[header_cut]).startswith(f"{header_cut}: corrupt DICOM")
  assert "Rows" in problems[header_cut].reason and "truncated" in problems[pixels_cut].reason
  series = next(iter(next(iter(scan.studies.values())).series.values()))
  assert sorted(series.files) == sorted([files[0], files[3]])
  # Where the UIDs survive, the series a broken file belongs to is known.
  assert problems[header_cut].series_uid == problems[pixels_cut].series_uid == series.uid
  assert problems[tmp_path / "junk.dcm"].series_uid is None


def test_scan_keeps_mammogram_views_per_file(tmp_path):
  study = fx.study_tags("P1", "20200101", "MG")
  views = fx.mammograms(tmp_path, study)
  scan = scan_folder(tmp_path)
  found = {(s.laterality, s.view): s.files[0] for st in scan.studies.values()
           for s in st.series.values()}
  assert found == views
  assert not scan.sorted_studies()[0].is_mr


# ---- select_dce: descriptions -------------------------------------------------------------
@pytest.mark.parametrize("names,post_index,expected", [
    (["ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass", "ax dyn 3rd pass"], 1,
     ("ax dyn pre", "ax dyn 1st pass")),
    (["ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass", "ax dyn 3rd pass"], 2,
     ("ax dyn pre", "ax dyn 2nd pass")),
    (["ax 3d dyn pre", "1st ax dyn", "2nd ax dyn"], 1, ("ax 3d dyn pre", "1st ax dyn")),
    (["ax 3d dyn pre", "Ph1/ax 3d dyn", "Ph2/ax 3d dyn", "Ph3/ax 3d dyn"], 1,
     ("ax 3d dyn pre", "Ph1/ax 3d dyn")),
    (["T1 FL3D AX PRE", "T1 FL3D AX POST 1", "T1 FL3D AX POST 2"], 2,
     ("T1 FL3D AX PRE", "T1 FL3D AX POST 2")),
    (["t1_fl3d_tra_dynaVIEWS", "t1_fl3d_tra_dynaVIEWS_post1"], 1,
     ("t1_fl3d_tra_dynaVIEWS", "t1_fl3d_tra_dynaVIEWS_post1")),
    (["ax t1 pre", "ax t1 +c"], 1, ("ax t1 pre", "ax t1 +c")),
])
def test_select_dce_by_description(names, post_index, expected):
  # Series numbers run backwards so that only the descriptions can give the right answer.
  series = [_series(name, 20 - i) for i, name in enumerate(names)]
  series += [_series("3-Plane Loc", 1, slices=3), _series("ax t2 fse", 2, repetition_ms=4000),
             _series("ax dyn sub", 30), _series("MIP ax dyn 1st pass", 31),
             _series("ADC map", 32), _series("ax dyn pre", 33, image_type=("DERIVED",))]
  assert _chosen(select_dce(series, post_index)) == expected


def test_select_dce_pairs_only_series_of_one_geometry():
  series = [_series("ax t1 tse c-", 2, rows=16), _series("ax dyn pre", 3),
            _series("ax dyn 1st pass", 4), _series("ax t1 +c", 9, rows=16, slices=6)]
  dce = select_dce(series)
  assert _chosen(dce) == ("ax dyn pre", "ax dyn 1st pass")
  assert dce.pre.files == tuple(series[1].files) and dce.pre.temporal_position is None


def test_select_dce_names_a_size_mismatch():
  series = [_series("ax dyn pre", 3), _series("ax dyn 1st pass", 4, rows=10)]
  with pytest.raises(DiscoveryError, match="size mismatch.*'ax dyn pre'.*'ax dyn 1st pass'"):
    select_dce(series)


# ---- select_dce: multiphase -----------------------------------------------------------------
def test_select_dce_multiphase_first_and_next_temporal_positions():
  multi = _series("Ax Vibrant MultiPhase", 5, positions=(1, 2, 3, 4))
  series = [_series("ax dyn pre", 3), _series("ax dyn 1st pass", 4), multi]
  dce = select_dce(series, post_index=2)
  assert dce.pre.files == dce.post.files == tuple(multi.files)
  assert (dce.pre.temporal_position, dce.post.temporal_position) == (1, 3)
  assert dce.pre.description == "Ax Vibrant MultiPhase"


def test_select_dce_multiphase_prefers_original_and_larger_field_of_view():
  cropped = _series("ISPY2: VOLSER: uni-lateral cropped: original DCE", 61800, rows=6,
                    positions=(1, 2, 3))
  bilateral = _series("ISPY2: VOLSER: bi-lateral: original DCE", 61900, rows=12,
                      positions=(1, 2, 3))
  derived = _series("moco dce", 70000, rows=16, positions=(1, 2, 3), image_type=("DERIVED",))
  ser_map = _series("ISPY2: VOLSER: bi-lateral: SER", 61901, rows=12)
  dce = select_dce([cropped, derived, ser_map, bilateral])
  assert dce.pre.description == bilateral.description
  assert (dce.pre.temporal_position, dce.post.temporal_position) == (1, 2)


def test_select_dce_multiphase_without_the_asked_phase():
  with pytest.raises(DiscoveryError, match="2 temporal positions"):
    select_dce([_series("Ax Vibrant MultiPhase", 5, positions=(1, 2))], post_index=2)


# ---- select_dce: acquisition order ----------------------------------------------------------
def test_select_dce_orders_unlabelled_series_by_acquisition_time():
  # Series numbers disagree with the acquisition times; the times decide.
  series = [_series("T1 AX FS", 7, time_s=36_000.0 + 180, trigger_ms=180_000.0),
            _series("T1 AX FS", 8, time_s=36_000.0, trigger_ms=0.0),
            _series("T1 AX FS", 6, time_s=36_000.0 + 90, trigger_ms=90_000.0)]
  dce = select_dce(series)
  assert (dce.pre.files, dce.post.files) == (tuple(series[1].files), tuple(series[2].files))
  assert select_dce(series, post_index=2).post.files == tuple(series[0].files)


def test_select_dce_orders_by_trigger_time_when_acquisition_times_tie():
  series = [_series("dyn", 4, time_s=100.0, trigger_ms=60_000.0),
            _series("dyn", 5, time_s=100.0, trigger_ms=0.0)]
  dce = select_dce(series)
  assert (dce.pre.files, dce.post.files) == (tuple(series[1].files), tuple(series[0].files))


def test_select_dce_refuses_to_guess_without_times_or_labels():
  series = [_series("T1 AX FS", 7), _series("T1 AX FS", 8)]
  with pytest.raises(DiscoveryError, match="no pre-contrast series among: 'T1 AX FS'"):
    select_dce(series)


def test_select_dce_without_pre_contrast_lists_the_descriptions():
  series = [_series("3-Plane Loc", 1, slices=3), _series("ax dyn 1st pass", 4),
            _series("ax dyn 2nd pass", 5)]
  with pytest.raises(DiscoveryError) as error:
    select_dce(series)
  assert str(error.value) == ("no pre-contrast series among: '3-Plane Loc', "
                              "'ax dyn 1st pass', 'ax dyn 2nd pass'")


def test_select_dce_without_post_contrast():
  with pytest.raises(DiscoveryError, match="no post-contrast series \\(phase 1\\)"):
    select_dce([_series("ax dyn pre", 3), _series("ax t2", 4)])


def test_select_dce_end_to_end_on_files(tmp_path):
  study = fx.study_tags("P1", "20200101")
  written = fx.dce_study(tmp_path, study, "ax dyn pre", ("ax dyn 1st pass", "ax dyn 2nd pass"))
  fx.mr_series(tmp_path / "9", study, "ax dyn 1st pass SUB", 9, derived=True)
  scan = scan_folder(tmp_path)
  dce = select_dce(scan.sorted_studies()[0].series.values(), post_index=2)
  assert sorted(dce.pre.files) == sorted(written["ax dyn pre"])
  assert sorted(dce.post.files) == sorted(written["ax dyn 2nd pass"])


def test_description_patterns_exclude_what_is_never_dce():
  for name in ("3-Plane Loc", "Ax T2 FSE", "DWI b800", "ADC", "ax dyn sub", "MIP",
               "ISPY2: VOLSER: bi-lateral: SER", "ISPY2: VOLSER: bi-lateral: PE2",
               "Analysis Mask", "Localizer"):
    assert not dce_select.is_dce_candidate(_series(name, 1)), name
  for name in ("ax dyn pre", "Ph1/ax 3d dyn", "ax t1 +c", "ISPY2: VOLSER: bi-lateral: "
               "original DCE", "T1 FL3D AX POST 1", "Ax Vibrant MultiPhase"):
    assert dce_select.is_dce_candidate(_series(name, 1)), name
  assert math.isclose(dicom_scan._seconds("093015.5"), 9 * 3600 + 30 * 60 + 15.5)


# ---- select_dce: contrast tags --------------------------------------------------------------
def test_contrast_tags_break_a_tie_of_description_and_time():
  # Same description, same time; the contrast series has the lower SeriesNumber, so the
  # acquisition order alone would take it as pre-contrast.
  enhanced = _series("T1 AX FS", 5, time_s=36_000.0)
  plain = _series("T1 AX FS", 6, time_s=36_000.0)
  enhanced.contrast = True
  assert _chosen_files(select_dce([enhanced, plain])) == (plain.files, enhanced.files)
  assert _chosen_files(select_dce([plain, enhanced])) == (plain.files, enhanced.files)
  # Without the tag the lower number wins, which is what the tag corrects above.
  enhanced.contrast = False
  assert _chosen_files(select_dce([enhanced, plain])) == (enhanced.files, plain.files)


def test_contrast_tags_on_every_series_say_nothing_and_start_time_decides():
  first, second = _series("T1 AX FS", 5, time_s=100.0), _series("T1 AX FS", 6, time_s=100.0)
  first.contrast = second.contrast = True  # copied onto every series of the exam
  assert _chosen_files(select_dce([first, second])) == (first.files, second.files)
  # A bolus start between the acquisitions: the earlier number was acquired after it.
  first.acquisition_time_s, second.acquisition_time_s = 200.0, 100.0
  first.number, second.number = 5, 6
  for s in (first, second):
    s.contrast_start_s = 150.0
  assert _chosen_files(select_dce([first, second])) == (second.files, first.files)


def test_an_explicit_pre_description_with_contrast_tags_is_not_pre():
  tagged, plain = _series("ax dyn pre", 3), _series("ax dyn", 4, time_s=10.0)
  tagged.contrast, tagged.acquisition_time_s = True, 20.0
  assert _chosen_files(select_dce([tagged, plain])) == (plain.files, tagged.files)


def test_scan_reads_the_contrast_tags(tmp_path):
  study = fx.study_tags("P1", "20200101")
  fx.mr_series(tmp_path / "a", study, "T1 AX FS", 5, extra={"ContrastBolusAgent": "Gadovist",
                                                            "ContrastBolusStartTime": "090130"})
  fx.mr_series(tmp_path / "b", study, "T1 AX FS", 6)
  series = {s.number: s for s in scan_folder(tmp_path).sorted_studies()[0].series.values()}
  assert series[5].contrast and series[5].contrast_start_s == 9 * 3600 + 90
  assert not series[6].contrast and series[6].contrast_start_s is None


def _chosen_files(dce) -> tuple[list, list]:
  return list(dce.pre.files), list(dce.post.files)


@pytest.mark.parametrize("case", ["duplicate", "first_missing", "middle_missing"])
def test_a_duplicated_or_missing_slice_is_named_not_called_a_size_mismatch(tmp_path, case):
  made = fx.dce_study(tmp_path, fx.study_tags("P1", "20200101", "MRI pre-NAT"))
  pre = sorted(made["ax dyn pre"])  # 4 slices 2 mm apart, at 0, 2, 4 and 6 mm
  if case == "duplicate":
    (tmp_path / "3" / "copy.dcm").write_bytes(pre[1].read_bytes())
    expected = (f"pre-contrast 'ax dyn pre' has 2 files at one slice position ({pre[1].name}, "
                "copy.dcm, 2 mm along the slice normal): a duplicated file; remove all but one")
  else:
    gone = pre[0] if case == "first_missing" else pre[1]
    gone.unlink()
    expected = (f"pre-contrast 'ax dyn pre' lacks the slice(s) at "
                f"{0 if case == 'first_missing' else 2} mm along the slice normal that "
                f"post-contrast 'ax dyn 1st pass' has (in {gone.name}): missing file(s)")
  study = next(iter(scan_folder(tmp_path).studies.values()))
  with pytest.raises(DiscoveryError) as raised:
    select_dce(study.series.values())
  assert str(raised.value) == f"pre/post size mismatch: {expected}"

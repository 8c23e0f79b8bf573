"""The verify command: good folders pass, damage and count mismatches are named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from input_pipeline import records
from input_pipeline.records import tfrecord, verify
from input_pipeline.schema import VARIABLES


def _views(index: int) -> tuple[str, ...]:
  """Patient ``index``'s mammogram views: none, CC, or CC and MLO."""
  return ("CC", "MLO")[:index % 3]


def _record(index: int, split: str) -> records.PatientRecord:
  rng = np.random.default_rng(index)
  return records.PatientRecord(
      patient_id=f"P{index:012x}", split=split, label=index % 2,
      mri={"pre": rng.standard_normal((2, 3, 4)).astype(np.float16)},
      mammograms={v: np.full((4, 2), index, np.uint16) for v in _views(index)},
      rhpc_raw=("",) * len(VARIABLES), rhpc_codes=np.full(len(VARIABLES), -1, np.int32),
      rhpc_values=np.full(len(VARIABLES), np.nan, np.float32), spacing_mm=(1.0, 1.0, 1.0))


def _write_folder(root: Path, layout: dict[str, tuple[str, list[int]]],
                  manifest: bool = True) -> dict[str, list[int]]:
  """Writes shards {file: (split, patient indices)}; returns each shard's record offsets."""
  root.mkdir(exist_ok=True)
  offsets = {}
  for file, (split, indices) in layout.items():
    with tfrecord.TFRecordWriter(root / file) as writer:
      offsets[file] = [writer.write(records.encode(_record(i, split))) for i in indices]
  if manifest:
    (root / verify.MANIFEST).write_text(json.dumps({
        "format_version": 1,
        "shards": [{"file": f, "records": len(ix), "split": s} for f, (s, ix) in layout.items()],
    }))
  return offsets


_LAYOUT = {
    "train-00000-of-00002.tfrecord": ("train", [1, 2, 3]),
    "train-00001-of-00002.tfrecord": ("train", [4, 5]),
    "test-00000-of-00001.tfrecord": ("test", [6]),
}


def test_good_folder_passes(tmp_path, capsys):
  _write_folder(tmp_path, _LAYOUT)
  report = verify.verify_directory(tmp_path)
  assert report.ok, report.problems
  assert report.manifest_checked and report.num_records == 6
  assert report.splits == {"train": 5, "test": 1}
  assert [s.file for s in report.shards] == sorted(_LAYOUT)
  assert verify.main(["--records", str(tmp_path)]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert out == [f"{tmp_path}: 3 shard(s), 6 record(s) (train 5, test 1), manifest checked: OK"]


def test_mammogram_views_per_split_are_checked_against_the_manifest(tmp_path):
  _write_folder(tmp_path, _LAYOUT)
  manifest = json.loads((tmp_path / verify.MANIFEST).read_text())
  # Train: patients 1-5 hold CC x4 and MLO x2; test: patient 6 none.
  manifest["splits"] = {"train": {"mammogram_views": {"CC": 4, "MLO": 2}},
                        "test": {"mammogram_views": {}}}
  (tmp_path / verify.MANIFEST).write_text(json.dumps(manifest))
  assert verify.verify_directory(tmp_path).ok
  manifest["splits"]["train"]["mammogram_views"] = {"CC": 4, "MLO": 3}
  (tmp_path / verify.MANIFEST).write_text(json.dumps(manifest))
  [problem] = verify.verify_directory(tmp_path).problems
  assert problem.file == verify.MANIFEST and str(problem).endswith(
      "split 'train': mammogram views {'CC': 4, 'MLO': 3} declared, {'CC': 4, 'MLO': 2} "
      "readable")


def test_flipped_byte_is_named_with_file_and_offset(tmp_path, capsys):
  offsets = _write_folder(tmp_path, _LAYOUT)
  shard = tmp_path / "train-00000-of-00002.tfrecord"
  data = bytearray(shard.read_bytes())
  data[offsets[shard.name][1] + 12 + 40] ^= 0xFF
  shard.write_bytes(bytes(data))
  report = verify.verify_directory(tmp_path)
  crc = [p for p in report.problems if "data CRC mismatch" in p.message]
  assert [(p.file, p.offset) for p in crc] == [(shard.name, offsets[shard.name][1])]
  # The damaged record is not counted, so the manifest no longer matches either.
  assert any("holds 2 readable record(s)" in p.message for p in report.problems)
  assert verify.main(["--records", str(tmp_path)]) == 1
  out = capsys.readouterr().out
  assert f"{shard.name}:{offsets[shard.name][1]}: data CRC mismatch" in out
  assert "FAILED" in out.splitlines()[-1]


def test_manifest_count_mismatch_is_caught(tmp_path):
  _write_folder(tmp_path, _LAYOUT)
  manifest = json.loads((tmp_path / verify.MANIFEST).read_text())
  manifest["shards"][1]["records"] = 3
  (tmp_path / verify.MANIFEST).write_text(json.dumps(manifest))
  report = verify.verify_directory(tmp_path)
  assert not report.ok
  messages = [str(p) for p in report.problems]
  assert messages == [
      "train-00001-of-00002.tfrecord: holds 2 readable record(s), manifest.json says 3",
      "manifest.json: split 'train': 6 record(s) declared, 5 readable",
  ]


def test_missing_and_unlisted_shards_and_wrong_split(tmp_path):
  _write_folder(tmp_path, _LAYOUT)
  manifest = json.loads((tmp_path / verify.MANIFEST).read_text())
  manifest["shards"][2]["split"] = "validation"
  manifest["shards"].append({"file": "gone.tfrecord", "records": 0, "split": "validation"})
  (tmp_path / verify.MANIFEST).write_text(json.dumps(manifest))
  (tmp_path / "train-00000-of-00002.tfrecord").rename(tmp_path / "renamed.tfrecord")
  messages = [str(p) for p in verify.verify_directory(tmp_path).problems]
  assert "train-00000-of-00002.tfrecord: listed in manifest.json with 3 record(s) but " \
         "missing" in messages
  assert "renamed.tfrecord: not listed in manifest.json" in messages
  assert any(m.startswith("test-00000-of-00001.tfrecord: manifest.json says split "
                          "'validation'") for m in messages)


def test_undecodable_record_and_duplicate_patient_are_named(tmp_path):
  _write_folder(tmp_path, {"a.tfrecord": ("train", [1, 2])}, manifest=False)
  example = records.tf_example_pb2.Example.FromString(records.encode(_record(7, "test")))
  del example.features.feature["mri/shape"].int64_list.value[:]
  example.features.feature["mri/shape"].int64_list.value.extend([9, 9, 9])
  with tfrecord.TFRecordWriter(tmp_path / "b.tfrecord") as writer:
    bad_offset = writer.write(example.SerializeToString())
    leak_offset = writer.write(records.encode(_record(2, "test")))
  report = verify.verify_directory(tmp_path)
  assert not report.manifest_checked
  assert [(p.file, p.offset, p.patient_id) for p in report.problems] == [
      ("b.tfrecord", bad_offset, "P000000000007"), ("b.tfrecord", leak_offset, "P000000000002"),
      (verify.MANIFEST, None, None)]
  assert "feature 'mri/pre'" in report.problems[0].message
  assert "train/test leak" in report.problems[1].message
  assert str(report.problems[1]).startswith(f"b.tfrecord:{leak_offset}: [patient P000000000002]")


def test_empty_folder_and_leftover_partial(tmp_path, capsys):
  (tmp_path / f"x.tfrecord.123{tfrecord.PARTIAL_SUFFIX}").write_bytes(b"\x00" * 5)
  report = verify.verify_directory(tmp_path)
  assert [p.file for p in report.problems] == [".", verify.MANIFEST]
  assert report.problems[0].message == f"no *.tfrecord files under {tmp_path}"
  assert len(report.warnings) == 1 and "interrupted writer" in report.warnings[0]
  assert verify.main(["--records", str(tmp_path / "nope")]) == 1
  assert "not a folder" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["{not json", '{"shards": 3}',
                                     '{"shards": [{"file": "a.tfrecord"}]}'])
def test_malformed_manifest_is_a_problem(tmp_path, content):
  _write_folder(tmp_path, {"a.tfrecord": ("train", [1])}, manifest=False)
  (tmp_path / verify.MANIFEST).write_text(content)
  report = verify.verify_directory(tmp_path)
  assert not report.ok and report.problems[0].file == verify.MANIFEST


def test_a_folder_without_manifest_fails(tmp_path, capsys):
  # Intact shards alone do not make a prepared folder: nothing says they all belong to it.
  _write_folder(tmp_path, _LAYOUT, manifest=False)
  report = verify.verify_directory(tmp_path)
  assert [str(p) for p in report.problems] == [(
      f"{verify.MANIFEST}: missing: without it nothing says which shards belong to the records "
      "(prepare writes it last; an unfinished prepare is finished by running it again)")]
  assert verify.main(["--records", str(tmp_path)]) == 1
  assert capsys.readouterr().out.splitlines()[-1].endswith(
      f"no {verify.MANIFEST}: FAILED: 1 problem(s)")

"""generate -> prepare -> verify -> read back, on a tiny synthetic hospital export."""

import collections
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import layout_fixtures as fx
import numpy as np
import pydicom
import pytest

from input_pipeline import records, schema, synthetic
from input_pipeline.geometries import GEOMETRIES
from input_pipeline.ingestion.mammogram import MammogramOptions
from input_pipeline.ingestion.mri import MriOptions
from input_pipeline.records import out_folder, prepare, pseudonyms, tfrecord, verify
from input_pipeline.synthetic import dicom_writer
from input_pipeline.synthetic import export as synthetic_export

ROOT = Path(__file__).resolve().parents[1]
TINY = GEOMETRIES["tiny"]
NUM_PATIENTS = 12  # indices 1-6 are the unusual encodings, 7-10 the broken patients


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  out = tmp_path_factory.mktemp("export")
  synthetic.generate_export(out, NUM_PATIENTS, seed=3, geometry="tiny")
  return out


def _options(export, out, **changes):
  return prepare.PrepareOptions(
      source=export, out=out, mri=MriOptions(spacing_mm=TINY.mri_spacing_mm, box=TINY.mri_box),
      mammogram=MammogramOptions(size=TINY.mg_size), **{"shard_size": 3, **changes})


@pytest.fixture(scope="module")
def prepared(export, tmp_path_factory):
  out = tmp_path_factory.mktemp("prepared") / "records"
  manifest = prepare.prepare(_options(export, out, workers=2), progress=False)
  return out, manifest


def _truth(export):
  return {p["patient_id"]: p for p in json.loads(
      (export / "synthetic_truth.json").read_text())["patients"]}


def _key(out):
  return prepare.load_key(out.with_name(out.name + ".pseudonym.key"))


def _read_all(out):
  return {r.patient_id: r for shard in sorted(out.glob("*.tfrecord"))
          for _, data in tfrecord.iter_records(shard) for r in [records.decode(data)]}


def test_records_match_the_export(export, prepared):
  out, manifest = prepared
  report = verify.verify_directory(out)
  assert report.ok, report.summary()
  truth = _truth(export)
  key = _key(out)
  written = _read_all(out)
  usable = {pid: t for pid, t in truth.items() if t["broken"] is None}
  assert len(written) == len(usable) == sum(m["records"] for m in manifest["shards"])
  for source_id, t in usable.items():
    record = written[pseudonyms.pseudonym(key, source_id)]
    assert record.label == t["label"]
    assert [("pre", "mid", "post")[p] for p in record.phases] == t["phases"]
    # Every view the export wrote, CC first, by name.
    assert list(record.mammograms) == ([s["view"] for s in t["mammogram"]["series"]]
                                       if t["has_mammogram"] else [])
    for volume in record.mri.values():
      assert volume.shape == TINY.mri_box and volume.dtype == np.float16
      assert np.isfinite(volume.astype(np.float32)).all()
    for view in record.mammograms.values():
      assert view.shape == TINY.mg_size and view.dtype == np.uint16
    assert record.spacing_mm == pytest.approx(TINY.mri_spacing_mm)
    assert len(record.rhpc_raw) == 22 and record.rhpc_codes.shape == (22,)
  # Splits: by patient, every usable patient exactly once, counts as the manifest says.
  for split, entry in manifest["splits"].items():
    members = [r for r in written.values() if r.split == split]
    assert entry["patients"] == len(members)
    assert entry["pcr"] == sum(r.label == 1 for r in members)


def test_the_tumour_is_where_the_export_put_it(export, prepared):
  """The enhancing tumour's Pre-NAT centroid lies on the truth's side of the box (L-R)."""
  out, _ = prepared
  truth, key, written = _truth(export), _key(out), _read_all(out)
  checked = 0
  for source_id, t in truth.items():
    pid = pseudonyms.pseudonym(key, source_id)
    if pid not in written or t["latent"]["radius_mm"][0] < 15:
      continue
    volume = written[pid].mri["pre"].astype(np.float32)
    hot = np.argwhere(volume > 0.5 * volume.max())
    x_index = hot[:, 2].mean()  # x grows toward patient Left
    assert (x_index > TINY.mri_box[2] / 2) == (t["latent"]["side"] == "left"), source_id
    checked += 1
  assert checked >= 3


def test_broken_patients_are_skipped_with_their_reason(export, prepared):
  out, manifest = prepared
  truth, key = _truth(export), _key(out)
  broken = {pseudonyms.pseudonym(key, pid): t for pid, t in truth.items() if t["broken"]}
  assert len(broken) == 4
  skipped = {s["patient"]: s for s in manifest["skipped"]}
  assert set(skipped) == set(broken)
  for pid, t in broken.items():
    assert t["skip_keyword"].lower() in skipped[pid]["reason"].lower(), (t["broken"],
                                                                        skipped[pid])
  private = (out.with_name(out.name + ".private") / "skipped.csv").read_text()
  assert all(t["patient_id"] in private for t in broken.values())  # for the data steward


def test_no_identifier_reaches_the_output(export, prepared):
  out, _ = prepared
  identifiers = _identifiers(export)
  assert len(identifiers) > 100
  outputs = [p for p in out.rglob("*") if p.is_file()]
  assert any(p.name == "manifest.json" for p in outputs)
  for path in outputs:
    data = path.read_bytes()
    leaked = [i for i in identifiers if i.encode() in data]
    assert not leaked, f"{path.name} contains {leaked[:5]}"


def test_rerun_redoes_only_missing_shards(export, tmp_path):
  out = tmp_path / "records"
  first = prepare.prepare(_options(export, out), progress=False)
  shards = sorted(out.glob("*.tfrecord"))
  original = {p.name: p.read_bytes() for p in shards}
  stamps = {p.name: p.stat().st_mtime_ns for p in shards}
  victim = shards[1]
  victim.unlink()  # as if killed before this shard was renamed into place
  out_folder.note_path(out, victim.name).unlink(missing_ok=True)
  time.sleep(0.01)
  second = prepare.prepare(_options(export, out), progress=False)
  assert second["shards"] == first["shards"]
  for p in sorted(out.glob("*.tfrecord")):
    assert p.read_bytes() == original[p.name]
    if p.name != victim.name:
      assert p.stat().st_mtime_ns == stamps[p.name]  # not rewritten


def test_other_options_in_the_same_folder_are_refused(export, prepared):
  out, _ = prepared
  with pytest.raises(prepare.PrepareError, match="other options or patients"):
    prepare.prepare(_options(export, out, seed=1), progress=False)


def test_kill_9_then_rerun_gives_the_uninterrupted_result(export, prepared, tmp_path):
  reference, _ = prepared
  out = tmp_path / "records"
  key = reference.with_name(reference.name + ".pseudonym.key")
  command = [sys.executable, "-m", "input_pipeline.records.prepare", "--source", str(export),
             "--out", str(out), "--geometry", "tiny", "--shard_size", "3", "--workers", "1",
             "--pseudonym_key", str(key), "--no_progress"]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
  notes = out_folder.progress_folder(out)
  deadline = time.time() + 120
  while time.time() < deadline and not (notes.exists() and any(notes.glob("*.json"))):
    time.sleep(0.05)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  assert not (out / prepare.MANIFEST).exists()  # really interrupted
  result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  assert "wrote" in result.stdout
  assert not list(out.glob("*.partial"))
  for shard in reference.glob("*.tfrecord"):
    assert (out / shard.name).read_bytes() == shard.read_bytes()


def _alive(pid):
  """True while ``pid`` runs; a zombie (exited, not yet reaped by init) counts as gone."""
  try:
    status = Path(f"/proc/{pid}/status").read_text()
  except FileNotFoundError:
    return False
  except OSError:  # no /proc (macOS)
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True
  return not any(line.split()[1:2] == ["Z"] for line in status.splitlines()
                 if line.startswith("State:"))


def test_pool_workers_exit_when_the_parent_is_killed(tmp_path):
  # A worker's job must be importable by module name in the spawned worker.
  (tmp_path / "pid_job.py").write_text(
      "import os, time\n\ndef pid(seconds):\n  time.sleep(seconds)\n  return os.getpid()\n")
  script = ("import time\n"
            "from input_pipeline.workers import worker_pool\n"
            "import pid_job\n"
            "pool = worker_pool(2)\n"
            "futures = [pool.submit(pid_job.pid, 1.0) for _ in range(2)]\n"
            "print(*[f.result() for f in futures], flush=True)\n"
            "time.sleep(600)\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
  # stderr to a file: the killed parent's resource tracker warns about its leaked semaphores.
  with open(tmp_path / "stderr", "w") as stderr:
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=stderr, text=True)
  workers = []
  try:
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(set(workers)) == 2, (workers, (tmp_path / "stderr").read_text())
    assert all(_alive(pid) for pid in workers)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(pid) for pid in workers):
      time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived their parent"
  finally:
    parent.kill()
    parent.wait()
    for pid in workers:
      if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_split_does_not_depend_on_the_pseudonym_key():
  from input_pipeline.ingestion.patient import PatientSource
  patients = [PatientSource(f"SRC{i:03d}", label=int(i % 3 == 0), clinical={}, mri={},
                            mammograms=()) for i in range(60)]
  options = prepare.PrepareOptions(source=Path("/nonexistent"), out=Path("/nonexistent/out"))

  def split_of_source(key):
    jobs, _ = prepare._plan(patients, options, key)
    return {source.key: job.split for job in jobs for _, source in job.patients}

  first, second = split_of_source(b"k" * 32), split_of_source(b"other key" * 4)
  assert first == second and len(first) == 60 and len(set(first.values())) == 3


def test_cli_rejects_bad_options_each_call_with_fresh_flags(export, tmp_path, capsys):
  out = tmp_path / "r"
  assert prepare.main(["--source", str(export), "--out", str(out), "--split",
                       "0.5,0.6,0.1"]) == 2
  assert "--split must be three fractions" in capsys.readouterr().err
  # A second call in the same process parses afresh: the earlier --split does not linger.
  assert prepare.main(["--source", str(export), "--out", str(out), "--box", "2,x,3"]) == 2
  err = capsys.readouterr().err
  assert "--box: expected comma-separated numbers" in err and "split" not in err
  assert prepare.main(["--out", str(out)]) == 2
  assert "--source must have a value" in capsys.readouterr().err
  assert prepare.main(["--source", str(export), "--out", str(out), "--layout", "nope"]) == 2
  assert "<duke|generic|ispy2>" in capsys.readouterr().err
  assert not out.exists()


def test_a_run_that_fails_before_its_first_patient_writes_nothing(tmp_path, capsys):
  out = tmp_path / "records"
  assert prepare.main(["--source", str(tmp_path / "no such export"), "--out", str(out)]) == 2
  assert "not a folder" in capsys.readouterr().err
  (tmp_path / "export").mkdir()  # a folder, but no clinical.csv
  assert prepare.main(["--source", str(tmp_path / "export"), "--out", str(out)]) == 2
  assert "no clinical.csv" in capsys.readouterr().err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no key, no out, no report


def test_help_shows_every_flag_with_its_help_and_default():
  result = subprocess.run([sys.executable, "-m", "input_pipeline.records.prepare", "--help"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
  text = result.stdout
  for name, geometry in GEOMETRIES.items():  # the presets with their sizes
    assert (f"{name}: MRI {'x'.join(map(str, geometry.mri_box))} voxels" in " ".join(
        text.split()))
  # One entry per flag: '  --name: help...' up to the next flag.
  entries = dict(re.findall(r"^  --(?:\[no\])?(\w+): (.*?)(?=^  --|^\S|\Z)", text, re.M | re.S))
  assert set(entries) >= {"source", "out", "layout", "geometry", "intensity", "seed", "workers",
                          "pseudonym_key", "no_progress", "imageless", "layout_option"}
  for name, entry in entries.items():
    assert len(entry.split("(default")[0].strip()) > 10, name  # a help text
    if name not in ("source", "out", "pseudonym_key", "spacing_mm", "box", "mg_size"):
      assert "(default: " in entry, name  # no default for those: required or derived
  assert "<clinical_only|skip>" in text and "<relative|raw>" in text


def test_manifest_accounts_for_every_image(export, prepared):
  out, manifest = prepared
  written = _read_all(out)
  for name, count in manifest["modalities"].items():
    assert count["with"] + count["without"] == len(written), name
  assert manifest["modalities"]["mammogram"]["with"] == sum(bool(r.mammograms)
                                                            for r in written.values())
  for split, entry in manifest["splits"].items():  # views counted by name, per split
    views = collections.Counter(v for r in written.values() if r.split == split
                                for v in r.mammograms)
    assert entry["mammogram_views"] == dict(sorted(views.items())), split
  assert manifest["modalities"]["mri_pre"]["with"] == sum("pre" in r.mri
                                                          for r in written.values())
  # The export's second views (MLO beside the CC) are used; its localizers / T2 are not.
  truth, key = _truth(export), _key(out)
  unused = {}
  for entry in manifest["unused_images"]:
    unused.setdefault(entry["patient"], []).append(entry)
  two_views = [pid for pid, t in truth.items() if t["mammogram"] and pseudonyms.pseudonym(key, pid)
               in written and len(t["mammogram"]["series"]) == 2]
  assert two_views
  for pid in two_views:
    assert list(written[pseudonyms.pseudonym(key, pid)].mammograms) == ["CC", "MLO"]
    items = [e["item"] for e in unused.get(pseudonyms.pseudonym(key, pid), [])]
    assert not any(item.startswith("MG image") for item in items), items
  assert any(e["reason"].startswith("not a DCE phase") for e in manifest["unused_images"])
  private = out.with_name(out.name + ".private") / "unused_images.csv"
  rows = list(csv.DictReader(private.open()))
  assert len(rows) == len(manifest["unused_images"])
  assert all(Path(r["file_or_folder"]).exists() and r["source_patient"] in truth for r in rows)


@pytest.fixture(scope="module")
def awkward_export(tmp_path_factory):
  """A: mammograms whose side and view only their descriptions give, no clinical laterality,
  no MRI. B: an empty folder. C: a folder with a text file only."""
  root = tmp_path_factory.mktemp("awkward")
  study = fx.study_tags("A", "20200105", "Mammo")
  r, c = np.mgrid[:120, :90]
  breast = np.where(((r - 60) / 50) ** 2 + (c / 70) ** 2 <= 1, 3000 - 20 * c, 40)
  for number, (side, view) in enumerate((("R", "CC"), ("R", "MLO"), ("L", "CC")), start=1):
    image = breast[:, ::-1] if side == "R" else breast
    fx.write_mammogram(root / "A" / str(number) / "1.dcm", image.astype(np.uint16),
                       laterality="", view="", tags={**study, "SeriesNumber": number,
                                                     "SeriesDescription": f"{side} {view}"})
  (root / "B").mkdir()
  (root / "C").mkdir()
  (root / "C" / "report.txt").write_text("see the paper chart")
  fx.write_csv(root / "clinical.csv", [
      {"patient_id": p, "pCR": label, "Laterality": ""} for p, label in
      (("A", "1"), ("B", "0"), ("C", "1"))])
  return root


@pytest.mark.parametrize("imageless", ["clinical_only", "skip"])
def test_imageless_patients_and_side_by_rule_are_counted_and_said(awkward_export, tmp_path,
                                                                  imageless):
  out = tmp_path / "records"
  manifest = prepare.prepare(_options(awkward_export, out, imageless=imageless,
                                      split_fractions=(1.0, 0.0, 0.0)), progress=False)
  key = _key(out)
  a, b, c = (pseudonyms.pseudonym(key, p) for p in "ABC")
  records = _read_all(out)
  assert list(records[a].mammograms) == ["CC", "MLO"] and records[a].mri == {}
  assert manifest["warnings"]["counts"] == {"tumour side unknown in the clinical table": 1}
  assert manifest["warnings"]["patients"] == [{
      "patient": a, "warning": "tumour side unknown in the clinical table: the right breast "
      "has more images (2 against 1)"}]
  reasons = {e["reason"] for e in manifest["unused_images"] if e["patient"] == a}
  assert reasons == {"left breast; the tumour side is right (by rule)"}
  why = {b: "the folder is empty", c: "none of its 1 files is a DICOM image or a NIfTI exam"}
  if imageless == "clinical_only":
    assert set(records) == {a, b, c}
    assert manifest["clinical_only"] == [{"patient": p, "reason": why[p]} for p in sorted(why)]
    assert manifest["modalities"]["mammogram"] == {"with": 1, "without": 2}
  else:
    assert set(records) == {a}
    assert {s["patient"]: s["reason"] for s in manifest["skipped"]} == {
        p: f"no image: {why[p]} (--imageless=skip)" for p in why}
    assert manifest["modalities"]["mammogram"] == {"with": 1, "without": 0}


def test_scrub_replaces_the_patient_id_where_it_stands_as_a_name():
  text = ("/data/export/12/20200105_MG_1/12_L_CC.dcm: 128 files, 12 DICOM images, uid "
          "1.2.840.113619.2.55 of study 'MRI' of 20200105")
  assert pseudonyms.scrub(text, Path("/data/export"), "12", "P0") == (
      "<source>/P0/<date>_MG_1/P0_L_CC.dcm: 128 files, P0 DICOM images, uid <uid> of study "
      "'MRI' of <date>")


def _identifiers(export: Path) -> set[str]:
  """What identifies the export's patients: DICOM ids, names, dates and UIDs, the clinical
  table's patient ids, and the source paths."""
  found = {str(export), str(export.resolve())}
  for path in export.rglob("*.dcm"):
    found.add(str(path.relative_to(export)))
    try:
      ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError):  # the truncated file
      continue
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate"):
      value = str(ds.get(keyword, "") or "")
      if len(value) >= 6:
        found.add(value)
    found.update(part for part in str(ds.get("PatientName", "")).split("^") if len(part) >= 5)
  with (export / "clinical.csv").open() as handle:
    found.update(row["patient_id"] for row in csv.DictReader(handle))
  return found


def test_no_identifier_under_out_when_patients_fail_preprocessing(export, tmp_path):
  # A mammogram with Rows = 0 passes the scan and fails in preprocessing: its skip reason (the
  # file's path, with the patient id and study date in it) must not reach --out, hidden
  # progress notes included.
  source = tmp_path / "export"
  shutil.copytree(export, source)
  victim = "SYN00011"
  for path in (source / victim).rglob("*.dcm"):
    ds = pydicom.dcmread(path)
    if ds.Modality == "MG":
      ds.Rows = 0
      ds.save_as(path)
  out = tmp_path / "records"
  manifest = prepare.prepare(_options(source, out), progress=False)
  stages = {s["stage"] for s in manifest["skipped"]}
  assert stages == {"discovery", "preprocess"}, manifest["skipped"]
  identifiers = _identifiers(source)
  assert victim in identifiers and len(identifiers) > 100
  files = [p for p in out.rglob("*") if p.is_file()]  # rglob enters hidden folders
  assert "manifest.json" in {p.name for p in files} and any(p.suffix == ".tfrecord" for p in files)
  for path in files:
    data = path.read_bytes()
    leaked = [i for i in identifiers if i.encode() in data]
    assert not leaked, f"{path.relative_to(out)} contains {leaked[:5]}"
  # The identifying side: complete, and readable by its owner only.
  private = out_folder.private_folder(out)
  assert victim in (private / "skipped.csv").read_text()
  notes = list(out_folder.progress_folder(out).glob("*.json"))
  assert len(notes) == len(manifest["shards"])
  for path in [private, *private.rglob("*")]:
    mode = path.stat().st_mode & 0o777
    assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def _copy_prepared(prepared, tmp_path) -> Path:
  """The prepared folder with its private folder and key, copied to ``tmp_path``."""
  reference, _ = prepared
  out = tmp_path / reference.name
  for suffix in ("", out_folder.PRIVATE_SUFFIX, ".pseudonym.key"):
    source = reference.with_name(reference.name + suffix)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, out.with_name(out.name
                                                                                 + suffix))
  return out


def test_a_rerun_on_another_plan_leaves_a_folder_that_passes_verify(export, prepared, tmp_path,
                                                                     capsys):
  out = _copy_prepared(prepared, tmp_path)
  usable = len(_read_all(out))
  # Killed before the manifest, then rerun with another --shard_size: the old shards go.
  (out / prepare.MANIFEST).unlink()
  old_shards = sorted(p.name for p in out.glob("*.tfrecord"))
  manifest = prepare.prepare(_options(export, out, shard_size=4), progress=False)
  assert f"removed {len(old_shards)} shard(s)" in capsys.readouterr().err
  report = verify.verify_directory(out)
  assert report.ok, [str(p) for p in report.problems]
  assert report.num_records == usable == sum(s["records"] for s in manifest["shards"])
  assert sorted(p.name for p in out.glob("*.tfrecord")) == sorted(
      s["file"] for s in manifest["shards"])
  # manifest.json deleted, then rerun on another source (one patient fewer).
  (out / prepare.MANIFEST).unlink()
  other = tmp_path / "other_export"
  shutil.copytree(export, other, ignore=shutil.ignore_patterns("SYN00000"))
  rows = list(csv.DictReader((export / "clinical.csv").open()))
  fx.write_csv(other / "clinical.csv", [r for r in rows if r["patient_id"] != "SYN00000"])
  manifest = prepare.prepare(_options(other, out, shard_size=4), progress=False)
  report = verify.verify_directory(out)
  assert report.ok, [str(p) for p in report.problems]
  assert report.num_records == usable - 1
  # A shard file that no progress note accounts for is refused, and left alone.
  stranger = out / "test-00007-of-00009.tfrecord"
  shutil.copy(out / manifest["shards"][0]["file"], stranger)
  with pytest.raises(prepare.PrepareError, match=f"{stranger.name}.*move them away or use a "
                                                 "new --out"):
    prepare.prepare(_options(other, out, shard_size=4), progress=False)
  assert stranger.exists()


def test_an_unwritable_out_fails_before_the_scan_writing_nothing(export, tmp_path,
                                                                 monkeypatch):
  def no_scan(*args, **kwargs):
    raise AssertionError("the scan ran before the write check")
  monkeypatch.setattr(prepare.layouts, "discover", no_scan)
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(prepare.PrepareError, match=f"--out {blocker}/records: {blocker} is a "
                                                 "file, not a folder"):
    prepare.prepare(_options(export, blocker / "records"), progress=False)
  if os.geteuid() != 0:  # root writes anywhere
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(prepare.PrepareError, match=f"--out {locked}/records: cannot write in "
                                                   f"{locked}"):
      prepare.prepare(_options(export, locked / "records"), progress=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "locked"][
      :1 + (os.geteuid() != 0)]


def test_a_split_emptied_by_preprocessing_is_warned(awkward_export, tmp_path, capsys):
  # M1 and M2: one Pre-NAT mammogram each; M2's says Rows = 0 and fails in preprocessing.
  source = tmp_path / "export"
  image = pydicom.dcmread(next((awkward_export / "A").rglob("*.dcm"))).pixel_array
  for patient in ("M1", "M2"):
    path = fx.write_mammogram(source / patient / "1.dcm", image, laterality="R", view="CC",
                              tags=fx.study_tags(patient, "20200105", "Mammo"))
    if patient == "M2":
      ds = pydicom.dcmread(path)
      ds.Rows = 0
      ds.save_as(path)
  fx.write_csv(source / "clinical.csv", [{"patient_id": p, "pCR": "1", "Age": "-50"}
                                         for p in ("M1", "M2")])
  out = tmp_path / "records"
  manifest = prepare.prepare(_options(source, out, split_fractions=(0.5, 0.5, 0.0),
                                      test_cohort="random"), progress=False)
  [record] = _read_all(out).values()
  [skipped] = manifest["skipped"]
  assert skipped["stage"] == "preprocess" and "mammogram" in skipped["reason"]
  emptied = ({"train", "validation"} - {record.split}).pop()
  assert manifest["empty_splits"] == {emptied: "its 1 patient(s) were skipped in preprocessing "
                                               "(manifest 'skipped' says why)"}
  err = capsys.readouterr().err
  assert f"warning: split '{emptied}' is empty" in err
  assert verify.verify_directory(out).ok
  # '-50' is no age of 50: Unknown, counted, warned, and the value listed privately.
  assert record.rhpc_codes[schema.VARIABLE_NAMES.index("age")] == schema.UNKNOWN
  assert manifest["rhpc"]["unparsed"] == {"age": 1}
  assert "warning: 1 rhpc value(s) unreadable or impossible" in err and "age 1" in err
  unparsed = out_folder.private_folder(out) / "unparsed_values.csv"
  rows = list(csv.reader(unparsed.open()))
  assert rows == [["variable", "raw_value", "count"], ["age", "-50", "1"]]


def test_enhanced_or_classic_files_give_the_same_records(tmp_path, monkeypatch):
  """A patient whose MR series are Enhanced MR multi-frame files (one per series) and the same
  patient written as classic per-slice files give the same record: every image array, value
  and label is equal, exactly."""
  key = tmp_path / "pseudonym.key"
  key.write_text("0" * 64)
  read = {}
  for layout, share in (("classic", 0.0), ("enhanced", 1.0)):
    monkeypatch.setattr(synthetic_export, "ENHANCED_SHARE", share)
    source, out = tmp_path / layout, tmp_path / f"{layout}_records"
    synthetic.generate_export(source, 1, seed=0, geometry="tiny", progress=False)
    truth = _truth(source)["SYN00000"]
    assert truth["enhanced_mr"] == (layout == "enhanced")
    classes = {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID
               for f in (source / "SYN00000").rglob("*.dcm")}
    assert classes - {dicom_writer.DIGITAL_MAMMOGRAPHY_STORAGE} == {
        dicom_writer.ENHANCED_MR_IMAGE_STORAGE if layout == "enhanced"
        else dicom_writer.MR_IMAGE_STORAGE}
    prepare.prepare(_options(source, out, split_fractions=(1.0, 0.0, 0.0), pseudonym_key=key),
                    progress=False)
    [read[layout]] = _read_all(out).values()
  classic, enhanced = read["classic"], read["enhanced"]
  assert truth["phases"] == ["pre", "mid", "post"] and classic.mammograms  # all compared
  assert sorted(classic.mri) == sorted(enhanced.mri) and len(classic.mri) == 3
  for phase, volume in classic.mri.items():
    np.testing.assert_array_equal(enhanced.mri[phase], volume)
  assert list(enhanced.mammograms) == list(classic.mammograms)
  for view, image in classic.mammograms.items():
    np.testing.assert_array_equal(enhanced.mammograms[view], image)
  for field in ("patient_id", "split", "label", "phases", "spacing_mm", "rhpc_raw"):
    assert getattr(enhanced, field) == getattr(classic, field), field
  np.testing.assert_array_equal(enhanced.rhpc_codes, classic.rhpc_codes)
  np.testing.assert_array_equal(enhanced.rhpc_values, classic.rhpc_values)

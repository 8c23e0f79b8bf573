"""The README's main job, at CI size: `python -m mrp_jax.main --config configs/demo.py:tiny`."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from checkpoint_damage import stored_arrays
from test_console import ABSL_LINE, CONTROL

from input_pipeline.records import verify

ROOT = Path(__file__).resolve().parents[1]
# The console's budget: the tiny demo printed 1,035 lines before it had a console (953 of them
# absl lines); it prints about 60 now.
LINE_BUDGET = 100


def _check_console(result, workdir):
  """What a person reads: no library log line, no control character, a few dozen lines; the
  library's lines are in WORKDIR/logs/demo.log instead."""
  console = result.stdout + result.stderr
  assert not ABSL_LINE.search(console), ABSL_LINE.search(console).group(0)
  assert not CONTROL.search(console), repr(CONTROL.search(console).group(0))
  assert len(console.splitlines()) <= LINE_BUDGET, console
  assert not re.search(r"^step\s+\d+", console, re.M)  # per-step metrics: metrics.jsonl only
  log = workdir / "logs" / "demo.log"
  assert f"  library log: {log}" in result.stdout
  return log.read_text()


_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _command(workdir):
  return [sys.executable, "-m", "mrp_jax.main", "--config", "configs/demo.py:tiny",
          "--workdir", str(workdir)]


def _demo(workdir):
  return subprocess.run(_command(workdir), capture_output=True, text=True, cwd=ROOT,
                        timeout=900, env=_ENV)


def test_demo_runs_every_stage_and_resumes(tmp_path):
  """Every stage, then the same command again: nothing is redone. Then the same command in
  another folder that holds the first one's export, records, pretrain, rhpc and iMRrhpc runs,
  killed with SIGKILL in the middle of iMGrhpc's training and run again: it resumes to the
  uninterrupted run's parameters (BatchNorm statistics, augmentation keys and the data
  iterator's position restored), bit for bit, and writes byte for byte its report (same seed,
  same machine). (The other stages have their own kill tests: test_prepare, test_pretrain,
  test_checkpoint.)"""
  first = _demo(tmp_path / "a")
  tmp_path = tmp_path / "a"
  assert first.returncode == 0, first.stderr[-3000:]
  assert "generating 24 synthetic patients" in first.stdout
  manifest = json.loads((tmp_path / "records" / "manifest.json").read_text())
  assert sum(s["patients"] for s in manifest["splits"].values()) == 20  # 24 minus 4 broken
  assert len(manifest["skipped"]) == 4
  assert verify.verify_directory(tmp_path / "records").ok
  for run in ("rhpc", "iMGrhpc", "iMRrhpc"):
    final = json.loads((tmp_path / "runs" / run / "final.json").read_text())
    assert final["steps"] == 6
  # The fused models started from the rhpc run's encoder.
  imr_config = json.loads((tmp_path / "runs" / "iMRrhpc" / "config.json").read_text())
  assert imr_config["model"]["rhpc_init"] == str(tmp_path / "runs" / "rhpc")
  # iMGrhpc's image encoder started from the pretrain run on the records' mammograms.
  img_config = json.loads((tmp_path / "runs" / "iMGrhpc" / "config.json").read_text())
  assert img_config["model"]["encoder_init"] == str(tmp_path / "runs" / "pretrain_iMGrhpc")
  assert json.loads((tmp_path / "runs" / "pretrain_iMGrhpc" / "encoder.json").read_text())[
      "steps"] == 4
  report = tmp_path / "report"
  metrics = json.loads((report / "metrics.json").read_text())
  models = ("rhpc", "iMGrhpc", "iMRrhpc", "MRP")
  assert set(metrics["models"]) == {*models, *(f"oracle {m}" for m in models),
                                    "oracle MRP rule"}
  for phase in ("pre", "mid", "post"):
    assert metrics["models"]["MRP"][phase]["n"] > 0
  assert (report / "report.md").read_text().count("| MRP |") >= 1
  assert (report / "mrp_ensemble.json").exists() and (report / "roc_post.png").exists()
  # The paper's claims are checked and printed (their outcome at 6 steps means nothing), with
  # the synthetic cohort's oracle rows beside the models.
  assert len(metrics["paper_claims"]["claims"]) == 16
  assert "the paper's result:" in first.stdout and "iMRrhpc Post-NAT >= Pre-NAT" in first.stdout
  assert "ordering at post" in first.stdout
  log = _check_console(first, tmp_path)
  assert len(ABSL_LINE.findall(log)) > 100 and "checkpoint_manager.py" in log  # Orbax's lines
  for run in ("rhpc", "iMGrhpc", "iMRrhpc"):  # one bar per run, its last line at the end
    assert re.search(rf"^train {run}: 6/6 step \(100%\) in \d\d:\d\d, loss \S+, "
                     r"val AUROC (nan|\d\.\d{3})$", first.stdout, re.M), run
    assert (tmp_path / "runs" / run / "metrics.jsonl").read_text().count('"step": 6') == 2
  assert f"tensorboard --logdir {tmp_path / 'runs'}" in first.stdout
  assert f"report: {report / 'report.md'}" in first.stdout
  stages = ["export", "scan + prepare", "verify", "pretrain iMGrhpc", "train rhpc",
            "train iMGrhpc", "train iMRrhpc", "evaluate"]
  timings = json.loads((tmp_path / "timings.json").read_text())
  assert list(timings["stages"]) == stages
  assert all(v["seconds"] > 0 and not v["reused"] for v in timings["stages"].values())
  assert "stage wall times: export " in first.stdout
  stamps = {p: p.stat().st_mtime_ns for p in
            [*(tmp_path / "records").glob("*.tfrecord"), report / "metrics.json"]}

  second = _demo(tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "generating" not in second.stdout  # the export is reused
  assert second.stdout.count("done before") == 5  # pretraining, three runs and the report
  assert "the paper's result:" in second.stdout  # read back from metrics.json
  assert len(_check_console(second, tmp_path)) > len(log)  # the log continues
  assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
  again = json.loads((tmp_path / "timings.json").read_text())["stages"]
  assert {k: v["seconds"] for k, v in again.items() if v["reused"]} == {
      k: v["seconds"] for k, v in timings["stages"].items() if k != "verify"}

  # Same command elsewhere, killed mid-training (iMGrhpc has a checkpoint, not its last one).
  other = tmp_path.parent / "b"
  # iMRrhpc's finished run too: the kill and the resume are iMGrhpc's, the report is redone.
  for done in ("export", "records", "records.private", "runs/rhpc", "runs/pretrain_iMGrhpc",
               "runs/iMRrhpc"):
    shutil.copytree(tmp_path / done, other / done)
  shutil.copy2(tmp_path / "records.pseudonym.key", other / "records.pseudonym.key")
  victim = subprocess.Popen(_command(other), cwd=ROOT, env=_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  checkpoints = other / "runs" / "iMGrhpc" / "checkpoints"
  deadline = time.time() + 600
  while time.time() < deadline and victim.poll() is None and not (
      checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    time.sleep(0.05)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert not (other / "runs" / "iMGrhpc" / "final.json").exists()  # really killed mid-run
  resumed = _demo(other)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step" in resumed.stdout
  assert resumed.stdout.count("done before") == 3  # the copied pretrain, rhpc and iMRrhpc runs
  best = json.loads((tmp_path / "runs" / "iMGrhpc" / "final.json").read_text())["best_step"]
  for folder in ("checkpoints/6", f"best/{best}"):  # the last step's state and the kept one
    straight, killed = (stored_arrays(w / "runs" / "iMGrhpc" / folder) for w in (tmp_path, other))
    assert straight.keys() == killed.keys()
    for key in straight:
      np.testing.assert_array_equal(straight[key], killed[key], err_msg=f"{folder} {key}")
  for name in ("metrics.json", "predictions.csv", "mrp_ensemble.json", "calibration.json"):
    assert (report / name).read_bytes() == (other / "report" / name).read_bytes(), name


def test_the_stage_clock_keeps_each_stage_and_the_time_of_a_reused_one(tmp_path):
  from mrp_jax import demo
  clock = demo.StageClock(tmp_path)
  with clock.time("export"):
    time.sleep(0.3)
  try:
    with clock.time("train rhpc"):
      raise RuntimeError("stopped")
  except RuntimeError:
    pass
  with clock.time("train iMGrhpc"):
    pass
  written = json.loads((tmp_path / demo.TIMINGS_FILE).read_text())
  assert list(written["stages"]) == ["export", "train iMGrhpc"]  # a failed stage is not kept
  assert written["stages"]["export"]["seconds"] >= 0.3
  assert written["total_seconds"] == pytest.approx(sum(
      v["seconds"] for v in written["stages"].values()), abs=1e-9)
  resumed = demo.StageClock(tmp_path)
  resumed.reused("export")
  resumed.reused("evaluate")  # no earlier time
  with resumed.time("train rhpc"):
    pass
  stages = json.loads((tmp_path / demo.TIMINGS_FILE).read_text())["stages"]
  assert stages["export"] == {"seconds": written["stages"]["export"]["seconds"], "reused": True}
  assert stages["evaluate"] == {"seconds": None, "reused": True}
  assert resumed.total() == stages["train rhpc"]["seconds"]
  line = resumed.summary()
  assert line.startswith("stage wall times: export 0 s (reused), evaluate ? (reused), "
                         "train rhpc 0 s;")

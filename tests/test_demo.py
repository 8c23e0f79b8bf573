"""The README's main job, at CI size: `python -m mrp_jax.main --config configs/demo.py:tiny`."""

import json
import os
import subprocess
import sys
from pathlib import Path

from input_pipeline import verify

ROOT = Path(__file__).resolve().parents[1]


def _demo(workdir):
  return subprocess.run(
      [sys.executable, "-m", "mrp_jax.main", "--config", "configs/demo.py:tiny",
       "--workdir", str(workdir)], capture_output=True, text=True, cwd=ROOT, timeout=900,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})


def test_demo_runs_every_stage_and_resumes(tmp_path):
  first = _demo(tmp_path)
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
  report = tmp_path / "report"
  metrics = json.loads((report / "metrics.json").read_text())
  assert set(metrics["models"]) == {"rhpc", "iMGrhpc", "iMRrhpc", "MRP"}
  for phase in ("pre", "mid", "post"):
    assert metrics["models"]["MRP"][phase]["n"] > 0
  assert (report / "report.md").read_text().count("| MRP |") >= 1
  assert (report / "mrp_ensemble.json").exists() and (report / "roc_post.png").exists()
  # The paper's claims are checked and printed (their outcome at 6 steps means nothing).
  assert len(metrics["paper_shape"]) == 13
  assert "the paper's result:" in first.stdout and "iMRrhpc Post-NAT >= Pre-NAT" in first.stdout
  stamps = {p: p.stat().st_mtime_ns for p in
            [*(tmp_path / "records").glob("*.tfrecord"), report / "metrics.json"]}

  second = _demo(tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "generating" not in second.stdout  # the export is reused
  assert second.stdout.count("done before") == 4  # three runs and the report
  assert "the paper's result:" in second.stdout  # read back from metrics.json
  assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten

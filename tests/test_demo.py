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
       "--workdir", str(workdir)], capture_output=True, text=True, cwd=ROOT, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})


def test_demo_runs_and_resumes(tmp_path):
  first = _demo(tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "generating 12 synthetic patients" in first.stdout
  manifest = json.loads((tmp_path / "records" / "manifest.json").read_text())
  assert sum(s["patients"] for s in manifest["splits"].values()) == 8  # 12 minus 4 broken
  assert len(manifest["skipped"]) == 4
  assert verify.verify_directory(tmp_path / "records").ok
  shard_times = {p: p.stat().st_mtime_ns for p in (tmp_path / "records").glob("*.tfrecord")}

  second = _demo(tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "generating" not in second.stdout  # the export is reused
  assert {p: p.stat().st_mtime_ns for p in shard_times} == shard_times  # nothing rewritten

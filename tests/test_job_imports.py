"""Each job loads what it runs: the train job neither the evaluation package nor matplotlib, the
evaluate job not the training package (their config checks included)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs mrp_jax.main as `python -m` would, then writes the names of every module loaded by the
# time the process exits (the job done) to the file named by the first argument.
_PROBE = """
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["mrp_jax.main", *sys.argv[2:]]
runpy.run_module("mrp_jax.main", run_name="__main__", alter_sys=True)
"""


def _job_modules(tmp_path: Path, name: str, *args: str) -> set[str]:
  out = tmp_path / f"{name}.modules.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  result = subprocess.run([sys.executable, "-c", _PROBE, str(out), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return set(json.loads(out.read_text()))


def _under(modules: set[str], package: str) -> list[str]:
  return sorted(m for m in modules if m == package or m.startswith(package + "."))


@pytest.fixture(scope="module")
def train_run(training_records, tmp_path_factory):
  """The train job (rhpc, 2 steps) run from the command line: its workdir and its modules."""
  workdir = tmp_path_factory.mktemp("train_job")
  modules = _job_modules(
      workdir, "train", "--config", "configs/rhpc.py:tiny", "--workdir", str(workdir / "run"),
      f"--config.data.records={training_records}", "--config.train.num_steps=2",
      "--config.train.eval_every_steps=2", "--config.train.checkpoint_every_steps=2",
      "--config.train.log_every_steps=1")
  return workdir / "run", modules


@pytest.mark.slow
def test_train_job_loads_no_evaluation_and_no_matplotlib(train_run):
  _, modules = train_run
  assert _under(modules, "mrp_jax.training.train")  # the probe saw the job
  assert not _under(modules, "mrp_jax.evaluation")
  assert not _under(modules, "matplotlib")


@pytest.mark.slow
def test_evaluate_job_loads_no_training(train_run, training_records, tmp_path):
  run_dir, _ = train_run
  modules = _job_modules(
      tmp_path, "evaluate", "--config", "configs/evaluate.py", "--workdir", str(tmp_path),
      f"--config.data.records={training_records}", f"--config.evaluate.runs=rhpc={run_dir}",
      "--config.evaluate.split=validation", "--config.evaluate.fit_split=validation",
      "--config.evaluate.bootstrap_replicates=100", "--config.evaluate.explain_cases=0",
      "--config.evaluate.batch_size=4")
  assert (tmp_path / "report" / "metrics.json").is_file()
  assert _under(modules, "mrp_jax.evaluation.evaluate")
  assert not _under(modules, "mrp_jax.training")

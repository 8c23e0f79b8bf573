"""Checkpoints that survive a kill at any instant and prove their bytes: a kill inside or between
the commits resumes to the uninterrupted run's bytes; a damaged step (a flipped or truncated data
file, a missing manifest.ocdbt, a missing or altered digest) is named and passed over for the
newest good one, in training and in evaluation; none left stops with one line."""

import io
import json
import logging as std_logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from checkpoint_damage import data_file, flat, flip_state_byte, stored_arrays

from mrp_jax.core import checkpoint, runs, sharding

ROOT = Path(__file__).resolve().parents[1]
STEPS = 9  # validated and checkpointed every 3 steps, all three checkpoints kept


def _args(records, workdir):
  return ["--config", "configs/rhpc.py:tiny", f"--config.data.records={records}",
          f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every_steps=3",
          "--config.train.eval_every_steps=3", "--config.train.log_every_steps=3",
          "--config.train.keep_checkpoints=3", "--workdir", str(workdir)]


def _run(command, **kwargs):
  return subprocess.run([sys.executable, *command], check=False, cwd=ROOT, capture_output=True,
                        text=True, timeout=400, env={**os.environ, "PYTHONPATH": str(ROOT)},
                        **kwargs)


@pytest.fixture(scope="module")
def finished(training_records, tmp_path_factory):
  """rhpc trained 9 steps without interruption: its workdir."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  result = _run(["-m", "mrp_jax.main", *_args(training_records, workdir)])
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6", "9"]
  return workdir


def _assert_same_arrays(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _best_step(workdir):
  return json.loads((workdir / "final.json").read_text())["best_step"]


def _final_lines(workdir):
  """metrics.jsonl without times and speeds, the last line of each step (a resumed run logs
  the steps after its checkpoint again)."""
  lines = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    values = json.loads(line)
    key = (values.pop("step"), "val/auroc" in values)
    lines[key] = {k: v for k, v in values.items() if k != "time" and not k.startswith("perf/")}
  return lines


@pytest.mark.parametrize("when", ["best-commit", "between", "latest-commit"])
def test_a_kill_at_any_checkpoint_instant_resumes_to_the_same_bytes(finished, training_records,
                                                                      tmp_path, when):
  """The process kills itself at step 6: while best/6 is written, after best/6 is committed and
  before checkpoints/6 begins (before the fix, every rerun then stopped with
  StepAlreadyExistsError), or while checkpoints/6 is written. The rerun of the same command
  ends with the uninterrupted run's states, summary and metrics, bit for bit."""
  workdir = tmp_path / "run"
  killed = _run([str(ROOT / "tests" / "killed_run.py"), when, "6",
                 *_args(training_records, workdir)])
  assert killed.returncode == -9, killed.stderr[-3000:]
  if when == "between":
    assert (workdir / "best" / "6").is_dir() and not (workdir / "checkpoints" / "6").exists()
  else:  # killed inside the commit: the step is there only as Orbax's temporary folder
    folder = workdir / ("best" if when == "best-commit" else "checkpoints")
    assert (folder / "6.orbax-checkpoint-tmp").is_dir() and not (folder / "6").exists()
  # The rerun; after the commit kill, one more of the finished run (it changes nothing).
  for resumed_from in (3, 9) if when == "latest-commit" else (3,):
    rerun = _run(["-m", "mrp_jax.main", *_args(training_records, workdir)])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from step {resumed_from} of {STEPS}" in rerun.stdout
  for name in ("final.json", "config.json"):
    assert (workdir / name).read_text() == (finished / name).read_text()
  _assert_same_arrays(stored_arrays(workdir / "checkpoints" / str(STEPS)),
                      stored_arrays(finished / "checkpoints" / str(STEPS)))
  best = _best_step(finished)
  _assert_same_arrays(stored_arrays(workdir / "best" / str(best)),
                      stored_arrays(finished / "best" / str(best)))
  assert _final_lines(workdir) == _final_lines(finished)


def _truncate_state_file(step_dir):
  path = data_file(step_dir)
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _alter_digest(step_dir):
  path = step_dir / "digest" / "metadata"
  digest = json.loads(path.read_text())
  key = min(digest["state"])
  value = digest["state"][key]
  digest["state"][key] = ("0" if value[0] != "0" else "1") + value[1:]
  path.write_text(json.dumps(digest))


# damage -> (how it is done, what the warning says of the step)
DAMAGES = {
    "flipped state byte": (flip_state_byte, "/state: 1 of "),
    "truncated state file": (_truncate_state_file, "/state is unreadable: "),
    "missing manifest.ocdbt": (lambda d: (d / "state" / "manifest.ocdbt").unlink(),
                               "/state/manifest.ocdbt is missing"),
    "missing digest": (lambda d: shutil.rmtree(d / "digest"), "/digest is missing"),
    "altered digest": (_alter_digest, "/state: 1 of "),
}


def _copy(finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  return workdir


def _load(workdir):
  run = runs.load_run(workdir, sharding.make_mesh(jax.devices()[:1]))
  return run.step, flat(run.state)


def _one_warning(capsys):
  lines = [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]
  assert len(lines) == 1, lines
  return lines[0]


@pytest.mark.parametrize("damage", DAMAGES)
def test_evaluation_passes_over_a_damaged_best_step(finished, tmp_path, capsys, damage):
  """best/<b> damaged: evaluation and predict load checkpoints/<b> (the same state, saved beside
  it) and say so; best/<b> and checkpoints/<b> damaged: the newest other step, saying that it
  is not the best-validated one."""
  workdir = _copy(finished, tmp_path)
  best = _best_step(finished)
  do, says = DAMAGES[damage]
  do(workdir / "best" / str(best))
  capsys.readouterr()
  step, state = _load(workdir)
  assert step == best
  _assert_same_arrays(state, stored_arrays(finished / "best" / str(best)))
  warning = _one_warning(capsys)
  assert f"best/{best}{says}" in warning
  assert f"using checkpoints/{best} (the same step) instead" in warning

  do(workdir / "checkpoints" / str(best))
  step, state = _load(workdir)
  newest = max({3, 6, 9} - {best})
  assert step == newest
  _assert_same_arrays(state, stored_arrays(finished / "checkpoints" / str(newest)))
  assert f"using checkpoints/{newest} (the newest readable step, not the best-validated one)" in (
      _one_warning(capsys))


def test_no_step_left_is_one_error_naming_each(finished, training_records, tmp_path):
  workdir = _copy(finished, tmp_path)
  for step_dir in [*(workdir / "checkpoints").iterdir(), *(workdir / "best").iterdir()]:
    _truncate_state_file(step_dir)
  with pytest.raises(checkpoint.CheckpointError) as error:
    _load(workdir)
  message = str(error.value)
  assert "\n" not in message and "no checkpoint can be loaded" in message
  for step in (3, 6, 9):
    assert f"checkpoints/{step}/state is unreadable" in message
  # The train command: one line on stderr, naming each step.
  result = _run(["-m", "mrp_jax.main", *_args(training_records, workdir)])
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  (line,) = lines
  assert line.startswith(f"train: {workdir.resolve()}: no checkpoint can be resumed from: ")
  for step in (3, 6, 9):
    assert f"checkpoints/{step}/state is unreadable" in line


def test_a_checkpoint_without_digest_loads_with_a_warning(finished, tmp_path, capsys):
  """A step written before checkpoints had digests (its metadata lists no digest item) loads
  unverified, and says so."""
  workdir = _copy(finished, tmp_path)
  best = workdir / "best" / str(_best_step(finished))
  shutil.rmtree(best / "digest")
  metadata = json.loads((best / "_CHECKPOINT_METADATA").read_text())
  del metadata["item_handlers"]["digest"]
  (best / "_CHECKPOINT_METADATA").write_text(json.dumps(metadata))
  capsys.readouterr()
  step, state = _load(workdir)
  assert step == _best_step(finished)
  _assert_same_arrays(state, stored_arrays(finished / "best" / str(step)))
  assert "written before checkpoints had digests; loaded without verifying" in (
      _one_warning(capsys))


def _alter_position(step_dir):
  """Another iterator position, still valid JSON: a digit of the window index changed."""
  path = step_dir / "data" / "process_0-of-1.json"
  position = json.loads(path.read_text())
  position["parent"]["window_index"] += 1
  path.write_text(json.dumps(position, indent=4))


@pytest.mark.parametrize("damage", ["flipped state byte", "altered position", "missing digest"])
def test_resume_passes_over_a_damaged_latest_step(finished, training_records, tmp_path, damage):
  """checkpoints/9 damaged: the rerun resumes from checkpoints/6, deletes 9, trains 7..9 again
  and ends with the uninterrupted run's bytes. With a flipped byte the best step is damaged too
  when it is 9: the rerun replaces it rather than keeping it."""
  workdir = _copy(finished, tmp_path)
  if damage == "altered position":
    _alter_position(workdir / "checkpoints" / "9")
  else:
    DAMAGES[damage][0](workdir / "checkpoints" / "9")
  best = _best_step(finished)
  if damage == "flipped state byte" and best == STEPS:
    flip_state_byte(workdir / "best" / str(best))
  result = _run(["-m", "mrp_jax.main", *_args(training_records, workdir)])
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [line for line in result.stderr.splitlines() if ": warning: " in line]
  assert len(warnings) == 1, result.stderr[-3000:]
  (warning,) = warnings
  assert "checkpoints/9" in warning and "resuming from checkpoints/6 instead (deleted " in warning
  assert (workdir / "final.json").read_text() == (finished / "final.json").read_text()
  for step in (6, 9):
    _assert_same_arrays(stored_arrays(workdir / "checkpoints" / str(step)),
                        stored_arrays(finished / "checkpoints" / str(step)))
  _assert_same_arrays(stored_arrays(workdir / "best" / str(best)),
                      stored_arrays(finished / "best" / str(best)))


def test_save_best_keeps_the_same_state_and_replaces_another(tmp_path):
  """A rerun that reaches a step best/ already holds: the same state is kept (its files
  untouched), another one replaces it."""
  state = {"w": jax.numpy.arange(6.0).reshape(2, 3), "step": jax.numpy.asarray(3)}
  other = {"w": state["w"] + 1, "step": state["step"]}
  checkpoints = checkpoint.Checkpoints(tmp_path, keep=1)
  checkpoints.save_best(3, state, {"auroc": 0.5})
  data = tmp_path / "best" / "3" / "state"
  stamp = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
  checkpoints.save_best(3, state, {"auroc": 0.5})
  assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == stamp
  checkpoints.save_best(3, other, {"auroc": 0.5})
  checkpoints.close()
  np.testing.assert_array_equal(stored_arrays(tmp_path / "best" / "3")["['w']"], other["w"])


def test_an_abandoned_read_after_the_log_closed_prints_nothing(capsys):
  """Orbax's reads left behind by a failed restore can fail after the command's log is closed
  (at exit): their line is dropped, not replaced by logging's traceback of the closed stream,
  so the damaged step's one line stays the only word on the console."""
  checkpoint._abandoned_reads_to_the_log()
  closed = io.StringIO()
  closed.close()
  handler = std_logging.StreamHandler(closed)
  absl_logger = std_logging.getLogger("absl")
  absl_logger.addHandler(handler)
  # logging's default (a library or an earlier test may have changed it): a failing handler
  # prints its traceback.
  raise_exceptions, std_logging.raiseExceptions = std_logging.raiseExceptions, True
  try:
    error = RuntimeError("Event loop is closed")
    threading.excepthook(threading.ExceptHookArgs((RuntimeError, error, None, None)))
    assert std_logging.raiseExceptions  # logging's own setting is back
  finally:
    absl_logger.removeHandler(handler)
    std_logging.raiseExceptions = raise_exceptions
  err = capsys.readouterr().err
  assert "Logging error" not in err and "Traceback" not in err, err

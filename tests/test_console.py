"""The console a person reads: progress bars off and on a terminal (input_pipeline/cli.py), and
a job's console with the library logging in WORKDIR/logs (mrp_jax/console.py, main.py).

The demo's whole console is checked in test_demo.py (it runs the demo once for every check)."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tqdm

from input_pipeline import cli

ROOT = Path(__file__).resolve().parents[1]
# absl's line format: level and date, time to microseconds, thread id, file:line].
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6}\s+\d+ \S+:\d+\]", re.M)
# Control characters other than newline and tab: carriage returns, ANSI escapes, ...
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class _Clock:
  """tqdm's clock, advanced by hand."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self) -> float:
    return self.now


@pytest.fixture
def clock(monkeypatch):
  """tqdm reads this clock, and no refresh thread runs: every line comes from an update."""
  clock = _Clock()
  monkeypatch.setattr(tqdm.std, "time", clock)
  monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
  return clock


def test_progress_off_a_terminal_prints_a_plain_line_every_interval_and_at_the_end(clock):
  out = io.StringIO()  # not a terminal
  bar = cli.progress(total=12, desc="train rhpc", unit="step", stream=out, interval=30)
  for step in range(1, 13):
    clock.now += 7.0  # 7 s a step: 84 s in all
    bar.update(1)
    bar.set_postfix_str(f"loss {10 - step}", refresh=False)  # shown with the next line only
  bar.close()
  text = out.getvalue()
  assert not CONTROL.search(text)
  # No line at 0% (the stage line says what starts); the first refresh once 30 s have passed
  # (step 5, 35 s, showing the loss set after step 4), the next 30 s after it, and the end.
  assert text.splitlines() == [
      "train rhpc: 5/12 step (42%) in 00:35, loss 6",
      "train rhpc: 10/12 step (83%) in 01:10, loss 1",
      "train rhpc: 12/12 step (100%) in 01:24, loss -2",
  ]


def test_progress_off_a_terminal_drops_a_repeated_line_and_can_be_silent(clock):
  out = io.StringIO()
  bar = cli.progress(total=2, desc="scan", unit="patient", stream=out, interval=30)
  for _ in range(2):
    clock.now += 40.0
    bar.update(1)  # past the interval each time: the last refresh is the closing line's twin
  bar.close()
  assert out.getvalue() == ("scan: 1/2 patient (50%) in 00:40\n"
                            "scan: 2/2 patient (100%) in 01:20\n")
  out = io.StringIO()
  assert list(cli.progress(iter("abc"), desc="x", stream=out, enabled=False)) == ["a", "b", "c"]
  assert out.getvalue() == ""
  out = io.StringIO()  # no total known: a count, no percentage
  list(cli.progress(iter("abc"), desc="x", unit="file", stream=out))
  assert out.getvalue() == "x: 3 file in 00:00\n"


def test_progress_off_a_terminal_keeps_its_interval_when_the_rate_drops(clock):
  """Work that slows down (fast cached patients, then slow ones) still gets its line every
  interval: the number of updates between lines does not adapt to the early rate."""
  out = io.StringIO()
  bar = cli.progress(total=110, desc="scan", unit="patient", stream=out, interval=30)
  for _ in range(100):
    clock.now += 0.5
    bar.update(1)
  for _ in range(10):
    clock.now += 20.0
    bar.update(1)
  bar.close()
  assert out.getvalue().splitlines() == [
      "scan: 60/110 patient (55%) in 00:30", "scan: 101/110 patient (92%) in 01:10",
      "scan: 103/110 patient (94%) in 01:50", "scan: 105/110 patient (95%) in 02:30",
      "scan: 107/110 patient (97%) in 03:10", "scan: 109/110 patient (99%) in 03:50",
      "scan: 110/110 patient (100%) in 04:10"]


class _Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_progress_on_a_terminal_is_tqdms_redrawn_bar():
  out = _Terminal()
  for _ in cli.progress(range(3), desc="scan", unit="patient", stream=out):
    pass
  assert "\r" in out.getvalue() and "3/3" in out.getvalue()  # redrawn in place


def _main(*args, workdir):
  return subprocess.run(
      [sys.executable, "-m", "mrp_jax.main", "--workdir", str(workdir), *args],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})


def test_library_logging_goes_to_the_log_file_unless_verbosity_is_given(tmp_path):
  config = ["--config", "configs/rhpc.py:tiny", "--config.job=describe"]
  quiet = _main(*config, workdir=tmp_path / "quiet")
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert not ABSL_LINE.search(quiet.stdout + quiet.stderr)
  assert re.search(r"^describe \[\s+\d+ s\] JAX .*: 1 cpu device", quiet.stdout, re.M)
  assert re.search(r"^describe \[\s+\d+ s\] done in \d+ s$", quiet.stdout, re.M)
  log = tmp_path / "quiet" / "logs" / "describe.log"
  assert f"  model summary: {tmp_path / 'quiet' / 'describe.json'}" in quiet.stdout
  assert f"  library log: {log}" in quiet.stdout
  logged = log.read_text()
  assert ABSL_LINE.search(logged) and "describe: logging to" in logged
  # The stage lines are logged too, naming the code that printed them.
  assert re.search(r"main\.py:\d+\] done in \d+ s", logged)

  shown = _main(*config, "-v", "0", workdir=tmp_path / "shown")
  assert shown.returncode == 0, shown.stderr[-3000:]
  on_console = ABSL_LINE.findall(shown.stderr)
  assert on_console and len(on_console) == len(
      ABSL_LINE.findall((tmp_path / "shown" / "logs" / "describe.log").read_text()))


def test_a_job_that_fails_names_its_log(tmp_path):
  failed = _main("--config", "configs/evaluate.py", "--config.evaluate.runs=x=/nonexistent",
                 f"--config.data.records={tmp_path}", workdir=tmp_path / "w")
  assert failed.returncode == 1
  log = tmp_path / "w" / "logs" / "evaluate.log"
  assert re.search(r"^evaluate: warning: stopped after \d+ s by the error below; the library "
                   rf"log: {re.escape(str(log))}$", failed.stderr, re.M)
  assert "no config.json; is this a train workdir?" in failed.stderr  # the error itself
  assert "stopped after" in log.read_text()

"""What a person sees while a job runs: stages, progress, warnings to act on, and a summary.

Library logging (absl, Orbax, Grain, JAX and our own ``absl.logging`` calls) goes to
``WORKDIR/logs/<job>.log``, not to the console; ``-v 0`` (or any ``--verbosity``) on the command
line shows it on the console again, as absl normally does. Python warnings go to the same log.
The console keeps:

* one line per stage, ``<job> [  12 s] <what>`` (:meth:`Console.stage`);
* progress bars for long stages (``input_pipeline.cli.progress``: redrawn on a terminal, a
  plain line every 30 s elsewhere);
* warnings a user must act on (:meth:`Console.warn`, also logged);
* a closing summary: what was written where and how to look at it (:meth:`Console.summary`).

main.py starts the console of the job it runs (:func:`start`); the code of a job prints through
:func:`current`, so a job run inside another (the demo trains and evaluates in-process) speaks
with the outer job's name and clock.
"""

from __future__ import annotations

import logging as std_logging
import sys
import time
from pathlib import Path
from typing import Sequence

from absl import logging


class _WarningCount(std_logging.Handler):
  """Counts the warning and error records that are not the console's own (the summary says how
  many the library log holds)."""

  def __init__(self):
    super().__init__(std_logging.WARNING)
    self.count = 0

  def emit(self, record: std_logging.LogRecord) -> None:
    if not getattr(record, "console", False):
      self.count += 1


class Console:
  """The console of one job (create it once, at the start)."""

  def __init__(self, job: str):
    self.job = job
    self.start = time.time()
    self.log_path: Path | None = None
    self._warnings = _WarningCount()
    self._file_handler: std_logging.StreamHandler | None = None  # with show=True

  def capture_library_logs(self, workdir: str | Path, show: bool = False,
                           process: int = 0) -> Path:
    """Sends every log record and Python warning to ``workdir/logs/<job>.log`` (appended; a
    resumed job continues it; process ``process`` > 0 of a multi-process job:
    ``<job>.<process>.log``), and to stderr too when ``show``; returns the file's path. Called
    again, it moves to the new file.

    Records go through absl's own handler (absl's line format, the level of ``--verbosity``):
    its stream becomes the file, or, when ``show``, a second handler with absl's formatter
    writes the file while absl keeps writing stderr.
    """
    name = self.job if process == 0 else f"{self.job}.{process}"
    path = Path(workdir) / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the process's life)
    handler = logging.get_absl_handler().python_handler
    root = std_logging.getLogger()
    if show and self._file_handler is None:
      self._file_handler = std_logging.StreamHandler(stream)
      self._file_handler.setFormatter(handler.formatter)
      root.addHandler(self._file_handler)
    elif show:
      self._file_handler.setStream(stream).close()
    else:
      previous = handler.setStream(stream)
      if self.log_path is not None:
        previous.close()
    if self._warnings not in root.handlers:
      root.addHandler(self._warnings)
    std_logging.captureWarnings(True)
    logging.info("%s: logging to %s", self.job, path)
    self.log_path = path
    return path

  def elapsed(self) -> float:
    """Seconds since the job started."""
    return time.time() - self.start

  def stage(self, text: str) -> None:
    """One line on stdout, ``<job> [  12 s] <text>`` (also logged)."""
    print(f"{self.job} [{self.elapsed():6.0f} s] {text}", flush=True)
    logging.info("%s", text)

  def warn(self, text: str) -> None:
    """A warning the user must act on: one line on stderr (also logged)."""
    print(f"{self.job}: warning: {text}", file=sys.stderr, flush=True)
    logging.warning("%s", text, extra={"console": True})

  def summary(self, lines: Sequence[str]) -> None:
    """The closing lines: outputs, how to open them, the log file."""
    self.stage(f"done in {self.elapsed():.0f} s")
    for line in lines:
      print(f"  {line}", flush=True)
    if self.log_path is not None:
      count = self._warnings.count
      print(f"  library log: {self.log_path}"
            + (f" ({count} warnings or errors in it)" if count else ""), flush=True)


# Log records of a stage or warning name the line that called it, not this module.
for _method in ("stage", "warn", "summary"):
  logging.ABSLLogger.register_frame_to_skip(__file__, _method)

_current: Console | None = None


def start(job: str) -> Console:
  """Starts the console of the job this process runs; :func:`current` returns it from now on."""
  global _current
  _current = Console(job)
  return _current


def current(job: str) -> Console:
  """The console of the running job; one named ``job`` is started when there is none (a job
  called from Python, as the tests do)."""
  return _current if _current is not None else start(job)

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
"""

from __future__ import annotations

import logging as std_logging
import sys
import time
from pathlib import Path
from typing import Sequence

from absl import logging

_ABSL_LINE = "{level}{time} {thread} {file}:{line}] {message}"


class Console:
  """The console of one job (create it once, at the start)."""

  def __init__(self, job: str):
    self.job = job
    self.start = time.time()
    self.log_path: Path | None = None

  def capture_library_logs(self, workdir: str | Path, show: bool = False) -> Path:
    """Sends every log record to ``workdir/logs/<job>.log`` (and to the console too when
    ``show``); returns the file's path."""
    path = Path(workdir) / "logs" / f"{self.job}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the process's life)
    handler = logging.get_absl_handler()
    if show:
      file_handler = std_logging.StreamHandler(stream)
      file_handler.setFormatter(handler.formatter)
      std_logging.getLogger().addHandler(file_handler)
    else:
      handler.python_handler.setStream(stream)
    std_logging.captureWarnings(True)
    logging.info("%s: logging to %s", self.job, path)
    self.log_path = path
    return path

  def stage(self, text: str) -> None:
    print(f"{self.job} [{time.time() - self.start:6.0f} s] {text}", flush=True)
    logging.info("%s", text)

  def warn(self, text: str) -> None:
    print(f"{self.job}: warning: {text}", file=sys.stderr, flush=True)
    logging.warning("%s", text)

  def summary(self, lines: Sequence[str]) -> None:
    """The closing lines: outputs, how to open them, the log file."""
    self.stage(f"done in {time.time() - self.start:.0f} s")
    for line in lines:
      print(f"  {line}", flush=True)
    if self.log_path is not None:
      print(f"  library log: {self.log_path}", flush=True)

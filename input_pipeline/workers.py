"""Process pools for per-patient work (folder scans, preprocessing, synthetic patients).

Workers are spawned, not forked (callers such as the demo hold JAX's threads, which fork can
deadlock), and end when the process that made them dies, however it dies.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

from input_pipeline import cli

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _watch_parent(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(1.0)
  os._exit(1)


def _exit_with_parent(parent: int) -> None:
  """Pool initializer: ends this worker when its parent process (pid ``parent``) dies.

  A pool worker blocks on the call queue, whose pipe it holds both ends of, so it never sees
  EOF: a parent killed without shutting its pool down (kill -9, OOM killer) would leave it idle
  forever. On Linux the kernel sends SIGTERM on the parent's death (PR_SET_PDEATHSIG). That
  fires when the parent *thread* that started the worker exits; CPython 3.11-3.13 start spawn
  workers in ``submit`` (from the caller's thread; only ``max_tasks_per_child`` replacements
  come from the pool's manager thread), so use the pool in a ``with`` block in one thread. The
  getppid check covers a parent that died before prctl ran. Elsewhere (macOS) a daemon thread
  polls getppid once a second.
  """
  armed = False
  if sys.platform.startswith("linux"):
    try:
      armed = ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
      pass
  if os.getppid() != parent:
    os._exit(1)
  if not armed:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="watch-parent").start()


def worker_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """A pool of ``workers`` spawned processes that exit when this process dies.

  spawn, not fork: callers such as the demo hold JAX's threads, which fork can deadlock. Submit
  from the thread that made the pool, inside ``with`` (see ``_exit_with_parent``).
  """
  return concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"),
      initializer=_exit_with_parent, initargs=(os.getpid(),))


def _call(fn: Callable[..., Any], args: tuple, failures: tuple[type[BaseException], ...]
          ) -> tuple[Any, str | None]:
  try:
    return fn(*args), None
  except failures as error:
    return None, str(error)


def map_patients(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int = 1,
                 failures: tuple[type[BaseException], ...] = (OSError,), progress: bool = False
                 ) -> list[tuple[Any, str | None]]:
  """``fn(*job)`` for every job, as (result, None) or (None, error message) in job order.

  Adapters give it the per-patient folder scan, which reads every DICOM header and is the slow
  part of discovery on a large export. ``workers`` > 1 runs the jobs in that many spawned
  processes (not forked: callers such as the demo hold JAX's threads); ``fn`` must then be a
  module-level function and the jobs picklable. Exceptions of the ``failures`` types become one
  patient's error; anything else propagates (a bug, not a bad patient). ``progress`` shows a
  progress bar ("scan", one step per job).
  """
  def shown(results):
    return list(cli.progress(results, total=len(jobs), desc="scan", unit="patient",
                             enabled=progress))

  if workers <= 1 or len(jobs) <= 1:
    return shown(_call(fn, tuple(job), failures) for job in jobs)
  with worker_pool(min(workers, len(jobs))) as pool:
    return shown(pool.map(_call, [fn] * len(jobs), [tuple(j) for j in jobs],
                          [failures] * len(jobs), chunksize=max(1, len(jobs) // (8 * workers))))

"""What a layout adapter finds for one patient, before any pixel is read.

Adapters (generic exports, Duke, I-SPY2) turn a source folder into :class:`PatientSource`
objects; ``prepare`` loads and preprocesses them. Source-side identifiers live here only: the
``key`` is replaced by a pseudonym before anything is written.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

from input_pipeline.schema import Phase


@dataclasses.dataclass(frozen=True)
class SeriesSelection:
  """The DICOM files of one image series, or of one phase inside a multiphase series.

  Attributes:
    files: the files of the series (any order; slices are sorted by position when loaded).
    temporal_position: for a multiphase series (all DCE phases in one series, as I-SPY2 and GE
      'MultiPhase' exports store them), keep only the slices or frames whose
      TemporalPositionIdentifier equals this; None keeps every file.
    description: SeriesDescription, for messages.
  """
  files: tuple[Path, ...]
  temporal_position: int | None = None
  description: str = ""


@dataclasses.dataclass(frozen=True)
class DicomDce:
  """One DCE-MRI exam as DICOM: the pre-contrast and the chosen post-contrast series."""
  pre: SeriesSelection
  post: SeriesSelection
  study_description: str = ""


@dataclasses.dataclass(frozen=True)
class NiftiDce:
  """One DCE-MRI exam as NIfTI: either pre and post volumes, or a ready subtraction."""
  pre: Path | None = None
  post: Path | None = None
  subtraction: Path | None = None


MriExam = Union[DicomDce, NiftiDce]


@dataclasses.dataclass(frozen=True)
class Unused:
  """An image or series that discovery found but does not use, and why.

  Attributes:
    item: what it is, named by its tags ("MG image 'R MLO' of study 'Mammo' of 20200101"); the
      manifest carries it scrubbed of dates, UIDs and ids.
    where: its file or folder (identifying: the private report only).
    reason: why it is not used.
  """
  item: str
  where: str
  reason: str


@dataclasses.dataclass
class Imaging:
  """What one patient folder holds for the models, and what it holds besides.

  Attributes:
    mri: DCE-MRI exam per phase.
    mammogram: the Pre-NAT mammogram of the tumour side, or None.
    unused: every other image or series, with its reason.
    warnings: choices made without the attribute that should decide them (a view found in no
      tag, a side chosen by rule); each also counted in the manifest.
    empty: why the folder gives no image at all (None when it gives one).
  """
  mri: dict[Phase, MriExam] = dataclasses.field(default_factory=dict)
  mammogram: Path | None = None
  unused: list[Unused] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)
  empty: str | None = None


@dataclasses.dataclass
class PatientSource:
  """Everything an adapter found for one patient.

  Attributes:
    key: the source's patient identifier (e.g. 'Breast_MRI_001'); never written to records.
    label: 1 pCR, 0 non-pCR, None unknown.
    clinical: the raw clinical row, keyed by the table's headers (parsed by mrp_jax.schema).
    mri: DCE-MRI exam per phase; absent phases are simply missing.
    mammogram: path of the Pre-NAT mammogram (DICOM), or None.
    unused, warnings, empty: as in :class:`Imaging`.
    error: set when discovery already knows the patient cannot be used (the reason is
      reported and the patient skipped; nothing is raised).
  """
  key: str
  label: int | None = None
  clinical: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  mri: dict[Phase, MriExam] = dataclasses.field(default_factory=dict)
  mammogram: Path | None = None
  unused: list[Unused] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)
  empty: str | None = None
  error: str | None = None

  def take(self, imaging: Imaging) -> None:
    """Takes what an adapter found in the patient's folder."""
    self.mri, self.mammogram = imaging.mri, imaging.mammogram
    self.unused, self.warnings, self.empty = imaging.unused, imaging.warnings, imaging.empty


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
                 failures: tuple[type[BaseException], ...] = (OSError,)
                 ) -> list[tuple[Any, str | None]]:
  """``fn(*job)`` for every job, as (result, None) or (None, error message) in job order.

  Adapters give it the per-patient folder scan, which reads every DICOM header and is the slow
  part of discovery on a large export. ``workers`` > 1 runs the jobs in that many spawned
  processes (not forked: callers such as the demo hold JAX's threads); ``fn`` must then be a
  module-level function and the jobs picklable. Exceptions of the ``failures`` types become one
  patient's error; anything else propagates (a bug, not a bad patient).
  """
  if workers <= 1 or len(jobs) <= 1:
    return [_call(fn, tuple(job), failures) for job in jobs]
  with worker_pool(min(workers, len(jobs))) as pool:
    return list(pool.map(_call, [fn] * len(jobs), [tuple(j) for j in jobs],
                         [failures] * len(jobs), chunksize=max(1, len(jobs) // (8 * workers))))

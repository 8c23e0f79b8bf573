"""The tail every layout adapter shares, once it has read its clinical rows and found the
patient folders: one PatientSource per patient key, the folder scans of the patients that the
clinical join left usable (in worker processes), and each scan's imaging or error taken into
its patient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from input_pipeline.ingestion.dce_select import DiscoveryError
from input_pipeline.ingestion.patient import Imaging, PatientSource
from input_pipeline.workers import map_patients


class FolderScan(Protocol):
  """One patient folder to scan; picklable (module-level class) for the worker processes."""

  def imaging(self) -> Imaging:
    """Raises DiscoveryError or OSError when the folder cannot give the patient's images."""


@dataclasses.dataclass
class Joined:
  """One patient after the clinical join.

  Attributes:
    source: the patient, with what the join found (clinical values, label) or its ``error``.
    scan: the scan of the patient's folder; None when the join already rules the patient out.
  """
  source: PatientSource
  scan: FolderScan | None = None

  @classmethod
  def skipped(cls, source: PatientSource, reason: str) -> Joined:
    source.error = reason
    return cls(source)


def _imaging(scan: FolderScan) -> Imaging:
  return scan.imaging()


def assemble(keys: Iterable[Any], join: Callable[[Any], Joined], *, workers: int,
             progress: bool) -> list[PatientSource]:
  """The patients of ``keys`` (sorted), each joined by ``join`` and then scanned.

  Args:
    keys: every patient key (of a clinical row or a folder).
    join: a key -> its Joined (the layout's clinical join and its skip reasons).
    workers: processes scanning patient folders (see ``workers.map_patients``).
    progress: show the scan's progress bar.

  Returns:
    The PatientSources in key order; a scan that raised DiscoveryError or OSError leaves its
    message as the patient's ``error``.
  """
  joined = [join(key) for key in sorted(keys)]
  pending = [j for j in joined if j.scan is not None]
  results = map_patients(_imaging, [(j.scan,) for j in pending], workers,
                         (DiscoveryError, OSError), progress=progress)
  for j, (imaging, error) in zip(pending, results):
    j.source.error = error
    if imaging is not None:
      j.source.take(imaging)
  return [j.source for j in joined]

"""Layout adapters: from a source folder to ``ingestion.patient.PatientSource`` objects.

Each adapter is ``discover(root, *, workers=1, progress=False, **options) ->
list[PatientSource]``; it never raises for one bad patient (the patient's ``error`` says why it
is skipped) and raises at once for a bad option or a missing table. ``workers`` > 1 scans the
patient folders (every DICOM header) in that many processes; the result is the same.
``progress`` shows the scan's progress bar.

  generic  clinical.csv + one DICOM / NIfTI folder per patient (layouts/generic.py)
  duke     Duke-Breast-Cancer-MRI as TCIA publishes it (layouts/duke.py)
  ispy2    I-SPY2 as TCIA publishes it (layouts/ispy2.py)

Each reads its clinical table and finds the patient folders, then hands its clinical join to
``assemble.assemble``, which scans the folders and gives every patient its images or its
reason to be skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from input_pipeline.ingestion.layouts import duke, generic, ispy2
from input_pipeline.ingestion.patient import PatientSource

LAYOUTS: dict[str, Callable[..., list[PatientSource]]] = {
    "generic": generic.discover,
    "duke": duke.discover,
    "ispy2": ispy2.discover,
}


def discover(layout_name: str, root: Path | str, **options: Any) -> list[PatientSource]:
  """Runs the adapter named ``layout_name`` on ``root``.

  Raises:
    ValueError: unknown layout name (the message lists the known ones).
    FileNotFoundError: ``root`` is not a folder.
  """
  adapter = LAYOUTS.get(layout_name)
  if adapter is None:
    raise ValueError(f"unknown layout {layout_name!r}; known layouts: "
                     + ", ".join(sorted(LAYOUTS)))
  if not Path(root).is_dir():
    raise FileNotFoundError(f"{root}: not a folder (the {layout_name} layout needs one)")
  return adapter(Path(root), **options)

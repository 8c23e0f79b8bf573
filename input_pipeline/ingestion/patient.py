"""What a layout adapter finds for one patient, before any pixel is read.

Adapters (generic exports, Duke, I-SPY2) turn a source folder into :class:`PatientSource`
objects; ``prepare`` loads and preprocesses them. Source-side identifiers live here only: the
``key`` is replaced by a pseudonym before anything is written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Union

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


@dataclasses.dataclass(frozen=True)
class MammogramImage:
  """One mammogram view used for the models.

  Attributes:
    path: its DICOM file.
    view: 'CC', 'MLO', another view as the file states it, or '' when nothing states it.
  """
  path: Path
  view: str


@dataclasses.dataclass
class Imaging:
  """What one patient folder holds for the models, and what it holds besides.

  Attributes:
    mri: DCE-MRI exam per phase.
    mammograms: the Pre-NAT mammogram views of the tumour side (at most one CC and one MLO,
      the preferred view first); empty without a mammogram.
    unused: every other image or series, with its reason.
    warnings: choices made without the attribute that should decide them (a view found in no
      tag, a side chosen by rule); each also counted in the manifest.
    empty: why the folder gives no image at all (None when it gives one).
  """
  mri: dict[Phase, MriExam] = dataclasses.field(default_factory=dict)
  mammograms: tuple[MammogramImage, ...] = ()
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
    mammograms: the Pre-NAT mammogram views (as in :class:`Imaging`); empty without one.
    unused, warnings, empty: as in :class:`Imaging`.
    error: set when discovery already knows the patient cannot be used (the reason is
      reported and the patient skipped; nothing is raised).
  """
  key: str
  label: int | None = None
  clinical: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  mri: dict[Phase, MriExam] = dataclasses.field(default_factory=dict)
  mammograms: tuple[MammogramImage, ...] = ()
  unused: list[Unused] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)
  empty: str | None = None
  error: str | None = None

  def take(self, imaging: Imaging) -> None:
    """Takes what an adapter found in the patient's folder."""
    self.mri, self.mammograms = imaging.mri, imaging.mammograms
    self.unused, self.warnings, self.empty = imaging.unused, imaging.warnings, imaging.empty


"""The records the evaluation's stages pass on: each label's scores, and the evaluation once
every run has predicted.

A label is a run ('rhpc', 'iMRrhpc no time'), 'MRP', a reader ('Reader A', 'Readers (mean)')
or an oracle ('oracle rhpc'): whatever gives a probability of pCR per patient.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from mrp_jax.core import inference
from mrp_jax.evaluation import calibration, cohort, ensemble
from mrp_jax.evaluation.statistics import Bootstrap  # every CI's: config.evaluate and seed

# MRP's rule applied to the oracles of its two members (predictions.add_oracle_rule).
ORACLE_RULE = "oracle MRP rule"


class Key(NamedTuple):
  """What a set of scores is: whose, on which split, at which phase."""
  label: str
  split: str
  phase: str


class Cell(NamedTuple):
  """A label at a phase of the reported split (a cell of Table 1)."""
  label: str
  phase: str


@dataclasses.dataclass(frozen=True)
class Scores:
  """Patients' pseudonyms [N], pCR labels [N] (0/1) and P(pCR) [N], aligned."""
  ids: np.ndarray
  labels: np.ndarray
  probability: np.ndarray

  def __len__(self) -> int:
    return len(self.ids)

  def where(self, keep: np.ndarray) -> Scores:
    """The patients where ``keep`` [N] is True."""
    return Scores(self.ids[keep], self.labels[keep], self.probability[keep])

  def of(self, ids: list[str]) -> np.ndarray:
    """The probabilities of ``ids``, in their order (float64)."""
    position = {patient: k for k, patient in enumerate(self.ids)}
    return np.asarray([self.probability[position[i]] for i in ids], np.float64)


def paired(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labels, a's probabilities, b's) of the patients both have, matched by pseudonym, in
  a's order."""
  row_b = {patient: k for k, patient in enumerate(b.ids)}
  pick_a = [k for k, patient in enumerate(a.ids) if patient in row_b]
  pick_b = [row_b[a.ids[k]] for k in pick_a]
  return a.labels[pick_a], a.probability[pick_a], b.probability[pick_b]


def reported_scores(scores: dict[Key, Scores], split: str,
                    reported_cohort: cohort.Cohort) -> dict[Cell, Scores]:
  """The scores of ``split`` restricted to the reported cohort."""
  return {Cell(key.label, key.phase): s.where(reported_cohort.keep(s.ids))
          for key, s in scores.items() if key.split == split}


@dataclasses.dataclass(frozen=True)
class Scored:
  """The evaluation once every run has predicted: what the measuring, explaining and writing
  stages read.

  Attributes:
    split, fit_split: the reported split; the split calibration, MRP and thresholds are fit on.
    phases: the phases evaluated.
    patients: the patient table (cohort.patient_table) of every split.
    cohort: the reported cohort (cohort.reported_cohort).
    predictions: every run's own predictions (uncalibrated), by run label, split and phase;
      with 'model' MRP inputs also MRP's own output (the combination before its Platt map).
    calibration: run label (and 'MRP' with 'model' inputs) -> phase -> its Platt map, fitted
      on the fit split.
    scores: every label's calibrated scores, by label, split and phase.
    reported: the reported split's scores of the reported cohort.
    members: model name -> the run label MRP uses (``predictions.mrp_members``).
    weights: MRP's weights; None without both fused models.
    model_labels: the runs', 'MRP' (with weights) and the oracles'; reader_labels: the
      readers' ('Readers (mean)' last).
    bootstrap: the settings of every confidence interval.
  """
  split: str
  fit_split: str
  phases: tuple[str, ...]
  patients: dict[str, dict[str, Any]]
  cohort: cohort.Cohort
  predictions: dict[Key, inference.Predictions]
  calibration: dict[str, dict[str, calibration.PlattMap]]
  scores: dict[Key, Scores]
  reported: dict[Cell, Scores]
  members: dict[str, str]
  weights: ensemble.EnsembleWeights | None
  model_labels: list[str]
  reader_labels: list[str]
  bootstrap: Bootstrap

  @property
  def oracle_labels(self) -> list[str]:
    return [label for label in self.model_labels if label.startswith("oracle ")]

  def reported_n(self, phase: str) -> int:
    """Patients reported at ``phase`` (the most any label has there)."""
    return max((len(s) for cell, s in self.reported.items() if cell.phase == phase), default=0)

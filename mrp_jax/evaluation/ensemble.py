"""The MRP ensemble: p = W1 * p(iMGrhpc) + W2 * p(iMRrhpc), weights chosen on validation.

p(iMGrhpc) and p(iMRrhpc) are the models' calibrated probabilities (calibration.py): averaging
two probabilities is only meaningful on one scale.

Objective: the mean validation AUROC over the evaluated phases (each phase counts once, as the
paper reports every phase), searched on the grid W1 in {0, 0.05, ..., 1}, W2 = 1 - W1 (a
convex combination keeps the output a probability); ties go to the weights closest to 0.5.
The weights are fitted once and fixed for the test set.

Missing modality (the paper could not run MRP on Duke, which has no mammograms): per patient,
MRP falls back to the model whose images are present; with neither image both models rely on
rhpc alone and MRP averages them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mrp_jax.evaluation import statistics


@dataclasses.dataclass(frozen=True)
class EnsembleWeights:
  w_mg: float  # W1, on iMGrhpc
  w_mr: float  # W2, on iMRrhpc
  objective: str
  validation_auroc: float
  grid_step: float

  def save(self, path: str | Path) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=1))

  @classmethod
  def load(cls, path: str | Path) -> "EnsembleWeights":
    return cls(**json.loads(Path(path).read_text()))


def case_weights(weights: EnsembleWeights, mg_present: np.ndarray,
                 mr_present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(weight on iMGrhpc [N], weight on iMRrhpc [N]) per patient: (W1, W2) with both images,
  (0, 1) with MRI only, (1, 0) with the mammogram only, (0.5, 0.5) with neither."""
  mg, mr = np.asarray(mg_present, bool), np.asarray(mr_present, bool)
  w_mg = np.where(mg & mr, weights.w_mg, np.where(mr, 0.0, np.where(mg, 1.0, 0.5)))
  return w_mg, 1.0 - w_mg


def combine(weights: EnsembleWeights, p_mg: np.ndarray, p_mr: np.ndarray,
            mg_present: np.ndarray, mr_present: np.ndarray) -> np.ndarray:
  """MRP probability [N] with the per-patient fallback for a missing modality."""
  w_mg, w_mr = case_weights(weights, mg_present, mr_present)
  return w_mg * np.asarray(p_mg, np.float64) + w_mr * np.asarray(p_mr, np.float64)


def fit(phases: Sequence[Mapping[str, np.ndarray]], grid_step: float = 0.05) -> EnsembleWeights:
  """Chooses W1 on validation.

  Args:
    phases: per phase, arrays [N] 'label', 'p_mg', 'p_mr', 'mg_present', 'mr_present'.
  """
  grid = np.round(np.arange(0.0, 1.0 + 1e-9, grid_step), 10)
  scores = []
  for w in grid:
    weights = EnsembleWeights(float(w), float(1 - w), "", np.nan, grid_step)
    aurocs = [statistics.auroc(p["label"], combine(weights, p["p_mg"], p["p_mr"],
                                                   p["mg_present"], p["mr_present"]))
              for p in phases]
    aurocs = [a for a in aurocs if np.isfinite(a)]
    scores.append(np.mean(aurocs) if aurocs else np.nan)
  scores = np.asarray(scores)
  if not np.isfinite(scores).any():
    best = int(np.argmin(np.abs(grid - 0.5)))  # no phase has both classes: equal weights
  else:
    top = np.nanmax(scores)
    candidates = np.flatnonzero(np.isclose(scores, top, rtol=0, atol=1e-12))
    best = int(candidates[np.argmin(np.abs(grid[candidates] - 0.5))])
  return EnsembleWeights(w_mg=float(grid[best]), w_mr=float(1 - grid[best]),
                         objective="mean validation AUROC over phases",
                         validation_auroc=float(scores[best]), grid_step=grid_step)

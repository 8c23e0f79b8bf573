"""The MRP ensemble: y = W1 * F1 + W2 * F2 on iMGrhpc's and iMRrhpc's probabilities, weights
chosen on validation.

What F1 and F2 are (config.evaluate.mrp_inputs, saved with the weights as ``inputs``):

* 'model' (the paper's): each model's own predicted probability, sigmoid of its logit. The
  paper combines the models' predictions with weights that give the best validation
  performance and keeps them for testing; MRP's output y is then calibrated like each model's
  (a Platt map of logit(y), fitted on the same split: predictions.add_mrp).
* 'calibrated': each model's calibrated probability (calibration.py), so that the two
  averaged numbers are on one scale; MRP's output is used as it is.

The Platt maps are strictly increasing, so calibrating after leaves MRP's AUROC as the weights
made it; calibrating before changes which weights win (a model whose probabilities all sit
near 0 counts for little in a raw average).

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

INPUTS = ("model", "calibrated")
# Before its Platt map, MRP's output y in (0, 1) is read as the logit log(y / (1 - y)), with y
# kept this far inside (0, 1): float64 probabilities of the models' float32 logits can round
# to exactly 0 or 1.
LOGIT_CLIP = 1e-12


@dataclasses.dataclass(frozen=True)
class EnsembleWeights:
  w_mg: float  # W1, on iMGrhpc
  w_mr: float  # W2, on iMRrhpc
  objective: str
  validation_auroc: float
  grid_step: float
  # What W1 and W2 combine (INPUTS); files written before the field existed were fitted on
  # calibrated probabilities.
  inputs: str = "calibrated"

  def save(self, path: str | Path) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=1))

  @classmethod
  def load(cls, path: str | Path) -> "EnsembleWeights":
    weights = cls(**json.loads(Path(path).read_text()))
    if weights.inputs not in INPUTS:
      raise ValueError(f"{path}: inputs {weights.inputs!r} is not one of {list(INPUTS)}; "
                       "rerun the evaluate job")
    return weights


def logit(probability: np.ndarray) -> np.ndarray:
  """log(y / (1 - y)) of MRP's output [N], the input of its Platt map ('model' inputs)."""
  y = np.clip(np.asarray(probability, np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
  return np.log(y) - np.log1p(-y)


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


def fit(phases: Sequence[Mapping[str, np.ndarray]], grid_step: float = 0.05,
        inputs: str = "model") -> EnsembleWeights:
  """Chooses W1 on validation.

  Args:
    phases: per phase, arrays [N] 'label', 'p_mg', 'p_mr' (the probabilities ``inputs`` says),
      'mg_present', 'mr_present'.
    inputs: what 'p_mg' and 'p_mr' are (INPUTS), recorded with the weights.
  """
  if inputs not in INPUTS:
    raise ValueError(f"ensemble inputs {inputs!r} must be one of {list(INPUTS)}")
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
                         validation_auroc=float(scores[best]), grid_step=grid_step,
                         inputs=inputs)

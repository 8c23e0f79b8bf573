"""The rhpc variables as the models see them: input columns and auxiliary targets.

Per variable, in ``schema.VARIABLES`` order, the input vector holds its one-hot (categorical),
multi-hot (therapy) or [standardised value, 0] (age) followed by an Unknown flag
(:data:`INPUT_SLICES`); the knowledge predictor's targets and masks follow
:data:`AUX_SLICES`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from input_pipeline.clinical_table import ParsedRhpc
from input_pipeline.schema import UNKNOWN, VARIABLES, AuxLoss, Kind


def _offsets(widths: Sequence[int]) -> tuple[tuple[int, int], ...]:
  bounds, start = [], 0
  for w in widths:
    bounds.append((start, start + w))
    start += w
  return tuple(bounds)


INPUT_SLICES: tuple[tuple[int, int], ...] = _offsets([v.input_dim for v in VARIABLES])
INPUT_DIM: int = INPUT_SLICES[-1][1]
AUX_SLICES: tuple[tuple[int, int], ...] = _offsets([v.aux_dim for v in VARIABLES])
AUX_DIM: int = AUX_SLICES[-1][1]


def model_inputs(parsed: ParsedRhpc) -> np.ndarray:
  """The rhpc model input, float32 [N, INPUT_DIM]: per variable its one-hot (or multi-hot, or
  [standardised value, 0]) followed by an Unknown flag."""
  n = len(parsed)
  out = np.zeros((n, INPUT_DIM), np.float32)
  rows = np.arange(n)
  for j, (var, (start, stop)) in enumerate(zip(VARIABLES, INPUT_SLICES)):
    code = parsed.codes[:, j]
    known = code != UNKNOWN
    out[~known, stop - 1] = 1.0
    if var.kind == Kind.CONTINUOUS:
      out[known, start] = (parsed.values[known, j] - var.center) / var.scale
    elif var.kind == Kind.MULTILABEL:
      bits = (code[:, None] >> np.arange(var.num_categories)) & 1
      out[:, start:stop - 1] = np.where(known[:, None], bits, 0)
    else:
      out[rows[known], start + code[known]] = 1.0
  return out


def aux_targets(parsed: ParsedRhpc) -> tuple[np.ndarray, np.ndarray]:
  """Targets and masks of the knowledge predictor, each float32 [N, AUX_DIM].

  Per variable, in its AUX_SLICES columns: CE targets are one-hot over known categories; MSE
  targets the ordinal (categorical) or standardised value (continuous) in one column; BCE
  targets one bit per label. The mask is 1 where the target is known and enters the loss.
  """
  n = len(parsed)
  targets = np.zeros((n, AUX_DIM), np.float32)
  masks = np.zeros((n, AUX_DIM), np.float32)
  rows = np.arange(n)
  for j, (var, (start, stop)) in enumerate(zip(VARIABLES, AUX_SLICES)):
    code = parsed.codes[:, j]
    known = code != UNKNOWN
    if var.aux_loss == AuxLoss.CE:
      targets[rows[known], start + code[known]] = 1.0
      masks[known, start:stop] = 1.0
    elif var.aux_loss == AuxLoss.BCE:
      bits = (code[:, None] >> np.arange(var.num_categories)) & 1
      targets[:, start:stop] = np.where(known[:, None], bits, 0)
      masks[known, start:stop] = 1.0
    elif var.kind == Kind.CONTINUOUS:
      targets[known, start] = (parsed.values[known, j] - var.center) / var.scale
      masks[known, start] = 1.0
    else:
      ordinals = np.array([np.nan if c.ordinal is None else c.ordinal for c in var.categories],
                          np.float32)
      value = np.where(known, ordinals[np.maximum(code, 0)], np.nan)
      ok = np.isfinite(value)
      targets[ok, start] = value[ok]
      masks[ok, start] = 1.0
  return targets, masks

"""The rhpc variables as the models see them: input columns and auxiliary targets.

Per variable, in ``schema.VARIABLES`` order, the input vector holds its one-hot (categorical),
multi-hot (therapy) or [standardised value, 0] (age) followed by an Unknown flag
(:data:`INPUT_SLICES`); the knowledge predictor's targets and masks follow
:data:`AUX_SLICES`. The knowledge predictor learns those targets from the image alone, so a
target must say what the image shows: :data:`UNSEEN` masks what an image cannot show and
:class:`TargetMap` moves targets with an image flip (see :data:`MRI_FLIP_TARGETS`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from input_pipeline.clinical_table import ParsedRhpc
from input_pipeline.schema import BY_NAME, UNKNOWN, VARIABLE_NAMES, VARIABLES, AuxLoss, Kind


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


# --------------------------------------------------------------------------------------------
# Targets that agree with the image
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TargetMap:
  """What a transform of the image does to the knowledge predictor's targets and masks.

  Attributes:
    matrix: float32 [AUX_DIM, AUX_DIM]; the transformed targets are ``targets @ matrix``. On a
      CE slice a 0/1 map from each category to the category the transformed image shows (a
      permutation, or several to one); identity elsewhere.
    keep: float32 [AUX_DIM]; the transformed masks are ``masks * keep`` (0 over the slice of a
      variable the transformed image cannot tell).
  """
  matrix: np.ndarray
  keep: np.ndarray


def _target_map(relabel: dict[str, dict[str, str]] | None = None,
                masked: Sequence[str] = ()) -> TargetMap:
  """A TargetMap from {variable: {category: category it becomes}} and masked variables."""
  matrix = np.eye(AUX_DIM, dtype=np.float32)
  keep = np.ones(AUX_DIM, np.float32)
  for name, moves in (relabel or {}).items():
    var, (start, _) = BY_NAME[name], AUX_SLICES[VARIABLE_NAMES.index(name)]
    assert var.aux_loss == AuxLoss.CE, name
    names = var.category_names
    for source, target in moves.items():
      matrix[start + names.index(source)] = 0.0
      matrix[start + names.index(source), start + names.index(target)] = 1.0
  for name in masked:
    start, stop = AUX_SLICES[VARIABLE_NAMES.index(name)]
    keep[start:stop] = 0.0
  return TargetMap(matrix, keep)


IDENTITY_TARGETS = _target_map()  # a transform that changes no target

# Volumes are [z, y, x] = S-I, A-P, L-R of an LPS-oriented box holding both breasts, centred on
# the body's left-right centre (input_pipeline/ingestion/mri.py). ICD-O C50 codes a breast tumour's
# quadrant in that breast's coronal plane: upper / lower is superior / inferior, inner / outer
# is medial (towards the sternum) / lateral (towards the axilla). Per flip axis:
#
# * x (L-R, the default augmentation): the mirror moves a tumour of the left breast into the
#   right breast at the same distance from the midline: the side swaps, medial stays medial,
#   so laterality swaps and the quadrant does not change. (Were the box one breast, with no
#   midline in view, the side could not be seen and the same flip would swap inner / outer
#   instead: whether inner / outer changes depends on whether the model can see the side.)
# * z (S-I): upper <-> lower (C50.2 <-> C50.3, C50.4 <-> C50.5); the axillary tail (C50.6),
#   the upper-outer extension towards the axilla, then lies lower-outer: C50.5. Central,
#   nipple, overlapping and multi-quadrant codes and the side are unchanged.
# * y (A-P): the quadrants lie in the coronal plane; nothing changes.
_UPPER_LOWER = {"C50.2": "C50.3", "C50.3": "C50.2", "C50.4": "C50.5", "C50.5": "C50.4",
                "C50.6": "C50.5"}
MRI_FLIP_TARGETS: tuple[TargetMap, TargetMap, TargetMap] = (
    _target_map({"location": _UPPER_LOWER}),
    IDENTITY_TARGETS,
    _target_map({"laterality": {"left": "right", "right": "left"}}),
)

# Mammograms are stored with the chest wall on the left (input_pipeline/ingestion/mammogram.py), so a
# left and a right breast look alike: laterality cannot be seen (UNSEEN). Columns run chest
# wall -> nipple (posterior -> anterior): a horizontal flip leaves the quadrant. Rows depend on
# the view: in a CC view (the layouts' first choice) they run lateral -> medial by the display
# convention (lateral side up), so a vertical flip swaps inner <-> outer; in an MLO view, an
# oblique projection, they run superolateral -> inferomedial, so it swaps upper-outer <->
# lower-inner and keeps the other two. The records do not say which view a mammogram is, so a
# vertically flipped mammogram's location target is masked for that draw.
MG_FLIP_TARGETS: tuple[TargetMap, TargetMap] = (
    _target_map(masked=("location",)),  # vertical (rows)
    IDENTITY_TARGETS,  # horizontal (columns)
)

# Per image key: the variables that image cannot show, masked out of its model's auxiliary loss.
UNSEEN: dict[str, tuple[str, ...]] = {"mg": ("laterality",), "mri": ()}


def unseen_keep(image_key: str | None) -> np.ndarray:
  """float32 [AUX_DIM]: 0 on the columns of the variables ``image_key``'s image cannot show."""
  return _target_map(masked=UNSEEN.get(image_key, ())).keep

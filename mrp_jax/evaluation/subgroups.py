"""Subgroup tables and disproportionality odds ratios of pCR (Woolf CI, Fisher's exact p).

Inputs as in statistics.py: ``y_true`` [N] in {0, 1} (1 = pCR), scores [N], and ``groups`` [N]
the category of each case (missing values count as 'Unknown').
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from mrp_jax.evaluation.statistics import Z95, Bootstrap, check_predictions, metric_table


def category_labels(groups: Any) -> np.ndarray:
  """Category labels [N] as str; missing values (None, NaN, pandas NA / NaT, '') become
  'Unknown'."""
  def label(value: Any) -> str:
    # By the printed form: comparing pandas NA with == raises ("boolean value of NA").
    text = str(value).strip()
    return "Unknown" if text in ("", "nan", "NaN", "None", "<NA>", "NaT") else text
  return np.asarray([label(v) for v in np.asarray(groups, dtype=object).ravel()], dtype=object)


def _most_common_first(labels: np.ndarray) -> list[str]:
  names, counts = np.unique(labels.astype(str), return_counts=True)
  return [str(names[i]) for i in sorted(range(names.size), key=lambda i: (-counts[i], names[i]))]


def subgroup_metrics(y_true: Any, score: Any, groups: Any, threshold: float,
                     bootstrap: Bootstrap = Bootstrap()) -> dict[str, dict[str, Any]]:
  """``metric_table`` per category of ``groups`` [N] (e.g. molecular subtype), most common
  first; each table carries n and n_pcr. ``bootstrap``: metric_table's settings."""
  y, s = check_predictions(y_true, score)
  labels = category_labels(groups)
  if labels.size != y.size:
    raise ValueError(f"groups has {labels.size} values for {y.size} cases")
  return {name: metric_table(y[labels == name], s[labels == name], threshold,
                            bootstrap=bootstrap)
          for name in _most_common_first(labels)}


@dataclasses.dataclass(frozen=True)
class OddsRatio:
  """Odds of pCR in one category relative to the reference category (2x2 table a b / c d:
  a, b = pCR, non-pCR in the category; c, d = pCR, non-pCR in the reference).

  odds_ratio = (a d) / (b c); ci_low / ci_high: Woolf 95% CI exp(log OR +- 1.96 SE),
  SE = sqrt(1/a + 1/b + 1/c + 1/d); haldane: a cell was 0, so 0.5 was added to all four cells for
  OR, CI and p_value_wald; p_value: Fisher's exact test, two-sided, on the uncorrected table;
  p_value_wald: the Wald z test of log OR that matches the Woolf CI. The reference category has
  OR 1 and NaN CI and p-values.
  """
  category: str
  n: int
  n_pcr: int
  pcr_rate: float
  odds_ratio: float
  ci_low: float
  ci_high: float
  p_value: float
  p_value_wald: float
  reference: str
  haldane: bool

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def odds_ratios(y_true: Any, groups: Any, *, reference: str | None = None) -> dict[str, OddsRatio]:
  """Disproportionality analysis: the odds ratio of pCR of each category of ``groups`` [N]
  against ``reference`` (default: the most common category), most common category first."""
  y, _ = check_predictions(y_true, np.zeros(np.shape(y_true)))
  labels = category_labels(groups)
  if labels.size != y.size:
    raise ValueError(f"groups has {labels.size} values for {y.size} cases")
  order = _most_common_first(labels)
  reference = order[0] if reference is None and order else reference
  if reference not in order:
    raise ValueError(f"reference category {reference!r} is not among {order}")
  c = int(y[labels == reference].sum())
  d = int((labels == reference).sum()) - c
  out = {}
  for name in order:
    a = int(y[labels == name].sum())
    b = int((labels == name).sum()) - a
    if name == reference:
      out[name] = OddsRatio(name, a + b, a, a / (a + b), 1.0, *(float("nan"),) * 4, name, False)
      continue
    table = np.array([[a, b], [c, d]], dtype=np.float64)
    haldane = bool((table == 0).any())
    cells = table + 0.5 if haldane else table  # Haldane-Anscombe: keeps OR and SE finite
    log_or = math.log(cells[0, 0] * cells[1, 1] / (cells[0, 1] * cells[1, 0]))
    se = math.sqrt((1.0 / cells).sum())
    fisher = float(scipy_stats.fisher_exact(table.astype(int)).pvalue)
    wald = float(2 * scipy_stats.norm.sf(abs(log_or) / se))
    out[name] = OddsRatio(name, a + b, a, a / (a + b), math.exp(log_or),
                          math.exp(log_or - Z95 * se), math.exp(log_or + Z95 * se), fisher,
                          wald, reference, haldane)
  return out

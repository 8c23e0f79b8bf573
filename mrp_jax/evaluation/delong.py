"""DeLong's test and CI for correlated AUROCs (fast midrank algorithm of Sun & Xu 2014).

Inputs as in statistics.py: ``y_true`` [N] in {0, 1} (1 = pCR) and scores [N] whose order is
what counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from mrp_jax.evaluation.statistics import Z95, check_predictions


@dataclasses.dataclass(frozen=True)
class DeLongTest:
  """Two correlated AUROCs on the same cases: difference = auc_a - auc_b, variance = Var(diff),
  z = difference / sqrt(variance), p_value two-sided under the standard normal."""
  auc_a: float
  auc_b: float
  difference: float
  variance: float
  covariance: float  # Cov(auc_a, auc_b)
  z: float
  p_value: float


@dataclasses.dataclass(frozen=True)
class DeLongInterval:
  """One AUROC with its DeLong variance and normal 95% CI auc +- 1.96 sqrt(var), clipped to
  [0, 1]."""
  auc: float
  variance: float
  ci_low: float
  ci_high: float
  n: int


def delong_covariance(y_true: Any, scores: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
  """AUROCs [K] of K score vectors [N] and their DeLong covariance S [K, K] (Sun & Xu 2014).

  With midranks Tz over all cases, Tx among the m pCR, Ty among the n non-pCR:
  AUC = sum(Tz[pCR]) / (m n) - (m + 1) / (2 n); placement values V10 = (Tz[pCR] - Tx) / n and
  V01 = 1 - (Tz[non-pCR] - Ty) / m; S = cov(V10) / m + cov(V01) / n (covariances with 1/(m-1),
  1/(n-1)). All NaN with fewer than 2 cases of a class.
  """
  validated = [check_predictions(y_true, row) for row in scores]
  y = validated[0][0]
  s = np.stack([row for _, row in validated]) if validated else np.zeros((0, y.size))
  m, n = int(y.sum()), int((~y).sum())
  if m < 2 or n < 2:
    return np.full(len(s), np.nan), np.full((len(s), len(s)), np.nan)
  tz = scipy_stats.rankdata(s, axis=1)
  tx, ty = scipy_stats.rankdata(s[:, y], axis=1), scipy_stats.rankdata(s[:, ~y], axis=1)
  aucs = tz[:, y].sum(1) / (m * n) - (m + 1) / (2 * n)
  v10 = (tz[:, y] - tx) / n
  v01 = 1.0 - (tz[:, ~y] - ty) / m
  return aucs, np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> DeLongTest:
  """DeLong's test of AUROC(a) = AUROC(b) for two models (or a model and a reader) on the same
  cases. A zero variance (e.g. identical scores) gives z = 0, p = 1 when the AUROCs are equal
  and z = +-inf, p = 0 otherwise; all NaN with fewer than 2 pCR or 2 non-pCR."""
  aucs, cov = delong_covariance(y_true, [score_a, score_b])
  difference = aucs[0] - aucs[1]
  variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
  if not np.isfinite(variance):
    z = p = float("nan")
  elif variance <= 0:
    z, p = (0.0, 1.0) if difference == 0 else (math.copysign(math.inf, difference), 0.0)
  else:
    z = difference / math.sqrt(variance)
    p = 2 * scipy_stats.norm.sf(abs(z))
  return DeLongTest(float(aucs[0]), float(aucs[1]), float(difference), float(variance),
                    float(cov[0, 1]), float(z), float(p))


def delong_interval(y_true: Any, score: Any) -> DeLongInterval:
  """AUROC with its DeLong variance and normal 95% CI (NaN with < 2 cases of a class)."""
  aucs, cov = delong_covariance(y_true, [score])
  half = Z95 * math.sqrt(cov[0, 0]) if np.isfinite(cov[0, 0]) else float("nan")
  return DeLongInterval(float(aucs[0]), float(cov[0, 0]), float(max(aucs[0] - half, 0.0)),
                        float(min(aucs[0] + half, 1.0)), int(np.size(y_true)))

"""Tests of mrp_jax.statistics against scikit-learn, scipy and hand / brute-force computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from numerics import gamma
from scipy import stats as scipy_stats
from sklearn import metrics as skm

from mrp_jax.evaluation import calibration, delong, subgroups
from mrp_jax.evaluation import statistics as st

UNIT_ROUNDOFF64 = float(np.finfo(np.float64).eps) / 2


def _data(seed: int, n: int = 60, decimals: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
  """Labels [n] with both classes and pCR-shifted scores, rounded so that many tie."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  y[:2] = [0, 1]
  score = np.clip(0.3 * y + rng.normal(0.4, 0.25, n), 0, 1)
  return y, (score if decimals is None else np.round(score, decimals))


# ---------------------------------------------------------------- point metrics

@pytest.mark.parametrize("seed,n,decimals", [(0, 60, 1), (1, 60, 1), (2, 25, 0), (3, 200, 2),
                                             (4, 9, 1), (5, 80, None)])
def test_auroc_and_auprc_match_scikit_learn_with_ties(seed, n, decimals):
  y, score = _data(seed, n, decimals)
  assert st.auroc(y, score) == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
  assert st.auprc_average_precision(y, score) == pytest.approx(
      skm.average_precision_score(y, score), abs=1e-12)
  precision, recall, _ = skm.precision_recall_curve(y, score)
  assert st.auprc_trapezoidal(y, score) == pytest.approx(skm.auc(recall, precision), abs=1e-12)
  # The two AUPRC definitions differ on tied data: naming them apart matters.
  if decimals is not None and decimals <= 1:
    assert st.auprc_trapezoidal(y, score) != pytest.approx(st.auprc_average_precision(y, score))


def test_curves_match_scikit_learn():
  y, score = _data(6)
  fpr, tpr, thresholds = st.roc_curve(y, score)
  ref = skm.roc_curve(y, score, drop_intermediate=False)
  for ours, theirs in zip((fpr, tpr, thresholds), ref):
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
  for ours, theirs in zip(st.pr_curve(y, score), skm.precision_recall_curve(y, score)):
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_trapezoidal_auprc_by_hand():
  # Scores 0.9 (pCR), 0.8 (non-pCR), 0.7 (pCR): PR points (recall, precision) from (0, 1):
  # (0.5, 1), (0.5, 0.5), (1, 2/3); area = 0.5 * (1 + 1) / 2 + 0 + 0.5 * (0.5 + 2/3) / 2.
  # Average precision = 0.5 * 1 + 0.5 * 2/3 (steps at recall 0.5 and 1).
  assert st.auprc_trapezoidal([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(
      0.5 + 0.5 * (0.5 + 2 / 3) / 2)
  assert st.auprc_average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
  # All three tied: one PR point (1, 2/3) from (0, 1): area (1 + 2/3) / 2; AUROC = ties 1/2.
  assert st.auprc_trapezoidal([1, 0, 1], [0.5] * 3) == pytest.approx((1 + 2 / 3) / 2)
  assert st.auroc([1, 0, 1], [0.5] * 3) == 0.5


def test_degenerate_inputs_give_nan_without_exception_or_warning():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for y, score in (([1, 1, 1], [0.1, 0.2, 0.3]), ([0, 0], [0.1, 0.2]), ([], [])):
      assert np.isnan(st.auroc(y, score))
      assert np.isnan(st.auprc_average_precision(y, score))
      assert np.isnan(st.auprc_trapezoidal(y, score))
      assert np.isnan(st.youden_threshold(y, score))
    only_pcr = st.threshold_metrics([1, 1, 1], [0.2, 0.5, 0.9], 0.5)
    assert only_pcr["sensitivity"] == pytest.approx(2 / 3) and np.isnan(only_pcr["specificity"])
    nobody_positive = st.threshold_metrics([1, 0], [0.1, 0.2], 0.5)
    assert np.isnan(nobody_positive["ppv"]) and nobody_positive["npv"] == 0.5
    at_nan = st.threshold_metrics([1, 0], [0.1, 0.9], float("nan"))
    assert all(np.isnan(at_nan[k]) for k in ("sensitivity", "specificity", "ppv", "npv"))
    table = st.metric_table([1, 1, 1], [0.2, 0.5, 0.9], 0.5, bootstrap=st.Bootstrap(50))
    assert np.isnan(table["auroc"]["value"]) and table["auroc"]["replicates_skipped"] == 50
    assert np.isnan(table["auroc"]["ci_low"]) and table["sensitivity"]["value"] == pytest.approx(
        2 / 3)
    assert np.isnan(st.metric_table([], [], 0.5, bootstrap=st.Bootstrap(10))["auroc"]["value"])
  with pytest.raises(ValueError, match="NaN"):
    st.auroc([0, 1], [0.2, float("nan")])
  with pytest.raises(ValueError, match="only 1"):
    st.auroc([0, 2], [0.2, 0.3])


def test_threshold_metrics_by_hand_and_not_swapped():
  # score >= 0.5 is pCR. TP = 3 (0.9, 0.8, 0.5), FN = 1 (0.1), FP = 2 (0.6, 0.55), TN = 4.
  # Sensitivity 3/4 differs from PPV 3/5 and specificity 4/6 from NPV 4/5: the authors' code,
  # calling confusion_matrix(pred, truth), reported them swapped.
  y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
  score = np.array([0.9, 0.8, 0.5, 0.1, 0.6, 0.55, 0.2, 0.1, 0.3, 0.4])
  assert st.threshold_metrics(y, score, 0.5) == {
      "sensitivity": 3 / 4, "specificity": 4 / 6, "ppv": 3 / 5, "npv": 4 / 5,
      "tp": 3, "fp": 2, "tn": 4, "fn": 1}
  predicted = (score >= 0.5).astype(int)
  assert st.threshold_metrics(y, score, 0.5)["sensitivity"] == skm.recall_score(y, predicted)
  assert st.threshold_metrics(y, score, 0.5)["ppv"] == skm.precision_score(y, predicted)


def test_youden_threshold_maximises_j_over_every_candidate():
  y, score = _data(7, decimals=2)
  t = st.youden_threshold(y, score)
  assert t in score
  def j(c):
    m = st.threshold_metrics(y, score, c)
    return m["sensitivity"] + m["specificity"] - 1
  assert j(t) == pytest.approx(max(j(c) for c in np.r_[np.unique(score), np.inf]))
  # Perfect separation: the threshold is the lowest pCR score (score >= t is pCR).
  assert st.youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8]) == 0.6


# ---------------------------------------------------------------- bootstrap

def test_each_vectorised_replicate_equals_scikit_learn_on_that_replicate():
  y, score = _data(8, n=40)
  indices = st.bootstrap_indices(y, 200, seed=3)
  values = st.replicate_metrics(y, score, indices, threshold=0.5)
  checked = 0
  for r in (0, 1, 17, 99, 123, 199):
    yr, sr = y[indices[r]], score[indices[r]]
    if yr.min() == yr.max():
      continue
    checked += 1
    precision, recall, _ = skm.precision_recall_curve(yr, sr)
    assert values["auroc"][r] == pytest.approx(skm.roc_auc_score(yr, sr), abs=1e-12)
    assert values["auprc_average_precision"][r] == pytest.approx(
        skm.average_precision_score(yr, sr), abs=1e-12)
    assert values["auprc_trapezoidal"][r] == pytest.approx(skm.auc(recall, precision), abs=1e-12)
    predicted = (sr >= 0.5).astype(int)
    assert values["sensitivity"][r] == pytest.approx(skm.recall_score(yr, predicted))
    assert values["ppv"][r] == pytest.approx(skm.precision_score(yr, predicted))
    assert values["specificity"][r] == pytest.approx(skm.recall_score(1 - yr, 1 - predicted))
  assert checked >= 5


def test_metric_table_reproducible_and_cis_cover_the_estimate():
  y, score = _data(9, n=120, decimals=2)
  table = st.metric_table(y, score, 0.5, bootstrap=st.Bootstrap(1000, seed=0))
  assert table == st.metric_table(y, score, 0.5, bootstrap=st.Bootstrap(1000, seed=0))
  other = st.metric_table(y, score, 0.5, bootstrap=st.Bootstrap(1000, seed=1))
  assert table["auroc"] != other["auroc"]
  for metric in st.METRICS:
    entry = table[metric]
    assert entry["ci_low"] < entry["value"] < entry["ci_high"], metric
    assert entry["n"] == 120 and entry["replicates_used"] == 1000
  assert table["auroc"]["value"] == pytest.approx(skm.roc_auc_score(y, score))
  assert (table["n"], table["n_pcr"], table["n_non_pcr"]) == (120, y.sum(), 120 - y.sum())
  assert sum(table["confusion"].values()) == 120
  # The percentile interval of the replicate AUROCs, recomputed here from the same draws.
  aurocs = st.replicate_metrics(y, score, st.bootstrap_indices(y, 1000, seed=0))["auroc"]
  assert table["auroc"]["ci_low"] == pytest.approx(np.percentile(aurocs, 2.5))
  estimate = st.bootstrap_ci(y, score, "auroc", bootstrap=st.Bootstrap(1000, seed=0))
  assert estimate.as_dict() == table["auroc"]


def test_paired_difference_resamples_both_scores_together():
  y, a = _data(11, n=80, decimals=2)
  rng = np.random.default_rng(0)
  b = np.clip(a + rng.normal(0, 0.15, a.size), 0, 1)  # a noisier copy of a: correlated
  estimate = st.paired_difference(y, a, b, bootstrap=st.Bootstrap(400, seed=5))
  assert estimate.value == pytest.approx(skm.roc_auc_score(y, a) - skm.roc_auc_score(y, b))
  # Brute force: the same resamples (bootstrap_indices with the seed), scikit-learn per row.
  brute = []
  for row in st.bootstrap_indices(y, 400, seed=5):
    if y[row].min() != y[row].max():
      brute.append(skm.roc_auc_score(y[row], a[row]) - skm.roc_auc_score(y[row], b[row]))
  assert estimate.replicates_used == len(brute)
  assert (estimate.ci_low, estimate.ci_high) == pytest.approx(tuple(np.percentile(brute,
                                                                                  [2.5, 97.5])))
  # Pairing matters: the CI of the difference is narrower than either model's own CI.
  own = st.bootstrap_ci(y, a, bootstrap=st.Bootstrap(400, seed=5))
  assert estimate.ci_high - estimate.ci_low < own.ci_high - own.ci_low
  same = st.paired_difference(y, a, a, bootstrap=st.Bootstrap(50))
  assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
  with pytest.raises(ValueError, match="threshold-free"):
    st.paired_difference(y, a, b, "sensitivity")


def test_stratified_bootstrap_keeps_class_counts():
  y, score = _data(10, n=30)
  indices = st.bootstrap_indices(y, 300, seed=0, stratified=True)
  assert indices.shape == (300, 30)
  assert (y[indices].sum(axis=1) == y.sum()).all()
  assert len(np.unique(indices)) > 25  # still resampling, not copying
  table = st.metric_table(y, score, 0.5, bootstrap=st.Bootstrap(300, stratified=True))
  assert table["bootstrap"]["one_class_replicates"] == 0


def test_one_class_replicates_are_skipped_and_counted():
  # One pCR among 10: a replicate lacks it with probability 0.9^10 = 0.35 and is one-class.
  y = np.array([1] + [0] * 9)
  score = np.linspace(0, 1, 10)[::-1]
  indices = st.bootstrap_indices(y, 1000, seed=0)
  expected = int((~(indices == 0).any(axis=1)).sum())
  assert 300 < expected < 400
  table = st.metric_table(y, score, 0.5, bootstrap=st.Bootstrap(1000, seed=0))
  assert table["bootstrap"]["one_class_replicates"] == expected
  for metric in ("auroc", "auprc_average_precision", "auprc_trapezoidal", "sensitivity"):
    assert table[metric]["replicates_skipped"] == expected, metric
    assert table[metric]["replicates_used"] == 1000 - expected
  assert table["specificity"]["replicates_skipped"] == 0  # non-pCR are always drawn
  assert np.isfinite(table["auroc"]["ci_low"])
  # The min_valid guard: demanding more usable replicates than there are gives no interval.
  guarded = st.metric_table(y, score, 0.5, bootstrap=st.Bootstrap(
      1000, seed=0, min_valid=1000 - expected + 1))
  assert np.isnan(guarded["auroc"]["ci_low"]) and np.isfinite(guarded["specificity"]["ci_low"])
  assert guarded["auroc"]["value"] == table["auroc"]["value"] == 1.0


# ---------------------------------------------------------------- DeLong

def _delong_brute_force(y, scores):
  """O(m n) DeLong et al. (1988) from the kernel psi and placement values, written out."""
  pos, neg = y == 1, y == 0
  m, n = pos.sum(), neg.sum()
  aucs, v10, v01 = [], [], []
  for s in scores:
    psi = np.array([[1.0 if a > b else 0.5 if a == b else 0.0 for b in s[neg]] for a in s[pos]])
    aucs.append(psi.mean())
    v10.append(psi.mean(axis=1))  # [m] each pCR case vs all non-pCR
    v01.append(psi.mean(axis=0))  # [n] each non-pCR case vs all pCR
  k = len(scores)
  s10 = np.array([[np.sum((v10[i] - aucs[i]) * (v10[j] - aucs[j])) / (m - 1) for j in range(k)]
                  for i in range(k)])
  s01 = np.array([[np.sum((v01[i] - aucs[i]) * (v01[j] - aucs[j])) / (n - 1) for j in range(k)]
                  for i in range(k)])
  return np.array(aucs), s10 / m + s01 / n


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_brute_force_with_ties(seed):
  y, a = _data(seed, n=50 + 10 * seed)
  rng = np.random.default_rng(seed + 10)
  b = np.round(np.clip(a + rng.normal(0, 0.2, a.size), 0, 1), 1)
  result = delong.delong_test(y, a, b)
  aucs, cov = _delong_brute_force(y, [a, b])
  variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
  z = (aucs[0] - aucs[1]) / np.sqrt(variance)
  assert (result.auc_a, result.auc_b) == pytest.approx(tuple(aucs), abs=1e-12)
  assert result.auc_a == pytest.approx(st.auroc(y, a), abs=1e-12)
  assert result.variance == pytest.approx(variance, abs=1e-10)
  assert result.covariance == pytest.approx(cov[0, 1], abs=1e-10)
  assert result.z == pytest.approx(z, abs=1e-8)
  assert result.p_value == pytest.approx(2 * scipy_stats.norm.sf(abs(z)), abs=1e-10)
  interval = delong.delong_interval(y, a)
  assert interval.variance == pytest.approx(cov[0, 0], abs=1e-10)
  half = 1.959963984540054 * np.sqrt(cov[0, 0])
  assert (interval.ci_low, interval.ci_high) == pytest.approx(
      (aucs[0] - half, min(aucs[0] + half, 1.0)), abs=1e-10)


def test_delong_identical_scores_give_p_one_and_separation_is_significant():
  y, a = _data(11)
  same = delong.delong_test(y, a, a)
  assert (same.difference, same.z, same.p_value) == (0.0, 0.0, 1.0)
  rng = np.random.default_rng(0)
  y = np.r_[np.ones(60), np.zeros(60)].astype(int)
  good = y + rng.normal(0, 0.5, 120)
  useless = rng.normal(0, 1, 120)
  assert delong.delong_test(y, good, useless).p_value < 1e-6
  assert np.isnan(delong.delong_test([1, 0, 0], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3]).p_value)


# ---------------------------------------------------------------- subgroups, odds ratios

def test_odds_ratios_by_hand_and_fisher():
  groups = ["ER+/HER2-"] * 50 + ["ER-/HER2+"] * 20 + ["TNBC"] * 10 + ["lobular"] * 5 + [None] * 4
  y = [1] * 5 + [0] * 45 + [1] * 12 + [0] * 8 + [1] * 5 + [0] * 5 + [0] * 5 + [1, 0, 0, 0]
  table = subgroups.odds_ratios(y, groups)
  assert list(table) == ["ER+/HER2-", "ER-/HER2+", "TNBC", "lobular", "Unknown"]
  reference = table["ER+/HER2-"]
  assert reference.odds_ratio == 1.0 and np.isnan(reference.p_value) and reference.n_pcr == 5
  # ER-/HER2+ vs ER+/HER2-: a, b = 12, 8; c, d = 5, 45. OR = (12 * 45) / (8 * 5) = 13.5.
  her2 = table["ER-/HER2+"]
  assert her2.reference == "ER+/HER2-" and not her2.haldane
  assert her2.odds_ratio == pytest.approx(13.5)
  se = np.sqrt(1 / 12 + 1 / 8 + 1 / 5 + 1 / 45)
  assert (her2.ci_low, her2.ci_high) == pytest.approx(
      (np.exp(np.log(13.5) - 1.959964 * se), np.exp(np.log(13.5) + 1.959964 * se)), rel=1e-6)
  assert her2.p_value == pytest.approx(scipy_stats.fisher_exact([[12, 8], [5, 45]]).pvalue)
  assert her2.p_value_wald == pytest.approx(2 * scipy_stats.norm.sf(np.log(13.5) / se))
  assert her2.pcr_rate == 0.6 and her2.n == 20
  # No pCR among lobular: Haldane-corrected OR (0.5 * 45.5) / (5.5 * 5.5); Fisher uncorrected.
  lobular = table["lobular"]
  assert lobular.haldane and lobular.odds_ratio == pytest.approx(0.5 * 45.5 / (5.5 * 5.5))
  assert lobular.p_value == pytest.approx(scipy_stats.fisher_exact([[0, 5], [5, 45]]).pvalue)
  # Another reference flips the ratio.
  flipped = subgroups.odds_ratios(y, groups, reference="ER-/HER2+")["ER+/HER2-"]
  assert flipped.odds_ratio == pytest.approx(1 / 13.5)
  with pytest.raises(ValueError, match="not among"):
    subgroups.odds_ratios(y, groups, reference="HR+")


def test_subgroup_metrics_equal_the_metrics_of_each_subset():
  y, score = _data(12, n=90, decimals=2)
  groups = np.array(["luminal"] * 50 + ["her2"] * 30 + ["tnbc"] * 10, dtype=object)
  groups[-2:] = np.nan  # missing becomes Unknown
  table = subgroups.subgroup_metrics(y, score, groups, 0.5, bootstrap=st.Bootstrap(200, seed=0))
  assert list(table) == ["luminal", "her2", "tnbc", "Unknown"]
  her2 = slice(50, 80)
  assert table["her2"]["n"] == 30 and table["her2"]["n_pcr"] == int(y[her2].sum())
  assert table["her2"]["auroc"]["value"] == pytest.approx(skm.roc_auc_score(y[her2], score[her2]))
  assert table["her2"] == st.metric_table(y[her2], score[her2], 0.5,
                                          bootstrap=st.Bootstrap(200, seed=0))
  assert table["Unknown"]["n"] == 2


def test_metric_table_auprc_is_the_average_precision():
  y, score = _data(13)
  table = st.metric_table(y, score, 0.5, bootstrap=st.Bootstrap(100, seed=0))
  assert table["auprc"] == table["auprc_average_precision"]
  assert table["auprc"]["value"] == pytest.approx(skm.average_precision_score(y, score))


def test_missing_categories_include_pandas_na():
  pandas = pytest.importorskip("pandas")
  labels = subgroups.category_labels(pandas.Series(["a", None, pandas.NA, np.nan, " ", "b"],
                                            dtype=object))
  assert labels.tolist() == ["a", "Unknown", "Unknown", "Unknown", "Unknown", "b"]


# ---------------------------------------------------------------- curve bands

def _roc_brute_force(y, score, x):
  """Highest TPR of the ROC polyline (scikit-learn's points joined by segments) at FPR x."""
  fpr, tpr, _ = skm.roc_curve(y, score, drop_intermediate=False)
  best = tpr[fpr <= x + 1e-12].max()
  for f0, t0, f1, t1 in zip(fpr[:-1], tpr[:-1], fpr[1:], tpr[1:]):
    if f0 <= x < f1:
      best = max(best, t0 + (x - f0) / (f1 - f0) * (t1 - t0))
  return best


def _pr_brute_force(y, score, r):
  """Precision at the highest threshold whose recall reaches r (the average-precision steps)."""
  precision, recall, _ = skm.precision_recall_curve(y, score)
  return precision[np.flatnonzero(recall[:-1] >= r - 1e-12).max()]


def test_curve_bands_follow_the_curves_of_data_and_replicates():
  y, score = _data(14, n=40)
  roc = st.roc_band(y, score, grid_points=21, bootstrap=st.Bootstrap(40, seed=0))
  pr = st.pr_band(y, score, grid_points=21, bootstrap=st.Bootstrap(40, seed=0))
  for g, x in enumerate(roc.grid):
    assert roc.value[g] == pytest.approx(_roc_brute_force(y, score, x), abs=1e-12)
    assert pr.value[g] == pytest.approx(_pr_brute_force(y, score, x), abs=1e-12)
  # Each replicate's curve is the curve of the resampled cohort.
  index = st.bootstrap_indices(y, 40, seed=0)
  tpr = np.stack([[_roc_brute_force(y[i], score[i], x) for x in roc.grid] for i in index])
  precision = np.stack([[_pr_brute_force(y[i], score[i], x) for x in pr.grid] for i in index])
  np.testing.assert_allclose(roc.low, np.percentile(tpr, 2.5, axis=0), atol=1e-12)
  np.testing.assert_allclose(pr.high, np.percentile(precision, 97.5, axis=0), atol=1e-12)
  assert roc.replicates_used == pr.replicates_used == 40
  # The step curve integrates to the average precision.
  fine = st.pr_band(y, score, grid_points=2001, bootstrap=st.Bootstrap(1))
  assert np.trapezoid(fine.value, fine.grid) == pytest.approx(
      st.auprc_average_precision(y, score), abs=2e-3)


def test_curve_bands_skip_one_class_replicates():
  y = np.array([1] + [0] * 9)
  band = st.roc_band(y, np.linspace(0, 1, 10), grid_points=11, bootstrap=st.Bootstrap(1000, seed=0))
  no_pcr = int((y[st.bootstrap_indices(y, 1000, seed=0)].sum(1) == 0).sum())
  assert (band.replicates_skipped, band.replicates_used) == (no_pcr, 1000 - no_pcr)
  assert np.isnan(st.pr_band([1, 1], [0.2, 0.4], bootstrap=st.Bootstrap(10)).value).all()


# ---------------------------------------------------------------- calibration

# Two float64 means of n terms in [0, 1], summed in different orders (numpy's pairwise sum, a
# matrix product, scikit-learn): each within gamma_n of the exact mean (Higham).
def _mean_tolerance(n: int) -> float:
  return 2 * gamma(n, UNIT_ROUNDOFF64)


def test_brier_score_matches_scikit_learn_and_its_replicates():
  y, p = _data(21, n=70, decimals=None)
  estimate = st.brier_score(y, p, bootstrap=st.Bootstrap(200, seed=3))
  assert estimate.value == pytest.approx(skm.brier_score_loss(y, p), abs=_mean_tolerance(70))
  loop = [skm.brier_score_loss(y[i], p[i]) for i in st.bootstrap_indices(y, 200, seed=3)]
  assert (estimate.ci_low, estimate.ci_high) == pytest.approx(
      tuple(np.percentile(loop, (2.5, 97.5))), abs=_mean_tolerance(70))
  # A constant prediction at the prevalence q scores q (1 - q).
  q = y.mean()
  constant = st.brier_score(y, np.full(y.size, q), bootstrap=st.Bootstrap(0))
  assert constant.value == pytest.approx(q * (1 - q))
  with pytest.raises(ValueError, match="probabilities"):
    st.brier_score(y, p + 1.0)


def test_calibration_curve_matches_scikit_learn_and_its_replicates():
  from sklearn.calibration import calibration_curve
  y, p = _data(22, n=120, decimals=None)  # continuous: no probability on a bin edge
  curve = calibration.calibration_curve(y, p, bins=10, bootstrap=st.Bootstrap(100, seed=1))
  observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
  filled = curve.count > 0
  tolerance = _mean_tolerance(120)
  np.testing.assert_allclose(curve.observed[filled], observed, atol=tolerance)
  np.testing.assert_allclose(curve.predicted[filled], predicted, atol=tolerance)
  assert np.isnan(curve.observed[~filled]).all() and curve.count.sum() == y.size
  # The band is the percentiles of each resampled cohort's observed share, per bin.
  shares = []
  for i in st.bootstrap_indices(y, 100, seed=1):
    bins = np.clip(np.searchsorted(curve.edges, p[i], side="right") - 1, 0, 9)
    shares.append([y[i][bins == b].mean() if (bins == b).any() else np.nan
                   for b in range(10)])
  shares = np.asarray(shares)
  dense = np.isfinite(shares).sum(0) >= 50
  np.testing.assert_allclose(curve.low[dense], np.nanpercentile(shares, 2.5, axis=0)[dense],
                             atol=tolerance)
  np.testing.assert_allclose(curve.high[dense], np.nanpercentile(shares, 97.5, axis=0)[dense],
                             atol=tolerance)
  assert np.isnan(curve.low[~dense]).all()

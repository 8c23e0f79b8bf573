"""Tests of mrp_jax.decision_curves: hand arithmetic, dcurves' own numbers, bootstrap bands, the
paper's operating points and trade-off curves."""

from __future__ import annotations

import numpy as np
import pytest

from mrp_jax.evaluation import decision_curves as dc
from mrp_jax.evaluation import statistics as st

# 20 cases, 7 pCR. pCR scores: .92 .81 .40 .64 .12 .88 .35; non-pCR: .75 .33 .18 .09 .52 .27 .05
# .44 .61 .22 .07 .30 .15.
Y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0])
P = np.array([.92, .81, .40, .75, .33, .18, .09, .52, .64, .27, .05, .12, .44, .61, .22, .88, .07,
              .30, .35, .15])
THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7]
# dcurves 1.1.7: dca(data=DataFrame(event=..., risk=...), outcome="event", modelnames=["risk"],
# thresholds=THRESHOLDS, nper=1000) with (event, risk) from dc.event_and_risk(Y, P, direction);
# rows of model "risk" (net_benefit, net_intervention_avoided) and model "all" (net_benefit).
DCURVES = {
    "surgery": dict(
        net_benefit=[0.3157894736842105, 0.2944444444444444, 0.2, 0.1714285714285714, 0.05,
                     0.03333333333333334],
        treat_all=[0.3157894736842105, 0.2777777777777778, 0.1875, 0.0714285714285714, -0.3,
                   -1.1666666666666665],
        net_interventions_avoided=[0.0, 150.0, 50.0, 233.33333333333334, 350.0,
                                   514.2857142857143]),
    "therapy": dict(
        net_benefit=[0.631578947368421, 0.6166666666666667, 0.6, 0.5142857142857143, 0.35,
                     0.2833333333333334],
        treat_all=[0.631578947368421, 0.6111111111111112, 0.5625, 0.5, 0.3,
                   -0.16666666666666652],
        net_interventions_avoided=[0.0, 50.0, 150.0, 33.33333333333333, 50.0,
                                   192.85714285714283]),
}


def test_net_benefit_by_hand_in_both_directions():
  # Surgery (event pCR, risk p), t = 0.3, odds 3/7: positive p >= 0.3. TP = 6 (all pCR but .12),
  # FP = 6 (.75 .33 .52 .44 .61 .30). NB = 6/20 - 3/7 * 6/20 = 0.171429.
  # Treat all: prevalence 7/20: 0.35 - 3/7 * 0.65 = 0.071429.
  # Avoided per 1000: (0.171429 - 0.071429) / (3/7) * 1000 = 233.33.
  surgery = dc.decision_curve(Y, P, "surgery", [0.3], per=1000)
  assert surgery.net_benefit[0] == pytest.approx(1000 * (6 / 20 - 3 / 7 * 6 / 20))
  assert surgery.treat_all[0] == pytest.approx(1000 * (0.35 - 3 / 7 * 0.65))
  assert surgery.net_interventions_avoided[0] == pytest.approx(1000 * 0.1 / (3 / 7))
  assert surgery.treat_none[0] == 0 and surgery.prevalence == 0.35 and surgery.per == 1000
  # Therapy (event non-pCR, risk 1 - p), t = 0.2, odds 1/4: positive 1 - p >= 0.2, i.e. every
  # case but .92 .81 .88 (all pCR). TP = 13 (every non-pCR), FP = 4 (pCR .40 .64 .12 .35).
  # NB = 13/20 - 1/4 * 4/20 = 0.6; treat all = 0.65 - 1/4 * 0.35 = 0.5625;
  # avoided per 100: (0.6 - 0.5625) / (1/4) * 100 = 15.
  therapy = dc.decision_curve(Y, P, "therapy", [0.2], per=100)
  assert therapy.net_benefit[0] == pytest.approx(100 * 0.6)
  assert therapy.treat_all[0] == pytest.approx(100 * 0.5625)
  assert therapy.net_interventions_avoided[0] == pytest.approx(15.0)
  assert therapy.prevalence == 0.65


def test_equation_1_by_hand_and_the_same_for_either_event():
  # The paper's Eq. (1): (TP - FP)/N - (FN - TN)/N. Surgery, t = 0.3 (see above): TP 6, FP 6,
  # FN 1 (pCR .12), TN 7: (0 - (1 - 7)) / 20 = 0.3. Therapy, t = 0.2: TP 13, FP 4, FN 0,
  # TN 3 (pCR .92 .81 .88): (9 + 3) / 20 = 0.6.
  surgery = dc.decision_curve(Y, P, "surgery", [0.3], per=1000)
  assert surgery.net_reduction_in_interventions[0] == pytest.approx(300.0)
  therapy = dc.decision_curve(Y, P, "therapy", [0.2], per=100)
  assert therapy.net_reduction_in_interventions[0] == pytest.approx(60.0)
  # (correct - wrong) / N: predicting non-pCR below 1 - t is predicting pCR above it.
  t = np.asarray([0.13, 0.37, 0.71])  # no score equals 1 - t
  np.testing.assert_allclose(
      dc.decision_curve(Y, P, "therapy", t).net_reduction_in_interventions,
      dc.decision_curve(Y, P, "surgery", 1 - t).net_reduction_in_interventions, atol=1e-12)
  # Not dcurves' net interventions avoided (150 per 1000 at t = 0.1, surgery; Eq. (1): 0).
  curve = dc.decision_curve(Y, P, "surgery", [0.1], per=1000)
  assert curve.net_interventions_avoided[0] == pytest.approx(150.0)
  assert curve.net_reduction_in_interventions[0] == pytest.approx(1000 * (7 - 10 - (0 - 3)) / 20)


@pytest.mark.parametrize("direction", dc.DIRECTIONS)
def test_matches_numbers_from_dcurves(direction):
  curve = dc.decision_curve(Y, P, direction, THRESHOLDS)
  expected = DCURVES[direction]
  np.testing.assert_allclose(curve.net_benefit, expected["net_benefit"], atol=1e-12)
  np.testing.assert_allclose(curve.treat_all, expected["treat_all"], atol=1e-12)
  # dcurves scales only net_intervention_avoided by nper (1000 above); ours scales every curve.
  np.testing.assert_allclose(curve.net_interventions_avoided * 1000,
                             expected["net_interventions_avoided"], atol=1e-9)


def test_matches_dcurves_live_when_installed():
  dcurves = pytest.importorskip("dcurves")
  pandas = pytest.importorskip("pandas")
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 150)
  p = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.25, 150), 0, 1), 2)
  thresholds = [i / 100 for i in range(1, 100)]
  for direction in dc.DIRECTIONS:
    event, risk = dc.event_and_risk(y, p, direction)
    ref = dcurves.dca(data=pandas.DataFrame({"event": event.astype(int), "risk": risk}),
                      outcome="event", modelnames=["risk"], thresholds=thresholds)
    ours = dc.decision_curve(y, p, direction, thresholds)
    model = ref[ref.model == "risk"]
    np.testing.assert_allclose(ours.net_benefit, model.net_benefit, atol=1e-12)
    np.testing.assert_allclose(ours.net_interventions_avoided, model.net_intervention_avoided,
                               atol=1e-12)
    np.testing.assert_allclose(ours.treat_all, ref[ref.model == "all"].net_benefit, atol=1e-12)


def test_bootstrap_bands_equal_a_loop_over_resampled_cohorts():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 80)
  p = np.clip(0.35 * y + rng.normal(0.3, 0.2, 80), 0.001, 0.999)
  thresholds = [0.1, 0.2, 0.3, 0.4]
  curve = dc.decision_curve(y, p, "therapy", thresholds, per=1000,
                            bootstrap=st.Bootstrap(200, seed=5))
  indices = st.bootstrap_indices(y, 200, seed=5)
  loop = np.stack([dc.decision_curve(y[i], p[i], "therapy", thresholds,
                                     per=1000).net_interventions_avoided for i in indices])
  low, high = curve.bands["net_interventions_avoided"]
  np.testing.assert_allclose(low, np.percentile(loop, 2.5, axis=0), atol=1e-9)
  np.testing.assert_allclose(high, np.percentile(loop, 97.5, axis=0), atol=1e-9)
  loop = np.stack([dc.decision_curve(y[i], p[i], "therapy", thresholds,
                                     per=1000).net_reduction_in_interventions for i in indices])
  low, high = curve.bands["net_reduction_in_interventions"]
  np.testing.assert_allclose(low, np.percentile(loop, 2.5, axis=0), atol=1e-9)
  np.testing.assert_allclose(high, np.percentile(loop, 97.5, axis=0), atol=1e-9)
  low, high = curve.bands["net_benefit"]
  assert ((low <= curve.net_benefit) & (curve.net_benefit <= high)).all()
  again = dc.decision_curve(y, p, "therapy", thresholds, per=1000,
                            bootstrap=st.Bootstrap(200, seed=5))
  assert again.as_dict() == curve.as_dict()
  assert set(curve.as_dict()) >= {"net_benefit_low", "treat_all_high", "thresholds"}


def test_thresholds_zero_and_one_are_excluded():
  for bad in ([0.0, 0.5], [0.5, 1.0], []):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
      dc.decision_curve(Y, P, "surgery", bad)
  with pytest.raises(ValueError, match="direction"):
    dc.decision_curve(Y, P, "radiotherapy")
  assert dc.DEFAULT_THRESHOLDS.min() == 0.01 and dc.DEFAULT_THRESHOLDS.max() == 0.99


def test_operating_points_on_a_constructed_example():
  # pCR scores .9 .6 .5, non-pCR .6 .5 .3 .1 (ties with pCR at .6 and .5).
  y = np.array([1, 1, 1, 0, 0, 0, 0])
  p = np.array([0.9, 0.6, 0.5, 0.6, 0.5, 0.3, 0.1])
  therapy = dc.operating_point(y, p, "therapy")
  # Predict non-pCR below the lowest pCR score .5: non-pCR .3 and .1, i.e. 2 of 4, no pCR missed
  # (the non-pCR tied at .5 stays predicted pCR).
  assert therapy.as_dict() == dict(direction="therapy", threshold=0.5, identified=2, of=4,
                                   fraction=0.5, tp=3, fp=2, tn=2, fn=0)
  # Predict pCR above the highest non-pCR score .6: only .9 (the pCR tied at .6 is not), 1 of 3.
  surgery = dc.operating_point(y, p, "surgery")
  assert surgery.as_dict() == dict(direction="surgery", threshold=0.9, identified=1, of=3,
                                   fraction=pytest.approx(1 / 3), tp=1, fp=0, tn=4, fn=2)
  # A non-pCR scored above every pCR: no pCR can be identified without a false pCR.
  none = dc.operating_points([1, 0, 0], [0.5, 0.7, 0.1])["surgery"]
  assert (none.threshold, none.identified, none.fraction, none.fp) == (np.inf, 0, 0.0, 0)


def test_tradeoff_curve_by_hand_and_consistent_with_the_operating_points():
  y = np.array([1, 1, 1, 0, 0, 0, 0])
  p = np.array([0.9, 0.6, 0.5, 0.6, 0.5, 0.3, 0.1])
  # t = 0.55: predicted non-pCR (p < .55): pCR .5 -> 1 missed; non-pCR .5 .3 .1 -> 3 of 4.
  therapy = dc.tradeoff_curve(y, p, "therapy", thresholds=[0.55])
  assert (therapy["identified"][0], therapy["missed"][0]) == (3, 1)
  assert therapy["identified_fraction"][0] == 0.75 and therapy["missed_fraction"][0] == 1 / 3
  # t = 0.55 for surgery: predicted pCR .9 .6 (pCR) and .6 (non-pCR): 2 identified, 1 missed.
  surgery = dc.tradeoff_curve(y, p, "surgery", thresholds=[0.55])
  assert (surgery["identified"][0], surgery["missed"][0]) == (2, 1)
  rng = np.random.default_rng(2)
  y = rng.integers(0, 2, 100)
  p = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.2, 100), 0, 1), 2)
  for direction in dc.DIRECTIONS:
    curve = dc.tradeoff_curve(y, p, direction)
    assert curve["thresholds"][-1] == np.inf and (np.diff(curve["thresholds"]) > 0).all()
    best = curve["identified"][curve["missed"] == 0].max()
    assert dc.operating_point(y, p, direction).identified == best

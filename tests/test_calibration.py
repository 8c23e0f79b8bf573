"""Platt scaling: recovers a known map, keeps every AUROC, stays finite and increasing."""

import numpy as np
import pytest
from scipy import special

from mrp_jax.evaluation import calibration, statistics


def _logistic_sample(n: int, slope: float, intercept: float, seed: int):
  rng = np.random.default_rng(seed)
  z = rng.normal(-3.0, 2.0, n)  # a model whose logits are shifted: most patients near 0
  y = rng.random(n) < special.expit(slope * z + intercept)
  return y, z


def test_recovers_the_map_that_made_the_labels():
  slope, intercept, n = 0.6, 1.8, 20_000
  y, z = _logistic_sample(n, slope, intercept, seed=0)
  fitted = calibration.fit_platt(y, z)
  # Standard errors from the Fisher information of the logistic model at the truth; Platt's
  # smoothed targets move the optimum by O(1/n), far less.
  p = special.expit(slope * z + intercept)
  design = np.stack([z, np.ones(n)], axis=1)
  covariance = np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]))
  errors = np.sqrt(np.diag(covariance))
  assert abs(fitted.slope - slope) < 4 * errors[0]
  assert abs(fitted.intercept - intercept) < 4 * errors[1]
  assert (fitted.n, fitted.n_pcr, fitted.at_bound) == (n, int(y.sum()), False)
  # The maximum: the score (gradient of the log-likelihood with Platt's targets) vanishes.
  target = np.where(y, (y.sum() + 1) / (y.sum() + 2), 1 / ((~y).sum() + 2))
  residual = fitted(z) - target
  assert abs(residual @ z) <= calibration.GRADIENT_TOLERANCE * n
  assert abs(residual.sum()) <= calibration.GRADIENT_TOLERANCE * n
  # Calibrated: the mean risk is the pCR rate (up to Platt's smoothing of the targets).
  # Targets sum to within 2 of the pCR count; the intercept's score is ~0.
  assert fitted(z).mean() == pytest.approx(y.mean(), abs=2 / n + calibration.GRADIENT_TOLERANCE)


def test_calibration_keeps_the_auroc_and_the_order():
  y, z = _logistic_sample(300, 0.5, 0.5, seed=1)
  fitted = calibration.fit_platt(y, z)
  calibrated = fitted(z)
  assert statistics.auroc(y, calibrated) == statistics.auroc(y, z)
  order = np.argsort(z, kind="stable")
  assert (np.diff(calibrated[order]) >= 0).all()
  # A model that ranks the fit split backwards keeps its ranking: the slope stops at the bound.
  backwards = calibration.fit_platt(y, -z)
  assert backwards.at_bound and backwards.slope == pytest.approx(calibration.MIN_SLOPE)
  assert statistics.auroc(y, backwards(-z)) == statistics.auroc(y, -z)


def test_separable_and_one_class_fit_splits():
  z = np.array([-4.0, -3.0, -2.5, 1.0, 2.0, 3.5])
  y = z > 0
  fitted = calibration.fit_platt(y, z)  # perfectly separable: finite thanks to the targets
  assert np.isfinite([fitted.slope, fitted.intercept]).all() and fitted.slope > 0
  assert fitted(z)[y].min() > 0.5 > fitted(z)[~y].max()
  assert calibration.fit_platt(np.ones(4, bool), z[:4]) == calibration.PlattMap(1.0, 0.0, 4, 4)
  with pytest.raises(ValueError, match="finite"):
    calibration.fit_platt(y, np.r_[z[:-1], np.inf])


def test_saved_maps_load_back(tmp_path):
  maps = {"iMRrhpc": {"pre": calibration.PlattMap(0.5, -1.0, 80, 30),
                      "post": calibration.PlattMap(0.7, 0.2, 75, 28, at_bound=False)}}
  calibration.save(tmp_path / "calibration.json", maps, "validation")
  assert calibration.load(tmp_path / "calibration.json") == maps

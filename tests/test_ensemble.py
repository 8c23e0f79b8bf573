"""The MRP ensemble's inputs: the models' own probabilities (the paper's y = W1 F1 + W2 F2,
calibrated after) or their calibrated ones, on a case small enough to work out by hand."""

import json

import numpy as np
import pytest

from configs import evaluate as evaluate_config
from mrp_jax import configuration
from mrp_jax.core import inference
from mrp_jax.evaluation import calibration, ensemble, evaluate, predictions, statistics
from mrp_jax.evaluation.scores import ORACLE_RULE, Key, Scores

IDS = np.asarray(["P1", "P2", "N1", "N2"])
LABELS = np.asarray([1, 1, 0, 0])
# iMGrhpc ranks every pair right but its own probabilities span 0.001-0.004; iMRrhpc ranks
# P2 below N1 (AUROC 0.75) on a wide scale. Calibrated, iMGrhpc's span is wide too.
MG_OWN = np.asarray([0.004, 0.003, 0.002, 0.001])
MR_OWN = np.asarray([0.9, 0.2, 0.8, 0.1])
MG_CALIBRATED = np.asarray([0.8, 0.75, 0.3, 0.2])
MR_CALIBRATED = MR_OWN
# The test split: other values, and N2 without a mammogram (MRP falls back to iMRrhpc).
TEST_MG_OWN = np.asarray([0.0035, 0.0012, 0.0025, 0.0009])
TEST_MR_OWN = np.asarray([0.6, 0.3, 0.7, 0.4])
TEST_MG_PRESENT = np.asarray([True, True, True, False])


def _predictions(p, present=None):
  p = np.asarray(p, np.float64)
  present = np.ones(len(p), bool) if present is None else present
  return inference.Predictions(IDS, np.log(p) - np.log1p(-p), p, LABELS, p, present)


def _inputs():
  """(predictions, calibrated scores) of iMGrhpc and iMRrhpc on the validation and test
  splits at Pre-NAT. The calibrated scores are given, not fitted, so that W1 can be worked
  out by hand."""
  predicted = {
      Key("iMGrhpc", "validation", "pre"): _predictions(MG_OWN),
      Key("iMRrhpc", "validation", "pre"): _predictions(MR_OWN),
      Key("iMGrhpc", "test", "pre"): _predictions(TEST_MG_OWN, TEST_MG_PRESENT),
      Key("iMRrhpc", "test", "pre"): _predictions(TEST_MR_OWN)}
  scores = {Key("iMGrhpc", "validation", "pre"): Scores(IDS, LABELS, MG_CALIBRATED),
            Key("iMRrhpc", "validation", "pre"): Scores(IDS, LABELS, MR_CALIBRATED),
            Key("iMGrhpc", "test", "pre"): Scores(IDS, LABELS, TEST_MG_OWN * 100),
            Key("iMRrhpc", "test", "pre"): Scores(IDS, LABELS, TEST_MR_OWN)}
  return predicted, scores


def _add_mrp(inputs):
  predicted, scores = _inputs()
  maps = {"iMGrhpc": {}, "iMRrhpc": {}}
  weights = predictions.add_mrp(
      scores, predicted, maps,
      predictions.Ensemble({"iMGrhpc": "iMGrhpc", "iMRrhpc": "iMRrhpc"}, "validation", inputs))
  return weights, predicted, scores, maps


def test_the_models_own_probabilities_and_the_calibrated_ones_give_different_weights():
  """By hand, pair P2 / N1 is the only one the mix can get wrong. Own probabilities: P2 > N1
  iff 0.003 W1 + 0.2 (1 - W1) > 0.002 W1 + 0.8 (1 - W1), i.e. W1 > 0.6 / 0.601 = 0.998: only
  W1 = 1 on the grid ranks every pair (AUROC 1; 0.75 elsewhere). Calibrated: iff 0.75 W1 +
  0.2 (1 - W1) > 0.3 W1 + 0.8 (1 - W1), i.e. W1 > 0.6 / 1.05 = 0.571: the grid's AUROC-1
  weights are 0.60 ... 1, and the tie goes to the one closest to 0.5, 0.60."""
  own, _, _, _ = _add_mrp("model")
  calibrated, _, scores, maps = _add_mrp("calibrated")
  assert (own.w_mg, own.w_mr, own.inputs) == (1.0, 0.0, "model")
  assert calibrated.w_mg == pytest.approx(0.6) and calibrated.w_mr == pytest.approx(0.4)
  assert calibrated.inputs == "calibrated" and own.validation_auroc == 1.0
  # 'calibrated': MRP's scores are the mix of the calibrated probabilities as they are (the
  # test split's N2 has no mammogram: iMRrhpc's alone), and MRP gets no Platt map.
  test_mg, test_mr = 100 * TEST_MG_OWN, TEST_MR_OWN
  expected = np.where(TEST_MG_PRESENT, 0.6 * test_mg + 0.4 * test_mr, test_mr)
  np.testing.assert_allclose(scores[Key("MRP", "test", "pre")].probability, expected,
                             rtol=0, atol=1e-15)
  assert "MRP" not in maps


def test_model_inputs_mix_the_own_probabilities_and_calibrate_mrp_after():
  weights, predicted, scores, maps = _add_mrp("model")
  # MRP's own output: W1 = 1, so iMGrhpc's own probability where the mammogram is, iMRrhpc's
  # where it is not (the test split's N2).
  own = {"validation": MG_OWN, "test": np.where(TEST_MG_PRESENT, TEST_MG_OWN, TEST_MR_OWN)}
  for split, y in own.items():
    mrp = predicted[Key("MRP", split, "pre")]
    np.testing.assert_array_equal(mrp.probability, y)
    np.testing.assert_allclose(mrp.logit, np.log(y) - np.log1p(-y), rtol=1e-12)
  # Its Platt map is the maximum-likelihood one of its own logits on the fit split, and MRP's
  # scores on every split are its own output through it.
  fitted = calibration.fit_platt(LABELS, np.log(MG_OWN) - np.log1p(-MG_OWN))
  assert maps["MRP"]["pre"] == fitted
  assert maps["MRP"]["pre"].slope != pytest.approx(1.0)  # the map does something
  for split, y in own.items():
    np.testing.assert_allclose(scores[Key("MRP", split, "pre")].probability,
                               fitted(np.log(y) - np.log1p(-y)), rtol=1e-12)
  # Calibrating after leaves MRP's ranking: its AUROC is the mix's.
  assert statistics.auroc(LABELS, scores[Key("MRP", "test", "pre")].probability) == \
      statistics.auroc(LABELS, own["test"])
  assert weights.inputs == "model"


def test_weights_files_keep_their_inputs_and_old_files_load_as_calibrated(tmp_path):
  weights, _, _, _ = _add_mrp("model")
  weights.save(tmp_path / "mrp_ensemble.json")
  assert ensemble.EnsembleWeights.load(tmp_path / "mrp_ensemble.json") == weights
  old = tmp_path / "old.json"  # written before the choice was saved
  old.write_text(json.dumps({"w_mg": 0.4, "w_mr": 0.6, "objective": "mean validation AUROC",
                             "validation_auroc": 0.8, "grid_step": 0.05}))
  assert ensemble.EnsembleWeights.load(old).inputs == "calibrated"
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({**json.loads(old.read_text()), "inputs": "raw"}))
  with pytest.raises(ValueError, match=r"bad\.json.*'raw'"):
    ensemble.EnsembleWeights.load(bad)


def test_the_evaluate_config_defaults_to_the_papers_inputs_and_rejects_others():
  config = evaluate_config.get_config()
  assert config.evaluate.mrp_inputs == "model"
  config.evaluate.runs = "rhpc=/nowhere"
  config.evaluate.mrp_inputs = "raw"
  with pytest.raises(configuration.ConfigError, match="evaluate.mrp_inputs"):
    configuration.validate(config, evaluate.CONFIG_CHECKS)


def test_the_logit_of_an_output_that_rounds_to_0_or_1_stays_finite():
  z = ensemble.logit(np.asarray([0.0, 0.5, 1.0]))
  clip = ensemble.LOGIT_CLIP
  assert z[1] == 0.0
  assert z[0] == pytest.approx(np.log(clip) - np.log1p(-clip), rel=1e-12)
  # 1 - clip is held to float64's spacing near 1 (2^-53), a relative 2^-53 / clip of clip.
  assert z[2] == pytest.approx(-z[0], abs=2 * 2.0**-53 / clip)


def test_the_rule_on_perfect_members_falls_short_of_the_joint_posterior():
  """add_oracle_rule on exact posteriors: the table's log-odds T and two images' log-odds A
  and B, each drawn given the label (d' 1.2 each), so P(pCR | table, mammogram) = s(T + A),
  P(pCR | table, MRI) = s(T + B) and the joint posterior s(T + A + B). The rule's mean of the
  first two ranks worse than the joint one, and better than either member: on 20,000 test
  patients 0.903 against 0.919 (in six draws of this size the difference was 0.013-0.015, so
  the bar 0.01 holds with room). Its scores are the combination with the fitted weights, the
  MRI member's alone for a patient without a mammogram."""
  rng = np.random.default_rng(0)

  def draw(n):
    y = rng.random(n) < 0.3
    t, a, b = (rng.normal(np.where(y, d / 2, -d / 2), 1.0) * d for d in (1.0, 1.2, 1.2))
    ids = np.asarray([f"P{k:05x}" for k in range(n)])
    return ids, y.astype(int), posterior(t + a), posterior(t + b), posterior(t + a + b)

  def posterior(log_likelihood_ratio):
    return 1 / (1 + np.exp(-(np.log(0.3 / 0.7) + log_likelihood_ratio)))

  scores, predicted = {}, {}
  for split, n in (("validation", 4000), ("test", 20000)):
    ids, y, mg, mr, joint = draw(n)
    present = np.ones(n, bool)
    if split == "test":
      present[:100] = False  # no mammogram: the rule falls back to the MRI member
      mg[:100] = joint[:100] = mr[:100]
    scores[Key("oracle iMGrhpc", split, "pre")] = Scores(ids, y, mg)
    scores[Key("oracle iMRrhpc", split, "pre")] = Scores(ids, y, mr)
    scores[Key("oracle MRP", split, "pre")] = Scores(ids, y, joint)
    predicted[Key("iMGrhpc", split, "pre")] = inference.Predictions(ids, mg, mg, y, mg, present)
    predicted[Key("iMRrhpc", split, "pre")] = inference.Predictions(
        ids, mr, mr, y, mr, np.ones(n, bool))
  weights = predictions.add_oracle_rule(
      scores, predicted,
      predictions.Ensemble({"iMGrhpc": "iMGrhpc", "iMRrhpc": "iMRrhpc"}, "validation", "model"))
  assert 0.3 <= weights.w_mg <= 0.7  # two members of equal strength
  rule = scores[Key(ORACLE_RULE, "test", "pre")]
  test = {m: scores[Key(f"oracle {m}", "test", "pre")] for m in ("iMGrhpc", "iMRrhpc", "MRP")}
  expected = np.where(np.arange(20000) < 100, test["iMRrhpc"].probability,
                      weights.w_mg * test["iMGrhpc"].probability
                      + weights.w_mr * test["iMRrhpc"].probability)
  np.testing.assert_allclose(rule.probability, expected, rtol=0, atol=1e-15)
  joint = statistics.auroc(rule.labels, test["MRP"].probability)
  mixed = statistics.auroc(rule.labels, rule.probability)
  assert joint - mixed > 0.01, (joint, mixed)
  assert mixed > max(statistics.auroc(rule.labels, test[m].probability)
                     for m in ("iMGrhpc", "iMRrhpc"))

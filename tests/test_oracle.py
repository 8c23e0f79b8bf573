"""The synthetic cohort's oracle: exact Bayes posteriors, calibrated, ordered as the paper."""

import json
import math

import numpy as np
import pytest
from scipy import special, stats
from sklearn.metrics import roc_auc_score

from input_pipeline import schema, synthetic
from input_pipeline.synthetic import cohort, export, oracle, phenotypes
from mrp_jax.evaluation import statistics

N = 4000


@pytest.fixture(scope="module")
def cohort_oracle(tmp_path_factory):
  out = tmp_path_factory.mktemp("oracle")
  synthetic.generate_export(out, N, seed=11, images=False)
  truth = {p["patient_id"]: p for p in json.loads((out / synthetic.TRUTH_FILE).read_text())[
      "patients"]}
  return truth, oracle.export_oracle(out)


def _pairs(truth, best, model, phase):
  ids = sorted(i for i in best if phase in best[i][model])
  return (np.array([truth[i]["label"] for i in ids]),
          np.array([best[i][model][phase] for i in ids]))


@pytest.mark.parametrize("model, phase", [("rhpc", "pre"), ("iMGrhpc", "pre"),
                                          ("iMRrhpc", "pre"), ("iMRrhpc", "post"),
                                          ("MRP", "mid")])
def test_posteriors_are_calibrated(cohort_oracle, model, phase):
  """A true posterior is calibrated: in every decile of predicted P(pCR) the pCR rate equals the
  mean prediction, up to binomial noise, so the deciles' squared z-scores sum to a chi-square
  with 10 degrees of freedom (exceeded by chance 0.1% of the time). A wrong likelihood term (a
  missing factor, a swapped label, a wrong normaliser) over- or under-states the evidence in
  many deciles and breaks it (a swapped irregularity shift gives 220-940 here, an
  irregularity sd of 0.4 for 0.5 36-48)."""
  truth, best = cohort_oracle
  labels, p = _pairs(truth, best, model, phase)
  order = np.argsort(p, kind="stable")
  z = []
  for chunk in np.array_split(order, 10):
    se = math.sqrt(max(np.sum(p[chunk] * (1 - p[chunk])), 1.0)) / len(chunk)
    z.append((labels[chunk].mean() - p[chunk].mean()) / se)
  assert np.sum(np.square(z)) < stats.chi2.ppf(0.999, 10), np.round(z, 2)


def test_each_modality_adds_evidence_as_in_the_paper(cohort_oracle):
  """Oracle AUROCs in the paper's order at every phase, near the documented design values
  (cohort.py; SE ~0.007 at this size)."""
  truth, best = cohort_oracle
  auroc = {(m, ph): roc_auc_score(*_pairs(truth, best, m, ph))
           for m in oracle.MODELS for ph in schema.PHASE_NAMES}
  for phase in schema.PHASE_NAMES:
    rhpc, img, imr, mrp = (auroc[m, phase] for m in oracle.MODELS)
    assert 0.75 <= rhpc <= 0.81, (phase, rhpc)
    assert 0.03 <= img - rhpc <= 0.08, (phase, img - rhpc)
    assert 0.07 <= imr - rhpc <= 0.14, (phase, imr - rhpc)
    assert 0.01 <= mrp - imr <= 0.05, (phase, mrp - imr)
  assert auroc["iMRrhpc", "post"] > auroc["iMRrhpc", "pre"]


def test_an_image_reveals_what_the_table_leaves_unknown():
  """With laterality written Unknown the MRI's tumour side tells it: the MRI oracle gains
  exactly log P(side | y) - while the written category makes the image add nothing."""
  rng = np.random.default_rng(3)
  draw = cohort.draw_clinical(rng)
  j = schema.VARIABLE_NAMES.index("laterality")
  written = cohort.ClinicalDraw(draw.label, draw.codes, draw.values,
                                np.where(np.arange(len(draw.missing)) == j, False, draw.missing))
  unknown = cohort.ClinicalDraw(draw.label, draw.codes, draw.values,
                                np.where(np.arange(len(draw.missing)) == j, True, draw.missing))
  latent = cohort.draw_latent(rng, draw)
  assert np.all(oracle.revealed_log_likelihood("laterality", written, latent) == 0)
  probs = cohort.category_probabilities(schema.BY_NAME["laterality"])
  np.testing.assert_allclose(oracle.revealed_log_likelihood("laterality", unknown, latent),
                             np.log(probs[:, int(draw.codes[j])]))


def test_the_evidence_terms_are_normalised_densities():
  """Each label-dependent term integrates to 1 over its latent (a likelihood, not a score)."""
  x = np.linspace(1e-3, 20.0, 400_001)
  evidence = cohort.PRE_ENHANCEMENT
  for label in (0, 1):
    mu, sd = math.log(evidence.median[label]), evidence.sd
    density = np.exp(-0.5 * ((np.log(x) - mu) / sd) ** 2) / (x * sd * math.sqrt(2 * math.pi))
    assert np.trapezoid(density, x) == pytest.approx(1.0, abs=1e-4)
    # log_likelihood is that density up to the label-free factor 1 / (x sd sqrt(2 pi)).
    np.testing.assert_allclose(
        [evidence.log_likelihood(v)[label] for v in (0.5, 1.0, 2.0)],
        [math.log(d * v * sd * math.sqrt(2 * math.pi)) for v, d in zip(
            (0.5, 1.0, 2.0), np.interp((0.5, 1.0, 2.0), x, density))], atol=1e-4)
  # The phenotype: the mammogram's term summed over margins and calcifications and integrated
  # over log irregularity (its density there is the term times the label-free 1 / sqrt(2 pi));
  # the MRI's over the core fraction: 1 for every subtype and label.
  log_x = np.linspace(math.log(1e-4), math.log(50.0), 2001)
  core = np.linspace(0.0, 1.0, 2001)[1:-1]
  for subtype in range(len(phenotypes.GROUP_OF_SUBTYPE)):
    total = sum(np.trapezoid(np.exp([phenotypes.log_likelihood(
        phenotypes.Phenotype(margin, math.exp(v), calcified, 0.5), subtype, True, False)
        for v in log_x]), log_x, axis=0)
        for margin in phenotypes.MARGINS for calcified in (False, True))
    np.testing.assert_allclose(total, math.sqrt(2 * math.pi), rtol=1e-4)
    total = np.trapezoid(np.exp([phenotypes.log_likelihood(
        phenotypes.Phenotype("indistinct", 0.2, False, v), subtype, False, True)
        for v in core]), core, axis=0)
    np.testing.assert_allclose(total, 1.0, rtol=1e-4)
  f = np.linspace(0, 1.2, 120_001)
  for phase in (1, 2):
    for label in (0, 1):
      density = np.exp([oracle._response_course_log_likelihood(v, phase)[label] for v in f])
      assert np.trapezoid(density, f) == pytest.approx(1.0, abs=1e-3)


CONTROL_N = 2000


def _images_alone_auroc(seed: int, rates: synthetic.Rates, seen: frozenset[str],
                        phase: int) -> float:
  """AUROC of log P(the images | label) with the table unseen (every value marginalised):
  what the images alone tell of the label."""
  labels, scores = [], []
  for index in range(CONTROL_N):
    draw, latent, _ = export.draw_patient(seed, index, rates=rates)
    blank = cohort.ClinicalDraw(draw.label, draw.codes, draw.values, np.ones_like(draw.missing))
    log_likelihood = oracle.image_log_likelihood(blank, latent, seen, phase)
    labels.append(draw.label)
    scores.append(log_likelihood[1] - log_likelihood[0])
  return float(roc_auc_score(labels, scores))


@pytest.mark.parametrize("seen, phase", [(frozenset({"mammogram"}), 0),
                                         (frozenset({"mri"}), 2)])
def test_negative_control_images_carry_no_label(seen, phase):
  """Under the negative control the images (drawn for another patient) tell nothing of the
  label: the exact P(images | label) ranks patients at chance (AUROC 0.5 within 4 standard
  errors, 0.013 at 2,000 patients); without it they rank them well."""
  control = _images_alone_auroc(17, synthetic.Rates(negative_control=True), seen, phase)
  assert abs(control - 0.5) < 4 * 0.013, control
  assert _images_alone_auroc(17, synthetic.Rates(), seen, phase) > 0.7


def test_negative_control_fails_the_image_claims(tmp_path, cohort_oracle):
  """The image claims the evaluation checks (a fused model's oracle above rhpc's, the image's
  evidence = oracle fused log-odds - oracle rhpc log-odds ranking patients) fail under the
  negative control (posteriors equal to rhpc's, evidence 0, its AUROC 0.5) and hold without it
  (evidence AUROC above 0.6, image models above rhpc)."""
  synthetic.generate_export(tmp_path, CONTROL_N, seed=19, images=False,
                            rates=synthetic.Rates(negative_control=True))
  truth = {p["patient_id"]: p for p in json.loads(
      (tmp_path / synthetic.TRUTH_FILE).read_text())["patients"]}
  for best, control in ((oracle.export_oracle(tmp_path), True), (cohort_oracle[1], False)):
    labels = truth if control else cohort_oracle[0]
    for model in ("iMGrhpc", "iMRrhpc", "MRP"):
      for phase in schema.PHASE_NAMES:
        ids = sorted(i for i in best if phase in best[i][model])
        y = np.array([labels[i]["label"] for i in ids])
        fused = np.array([best[i][model][phase] for i in ids])
        table = np.array([best[i]["rhpc"][phase] for i in ids])
        evidence = special.logit(fused) - special.logit(table)
        if control:
          np.testing.assert_array_equal(fused, table)
          assert statistics.auroc(y, evidence) == 0.5
        else:
          assert statistics.auroc(y, evidence) > 0.6, (model, phase)
          assert roc_auc_score(y, fused) > roc_auc_score(y, table) + 0.03, (model, phase)

"""Predictions per patient: a patient scored on several rows (iMGrhpc: one per mammogram view)
gets the mean of their probabilities; a patient of one row keeps its outputs as they are."""

from __future__ import annotations

import jax
import numpy as np
from scipy import special

from mrp_jax.core import inference

F32_EPS = float(np.finfo(np.float32).eps)


def test_per_patient_averages_the_probabilities_of_a_patients_rows():
  # Patient 7 has two rows (CC and MLO), patient 3 one; rows arrive in any order.
  logit = np.asarray([0.5, -1.25, 2.0], np.float32)
  rows = {"id": np.asarray([7, 3, 7]), "label": np.asarray([1, 0, 1], np.float32),
          "logit": logit, "probability": special.expit(logit).astype(np.float32),
          "image_probability": np.asarray([0.2, 0.9, 0.6], np.float32),
          "image_present": np.asarray([True, True, True])}
  p = inference.per_patient(rows)
  assert list(p.patient_ids) == [inference.patient_string(3), inference.patient_string(7)]
  mean = (special.expit(0.5) + special.expit(2.0)) / 2
  np.testing.assert_allclose(p.probability, [rows["probability"][1], mean], rtol=0, atol=1e-15)
  np.testing.assert_allclose(p.logit, [-1.25, np.log(mean / (1 - mean))], rtol=0, atol=1e-12)
  assert p.logit[0] == np.float64(np.float32(-1.25))  # one row: exactly the model's logit
  np.testing.assert_allclose(p.image_probability, [0.9, (0.2 + 0.6) / 2], atol=F32_EPS)
  assert list(p.label) == [0, 1] and p.image_present.dtype == bool


def test_predict_averages_each_patients_mammogram_views(training_records):
  """inference.predict of iMGrhpc against the model run on each view alone: per patient, the
  mean of the views' probabilities and image-only probabilities; one-view patients as they
  are. Every model keeps one row per patient of the phase's population."""
  from configs import iMGrhpc
  from input_pipeline import records
  from input_pipeline.feed import batching, pipeline
  from input_pipeline.records import tfrecord
  from mrp_jax.core import sharding
  from mrp_jax.core import state as state_lib
  from tests.conftest import tiny_train_config

  mesh = sharding.make_mesh(jax.devices()[:1])
  config = tiny_train_config(iMGrhpc, training_records)
  spec = pipeline.batch_spec(training_records)
  recipe = state_lib.build_state(config, mesh, spec)
  state = recipe.create(config.seed)
  step = inference.jit_eval_step(recipe.model)
  paths = pipeline.split_paths(training_records, "train")
  predicted = inference.predict(step, state, mesh, paths, model_name="iMGrhpc", phase="pre",
                                batch_size=4)
  patients = [r for path in paths for _, data in tfrecord.iter_records(path)
              if batching.evaluates(r := records.decode(data), "pre")]
  assert sorted(predicted.patient_ids) == sorted(r.patient_id for r in patients)
  views = {r.patient_id: len(r.mammograms) for r in patients}
  assert 2 in views.values() and 1 in views.values()  # both paths exercised
  expected = {}
  for record in patients:
    rows = batching.eval_examples(record, "pre", "iMGrhpc")
    assert len(rows) == max(1, len(record.mammograms))
    out = step(state.params, state.batch_stats, batching.collate(rows, "iMGrhpc", spec, 4))
    n = len(rows)
    expected[record.patient_id] = (np.asarray(out["logit"], np.float64)[:n],
                                   np.asarray(out["image_probability"], np.float64)[:n])
  for i, patient_id in enumerate(predicted.patient_ids):
    logits, image = expected[patient_id]
    # The model's float32 outputs, averaged in float64: a few float32 roundings apart.
    np.testing.assert_allclose(predicted.probability[i], special.expit(logits).mean(),
                               rtol=0, atol=8 * F32_EPS)
    np.testing.assert_allclose(predicted.image_probability[i], image.mean(), rtol=0,
                               atol=8 * F32_EPS)
    if len(logits) == 1:
      np.testing.assert_allclose(predicted.logit[i], logits[0], rtol=0, atol=8 * F32_EPS)
    else:
      mean = special.expit(logits).mean()
      np.testing.assert_allclose(predicted.logit[i], np.log(mean / (1 - mean)),
                                 rtol=0, atol=64 * F32_EPS)

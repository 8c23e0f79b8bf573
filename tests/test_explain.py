"""Integrated Gradients: quadrature, completeness on a trained model, aggregation and ranking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_close_at_scale

from input_pipeline import schema
from mrp_jax.evaluation import explain


@pytest.mark.parametrize("method", explain.METHODS)
def test_path_nodes_are_a_quadrature_on_the_unit_interval(method):
  alphas, weights = explain.path_nodes(16, method)
  assert weights.sum() == pytest.approx(1.0)
  assert np.all((alphas >= 0) & (alphas <= 1))
  # Every rule integrates a linear function exactly; Gauss-Legendre a degree-31 polynomial.
  assert np.sum(weights * alphas) == pytest.approx(0.5, abs=0.05 if "left" in method
                                                    or "right" in method else 1e-12)
  if method == "gausslegendre":
    assert np.sum(weights * alphas ** 31) == pytest.approx(1 / 32, rel=1e-10)


def test_path_nodes_reject_bad_arguments():
  with pytest.raises(ValueError, match="steps"):
    explain.path_nodes(0)
  with pytest.raises(ValueError, match="method"):
    explain.path_nodes(4, "simpson")


def _cubic(inputs):
  """Per-example f(x, y) = sum(x^3) + 2 sum(x) * y[0]: non-linear, with a cross term."""
  x, y = inputs["x"], inputs["y"]
  return jnp.sum(x ** 3, axis=1) + 2.0 * jnp.sum(x, axis=1) * y[:, 0]


def test_integrated_gradients_matches_the_closed_form_and_is_complete():
  rng = np.random.default_rng(0)
  inputs = {"x": rng.normal(size=(3, 5)).astype(np.float32),
            "y": rng.normal(size=(3, 2)).astype(np.float32)}
  attributions, delta = jax.jit(lambda i: explain.integrated_gradients(_cubic, i, steps=4))(
      inputs)
  x, y = inputs["x"], inputs["y"][:, :1]
  # Along t -> t x, t y from 0: d/dx_i = 3 t^2 x_i^2 + 2 t y, d/dy = 2 t sum(x); integrals give
  # IG_x = x^3 + x y, IG_y0 = y sum(x), and y[:, 1] does not matter.
  # Four nodes integrate these polynomials exactly; what is left is float32 rounding of a
  # few operations per node, at the scale of the attributions (elements may cancel to ~0).
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  assert_close_at_scale(attributions["x"], x64 ** 3 + x64 * y64, ulps=64)
  assert_close_at_scale(attributions["y"][:, 0], y64[:, 0] * x64.sum(1), ulps=64)
  np.testing.assert_array_equal(attributions["y"][:, 1], 0.0)  # its gradient is exactly 0
  np.testing.assert_allclose(delta, 0.0, atol=1e-4)


def test_chunked_steps_and_baselines():
  rng = np.random.default_rng(1)
  inputs = {"x": rng.normal(size=(2, 4)).astype(np.float32),
            "y": rng.normal(size=(2, 2)).astype(np.float32)}
  whole, _ = explain.integrated_gradients(_cubic, inputs, steps=7)
  chunked, _ = explain.integrated_gradients(_cubic, inputs, steps=7, chunk_size=3)  # padded
  # The same node values summed in other groups: rounding at the attributions' scale.
  assert_close_at_scale(chunked, whole, ulps=8 * 7)
  # A baseline equal to the input in y: y gets nothing, completeness still holds.
  attributions, delta = explain.integrated_gradients(
      _cubic, inputs, {"y": inputs["y"], "x": 0.5}, steps=8)
  np.testing.assert_array_equal(attributions["y"], 0.0)  # x - baseline is exactly 0 there
  np.testing.assert_allclose(delta, 0.0, atol=1e-4)
  with pytest.raises(ValueError, match="not inputs"):
    explain.integrated_gradients(_cubic, inputs, {"z": 0.0})
  with pytest.raises(TypeError, match="floating point"):
    explain.integrated_gradients(_cubic, {"x": np.ones((2, 4), np.int32), "y": inputs["y"]})


@pytest.fixture(scope="module")
def trained_imr(trained_runs, training_records):
  """The tiny trained iMRrhpc run and a batch of two validation patients: one at Post-NAT,
  one at Pre-NAT (follow-up slot empty)."""
  from input_pipeline import batching, pipeline, records, tfrecord
  from mrp_jax import sharding
  from mrp_jax.evaluation import runs

  run = runs.load_run(trained_runs["iMRrhpc"], sharding.make_mesh(jax.devices()[:1]))
  recs = [records.decode(data)
          for path in pipeline.split_paths(training_records, "validation")
          for _, data in tfrecord.iter_records(path)]
  post = next(r for r in recs if batching.evaluates(r, "post"))
  pre = next(r for r in recs if r is not post)
  batch = batching.collate([batching.eval_example(post, "post"), batching.eval_example(pre, "pre")],
                           "iMRrhpc", pipeline.batch_spec(training_records))
  return run, batch


def test_model_attributions_are_complete_on_a_trained_model(trained_imr):
  """Kept small (2 patients, 8 nodes in chunks of 4): the suite's XLA:CPU runs unoptimised
  code, where a vmapped 3D gradient is slow (BUILD_NOTES.md)."""
  run, batch = trained_imr
  variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
  out = explain.model_attributions(run.model, variables, batch, target="probability", steps=8,
                                   chunk_size=4)
  features = [v.label for v in schema.VARIABLES] + ["MRI"]
  total = sum(out[k] for k in features)
  difference = out["output_difference"]
  # The probability's change from the zero baseline is not small, so the check means something.
  assert np.all(np.abs(difference) > 1e-3)
  # Completeness: the features add up to f(x) - f(baseline) up to the quadrature error of 8
  # Gauss-Legendre nodes on a ReLU network: within 0.01 + 5% here (on the demo's trained
  # iMRrhpc, 32 nodes leave |delta| <= 0.009 for differences of 0.4-0.5; BUILD_NOTES.md).
  assert np.all(np.abs(total - difference) <= 0.01 + 0.05 * np.abs(difference))
  # The per-feature sums cover every input element: they add up to the whole-tensor sum that
  # delta is computed from. The same few thousand elements summed in two groupings differ by
  # rounding of order sqrt(N) u sum|x| (~4e-5 of the output change here); a feature left out
  # would differ by its whole attribution. Tolerance at the output's scale, not absolute.
  np.testing.assert_allclose(out["delta"], total - difference, rtol=0,
                             atol=1e-3 * np.abs(difference).max())
  np.testing.assert_allclose(out["MRI baseline"] + out["MRI follow-up"], out["MRI"],
                             rtol=1e-4, atol=1e-6)
  # The Pre-NAT-only example has no follow-up image: exactly no attribution there.
  assert out["MRI follow-up"][1] == 0.0 and out["MRI baseline"][1] != 0.0
  # output_difference is the model's own f(x) - f(0).
  probability = run.eval_step(run.state.params, run.state.batch_stats, batch)["probability"]
  zero = dict(batch, rhpc=np.zeros_like(batch["rhpc"]), mri=np.zeros_like(batch["mri"]))
  base = run.eval_step(run.state.params, run.state.batch_stats, zero)["probability"]
  np.testing.assert_allclose(difference, np.asarray(probability) - np.asarray(base),
                             rtol=1e-3, atol=1e-5)


def test_combine_top_and_rank():
  a = {"Age": np.array([0.2, -0.1]), "MRI": np.array([0.5, 0.0]), "delta": np.zeros(2)}
  b = {"Age": np.array([0.4, 0.1]), "MG": np.array([-0.3, 0.2]), "delta": np.zeros(2)}
  combined = explain.combine_attributions({"mr": a, "mg": b}, {"mr": 0.75, "mg": 0.25})
  np.testing.assert_allclose(combined["Age"], [0.25, -0.05])
  np.testing.assert_allclose(combined["MRI"], [0.375, 0.0])
  np.testing.assert_allclose(combined["MG"], [-0.075, 0.05])
  with pytest.raises(ValueError, match="no weight"):
    explain.combine_attributions({"mr": a, "mg": b}, {"mr": 1.0})

  first = {k: v[:1] for k, v in combined.items()}
  top = explain.top_features(first, 2)
  assert [t["feature"] for t in top] == ["MRI", "Age"]
  assert top[0]["attribution"] == pytest.approx(0.375)

  ranked = explain.rank_attributions(combined)
  assert {r["feature"] for r in ranked} == {"Age", "MRI", "MG"}  # no diagnostics
  # Per case the normalised |attributions| sum to 1, so the means over cases do too.
  assert sum(r["mean"] for r in ranked) == pytest.approx(1.0)
  # Normalised |attributions|: case 1 Age 0.357, MRI 0.536, MG 0.107; case 2 Age 0.5, MG 0.5.
  assert [r["feature"] for r in ranked] == ["Age", "MG", "MRI"]
  assert ranked[2]["mean"] == pytest.approx(0.375 / 0.7 / 2)
  age = next(r for r in ranked if r["feature"] == "Age")
  assert age["signed_mean"] == pytest.approx((0.25 / 0.7 - 0.05 / 0.1) / 2)
  assert explain.rank_attributions({"Age": np.zeros(0)}) == []

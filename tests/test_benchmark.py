"""Benchmark: analytic FLOP counts against the reference figures and XLA, and the benchmark job at
tiny size
(a correctness run: no timing is asserted)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import benchmark as benchmark_config
from mrp_jax import benchmark, models
from mrp_jax.benchmark import flops
from mrp_jax.models.resnet import LAYOUTS, ResNet

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("layout", ["resnet", "medicalnet", "monai"])
def test_full_geometry_encoder_flops_match_design(layout):
  """docs/background.md section 4 gives one 3D trunk's forward GFLOP at 176 x 176 x 352."""
  encoder = models.encoder_kwargs({"layout": layout, "shortcut": "B", "norm": "batch",
                                   "width": 64, "stem_kernel": 7, "remat": "none"}, 3, "float32")
  convs = flops.resnet_convs(ResNet(**encoder), flops.FULL_MRI_SHAPE)
  assert flops.forward_flops(convs) / 1e9 == pytest.approx(flops.REFERENCE_GFLOP[layout], rel=0.02)
  # Padding taps make the model-FLOP convention the larger one; training is 3x forward less the
  # stem's input gradient (the stem is 6% of the resnet layout, 25% of the stride-1 monai stem).
  assert flops.forward_flops(convs, valid_only=True) < flops.forward_flops(convs)
  stem = convs[0].flops()
  assert flops.train_flops(convs) == 3 * flops.forward_flops(convs) - stem


@pytest.mark.parametrize("spatial_dims,shape,layout", [
    (3, (22, 22, 44), "resnet"), (3, (16, 16, 24), "medicalnet"), (2, (64, 32), "resnet")])
def test_analytic_valid_taps_match_xla_cost_analysis(spatial_dims, shape, layout):
  """XLA's count lies between the in-bounds taps (forward_flops(valid_only=True)) and every tap
  (the model-FLOP convention). At these tiny sizes most taps touch padding, so the two bounds are
  far apart (docs/design.md, "Benchmark", has the ratios); at the full geometry they differ by
  a few %."""
  kwargs = dict(LAYOUTS[layout], spatial_dims=spatial_dims, width=8, shortcut="B")
  encoder = ResNet(**kwargs)
  x = jnp.zeros((1, *shape, 1), jnp.float32)
  variables = jax.eval_shape(lambda k, x: encoder.init(k, x, train=False), jax.random.key(0), x)
  compiled = jax.jit(lambda v, x: encoder.apply(v, x, train=False)).lower(variables, x).compile()
  analysis = compiled.cost_analysis()
  xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
  convs = flops.resnet_convs(encoder, shape)
  assert flops.forward_flops(convs, valid_only=True) <= xla <= flops.forward_flops(convs)


def test_benchmark_job_at_tiny_size(training_records, tmp_path):
  """Every model and part, JAX against PyTorch on the same weights, through the main entry.
  The pipeline feeds stacked batches (the train job's 'batch' transfer), so the pipeline part
  runs the train part's executable; the train job's views form has its own tests
  (test_train_step, test_train)."""
  workdir = tmp_path / "bench"
  result = subprocess.run(
      [sys.executable, "-m", "mrp_jax.main", "--config", "configs/benchmark.py:tiny",
       "--workdir", str(workdir), f"--config.data.records={training_records}",
       "--config.data.transfer=batch"],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "JAX/PyTorch examples/s" in result.stdout
  report = json.loads((workdir / "benchmark.json").read_text())
  assert report["peak"]["tflops"] > 0
  assert set(report["models"]) == {"iMRrhpc", "iMGrhpc", "rhpc"}
  for name, entry in report["models"].items():
    for part in ("eval", "train", "pipeline"):
      timing = entry["jax"][part]
      assert timing["examples_per_s"] > 0 and timing["p10_s"] <= timing["median_s"] <= \
          timing["p90_s"], (name, part)
    pipeline = entry["jax"]["pipeline"]
    assert not pipeline["views"] and not pipeline["recompiled_for_records"], name
    assert entry["torch"]["parameters"] == entry["parameters"], name
    assert set(entry["jax_over_torch"]) == {"eval", "train"}
    # The PyTorch network computes the same function from the same weights.
    for output, error in entry["torch"]["eval_relative_error"].items():
      assert error < 1e-4, (name, output, error)
    assert all(map(__import__("math").isfinite, (entry["jax"]["train"]["loss"],
                                                  entry["torch"]["loss"]))), name
    if name != "rhpc":
      assert "augment" in entry["jax"]
      evaluation = entry["jax"]["eval"]
      assert (evaluation["flops_per_example_analytic_valid"] <= evaluation[
          "flops_per_example_xla"] <= evaluation["flops_per_example_analytic"]), name


def test_plan_part_from_shapes_alone(tmp_path):
  """Memory per remat policy without running anything: what each policy keeps for the backward
  pass (full < dots < none: 'dots' keeps convolution outputs), and one compiled XLA plan."""
  config = benchmark_config.get_config("tiny")
  b = config.benchmark
  b.models, b.parts = ("iMRrhpc",), ("plan",)
  b.plan_remat, b.plan_batches, b.plan_compile = ("none", "dots", "full"), (4, 8), False
  result = benchmark.run(config, tmp_path / "traced")
  assert result["peak"]["tflops"] == 0.0 and "train" not in result["models"]["iMRrhpc"]["jax"]
  kept = {(r["remat"], r["batch_size"]): r["residual_bytes"]
          for r in result["models"]["iMRrhpc"]["plan"]}
  for batch in (4, 8):
    assert kept["full", batch] < kept["dots", batch] < kept["none", batch]
  # Activations grow with the batch; the parameters kept are the same.
  assert kept["none", 8] - kept["none", 4] > kept["full", 8] - kept["full", 4] > 0
  b.plan_remat, b.plan_batches, b.plan_compile = ("full",), (4,), True
  (row,) = benchmark.run(config, tmp_path / "compiled")["models"]["iMRrhpc"]["plan"]
  assert "error" not in row
  assert row["planned_bytes"] >= row["temp_bytes"] > 0 and row["argument_bytes"] > 0

"""The HLO census (hlo_census.py), the compile-only GPU targets (gpu_target.py) and the
benchmark's compile-only parts."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from configs import benchmark as benchmark_config
from mrp_jax import benchmark
from mrp_jax.benchmark import gpu_target, hlo_census, measure

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA_PLUGIN = (importlib.util.find_spec("jax_plugins") is not None
                   and importlib.util.find_spec("jax_plugins.xla_cuda12") is not None)

# An optimised XLA:GPU module in the form compiled.as_text() prints, cut down to one
# convolution (x: NDHWC, transposed to NCDHW for cuDNN), its two gradients and a norm statistic.
GPU_MODULE = """HloModule jit_step, entry_computation_layout={(bf16[2,4,4,4,8]{4,3,2,1,0})->f32[16]{0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%fused_transpose (param_0: bf16[2,4,4,4,8]) -> bf16[2,8,4,4,4] {
  %param_0 = bf16[2,4,4,4,8]{4,3,2,1,0} parameter(0)
  ROOT %transpose.1 = bf16[2,8,4,4,4]{4,3,2,1,0} transpose(%param_0), dimensions={0,4,1,2,3}
}

%fused_reduce (param_0.1: bf16[2,16,4,4,4]) -> f32[16] {
  %param_0.1 = bf16[2,16,4,4,4]{4,3,2,1,0} parameter(0)
  %convert.1 = f32[2,16,4,4,4]{4,3,2,1,0} convert(%param_0.1)
  %constant.1 = f32[] constant(0)
  ROOT %reduce.1 = f32[16]{0} reduce(%convert.1, %constant.1), dimensions={0,2,3,4}, to_apply=%add
}

ENTRY %main.1 (x: bf16[2,4,4,4,8], w: bf16[16,8,3,3,3]) -> (f32[16], bf16[16,8,3,3,3], bf16[2,8,4,4,4]) {
  %x = bf16[2,4,4,4,8]{4,3,2,1,0} parameter(0)
  %w = bf16[16,8,3,3,3]{4,3,2,1,0} parameter(1)
  %fusion.1 = bf16[2,8,4,4,4]{4,3,2,1,0} fusion(%x), kind=kInput, calls=%fused_transpose
  %cudnn-conv = (bf16[2,16,4,4,4]{4,3,2,1,0}, u8[0]{0}) custom-call(%fusion.1, %w), window={size=3x3x3 pad=1_1x1_1x1_1}, dim_labels=bf012_oi012->bf012, custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/conv1/conv_general_dilated"}
  %gte = bf16[2,16,4,4,4]{4,3,2,1,0} get-tuple-element(%cudnn-conv), index=0
  %cudnn-conv.1 = (bf16[16,8,3,3,3]{4,3,2,1,0}, u8[0]{0}) custom-call(%fusion.1, %gte), window={size=3x3x3 pad=1_1x1_1x1_1}, dim_labels=bf012_oi012->bf012, custom_call_target="__cudnn$convBackwardFilter"
  %cudnn-conv.2 = (bf16[2,8,4,4,4]{4,3,2,1,0}, u8[0]{0}) custom-call(%gte, %w), window={size=3x3x3 pad=1_1x1_1x1_1}, dim_labels=bf012_oi012->bf012, custom_call_target="__cudnn$convBackwardInput"
  %fusion.2 = f32[16]{0} fusion(%gte), kind=kInput, calls=%fused_reduce
  %gte.1 = bf16[16,8,3,3,3]{4,3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %gte.2 = bf16[2,8,4,4,4]{4,3,2,1,0} get-tuple-element(%cudnn-conv.2), index=0
  ROOT %tuple = (f32[16]{0}, bf16[16,8,3,3,3]{4,3,2,1,0}, bf16[2,8,4,4,4]{4,3,2,1,0}) tuple(%fusion.2, %gte.1, %gte.2)
}
"""


def test_shape_bytes():
  assert hlo_census.shape_bytes("bf16[2,8,4,4,4]{4,3,2,1,0}") == 2 * 8 * 64 * 2
  assert hlo_census.shape_bytes("(bf16[16,8]{1,0}, u8[0]{0}, f32[]{})") == 256 + 0 + 4
  assert hlo_census.shape_bytes("pred[3]") == 3


def test_census_of_a_cudnn_module():
  """Categories, per-call FLOPs, bytes, layouts and the roofline floor, checked by hand."""
  result = hlo_census.census(GPU_MODULE, peak_tflops=1.0, bandwidth_gbs=1.0)
  cats = result["categories"]
  assert set(cats) == {"conv_forward", "conv_backward_filter", "conv_backward_input", "layout",
                       "reduction"}
  # One convolution: 2 x 2048 outputs x (27 taps x 8 input channels); its two gradients are
  # the same multiply-adds, whichever operand holds the forward's output and filter.
  conv = 2 * (2 * 16 * 64) * (27 * 8)
  for kind in ("conv_forward", "conv_backward_filter", "conv_backward_input"):
    assert cats[kind]["kernels"] == 1 and cats[kind]["gflop"] * 1e9 == conv, kind
  activation, weights = 2 * 8 * 64 * 2, 16 * 8 * 27 * 2
  # Forward: reads the transposed input and the filter, writes a 16-channel output.
  assert cats["conv_forward"]["gb"] * 1e9 == activation + weights + 2 * activation
  assert cats["layout"]["gb"] * 1e9 == 2 * activation  # read once, written once
  assert cats["reduction"]["gb"] * 1e9 == 2 * activation + 16 * 4
  # At 1 GB/s and 1 TFLOP/s every kernel is memory-bound: floor = bytes / bandwidth.
  assert result["floor_ms"] == pytest.approx(result["gb"] * 1e3)
  assert result["conv_layouts"] == {f"{k} bf012_oi012->bf012": 1 for k in (
      "conv_backward_filter", "conv_backward_input", "conv_forward")}
  assert result["heaviest"][0]["category"] == "conv_forward"
  assert result["heaviest"][0]["op_name"] == "jit(step)/conv1/conv_general_dilated"
  # At 1 GFLOP/s the convolutions are compute-bound instead.
  slow = hlo_census.census(GPU_MODULE, peak_tflops=1e-3, bandwidth_gbs=1.0)
  assert slow["categories"]["conv_forward"]["floor_ms"] == pytest.approx(conv / 1e9 * 1e3)
  # Without both rates there is no floor, and the heaviest are ranked by bytes.
  unrated = hlo_census.census(GPU_MODULE, peak_tflops=0.0, bandwidth_gbs=0.0)
  assert unrated["floor_ms"] == 0 and unrated["conv_share_of_floor"] is None
  assert unrated["heaviest"][0]["bytes"] == max(r["bytes"] for r in unrated["heaviest"])
  assert "conv_forward" in hlo_census.format_census(result)
  with pytest.raises(ValueError, match="ENTRY"):
    hlo_census.census("HloModule empty\n", 1.0, 1.0)


def test_collectives_are_counted_without_a_floor():
  """A data-parallel step's gradient all-reduce: its payload is reported, the -done half is not
  a second kernel, and no HBM floor is claimed for an interconnect transfer."""
  module = """HloModule jit_dp

%sum (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add = f32[] add(%a, %b)
}

ENTRY %main (g: f32[1024,256]) -> f32[1024,256] {
  %g = f32[1024,256]{1,0} parameter(0)
  %all-reduce-start = f32[1024,256]{1,0} all-reduce-start(%g), channel_id=1, replica_groups=[1,8]<=[8], to_apply=%sum
  ROOT %all-reduce-done = f32[1024,256]{1,0} all-reduce-done(%all-reduce-start)
}
"""
  result = hlo_census.census(module, peak_tflops=1.0, bandwidth_gbs=1.0)
  assert result["kernels"] == 1
  collective = result["categories"]["collective"]
  assert collective["gb"] * 1e9 == 2 * 1024 * 256 * 4 and collective["floor_ms"] == 0


def test_census_counts_a_cpu_convolution_exactly():
  """XLA:CPU keeps convolutions as HLO `convolution` ops: 2 x outputs x taps x input channels."""
  x = jnp.zeros((2, 8, 8, 8, 4), jnp.float32)
  w = jnp.zeros((3, 3, 3, 4, 16), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  text = jax.jit(conv).lower(x, w).compile().as_text()
  result = hlo_census.census(text, 1.0, 1.0)
  assert result["categories"]["convolution"]["kernels"] == 1
  assert result["gflop"] * 1e9 == 2 * (2 * 8 * 8 * 8 * 16) * (27 * 4)


def test_hlo_part_of_the_tiny_models(tmp_path):
  """The benchmark's hlo part on this CPU: every convolution of the eval step is counted, and
  the census' FLOPs sit between the in-bounds-tap and every-tap analytic counts (XLA drops
  kernel taps that only ever read padding, which the tiny geometry has many of)."""
  config = benchmark_config.get_config("tiny")
  config.benchmark.models, config.benchmark.parts = ("iMRrhpc", "rhpc"), ("hlo",)
  config.benchmark.dump_hlo = True
  result = benchmark.run(config, tmp_path)
  assert result["peak"]["tflops"] == 0.0  # nothing ran
  imr = result["models"]["iMRrhpc"]["hlo"]
  batch = imr["batch_size"]
  census = imr["eval"]["census"]
  assert census["categories"]["convolution"]["kernels"] == 17  # stem + 8 blocks x 2
  assert (imr["flops"]["forward_valid"] * batch <= census["gflop"] * 1e9
          <= imr["flops"]["forward"] * batch)
  train = imr["train"]["census"]["categories"]
  assert train["convolution"]["kernels"] >= 3 * 17 - 1  # forward, both gradients, less the stem's
  assert imr["train"]["planned_bytes"] > 0 and imr["eval"]["mfu_ceiling"] is None
  # rhpc has no convolution; its dense layers are matmuls.
  assert "convolution" not in result["models"]["rhpc"]["hlo"]["eval"]["census"]["categories"]
  assert (tmp_path / "iMRrhpc_train.hlo.txt").read_text().startswith("HloModule")


@pytest.mark.parametrize("part", ["hlo", "eval"])
def test_compiler_options_reach_xla(part, tmp_path):
  """benchmark.compiler_options go to XLA's compiles, compile-only and timed: an option XLA
  does not know is refused."""
  config = benchmark_config.get_config("tiny")
  config.benchmark.models, config.benchmark.parts = ("rhpc",), (part,)
  config.benchmark.compiler_options = "xla_no_such_option=true"
  with pytest.raises(Exception, match="xla_no_such_option"):
    benchmark.run(config, tmp_path)


def test_compile_only_configuration_errors():
  config = benchmark_config.get_config("tiny")
  config.benchmark.target = "h100"
  with pytest.raises(ValueError, match="only the parts"):
    benchmark.run(config, "/nonexistent")
  config.benchmark.parts = ("hlo",)
  config.benchmark.compiler_options = "xla_gpu_force_conv_nhwc"
  with pytest.raises(ValueError, match="not name=value"):
    benchmark.run(config, "/nonexistent")
  assert measure.compiler_options(" a=true, b=3,c=0.5 ,d=x") == {"a": True, "b": 3, "c": 0.5,
                                                                   "d": "x"}
  assert measure.compiler_options("") is None
  with pytest.raises(ValueError, match="unknown GPU target"):
    gpu_target.compile_only_devices("a100")


def test_target_config_states_the_part():
  text = gpu_target.target_config(gpu_target.GPUS["h200"])
  assert "core_count: 132" in text and "memory_bandwidth: 4800000000000" in text
  assert 'platform_name: "CUDA"' in text and "major: 9 minor: 0" in text
  # A local device is matched to a listed part by its device_kind (rates for the census).
  assert gpu_target.spec_for("NVIDIA H100 80GB HBM3") is gpu_target.GPUS["h100"]
  assert gpu_target.spec_for("NVIDIA H200") is gpu_target.GPUS["h200"]
  assert gpu_target.spec_for("NVIDIA H100 PCIe") is None and gpu_target.spec_for("cpu") is None


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs the jax CUDA plugin (the gpu-aot extra)")
def test_deviceless_h100_compile(tmp_path):
  """XLA:GPU compiles iMRrhpc's steps for two H100s without a GPU: every convolution becomes
  a cuDNN call (XLA computes a few small forward convolutions as cuDNN's filter gradient), the
  census' FLOPs are the analytic every-tap count of one device's half of the batch (no tap is
  dropped at this geometry), and the train step all-reduces its gradients."""
  result = subprocess.run(
      [sys.executable, "-m", "mrp_jax.main", "--config", "configs/benchmark.py:tiny,h100",
       "--workdir", str(tmp_path), "--config.data.geometry=small",
       "--config.benchmark.plan_batches=(2,)", "--config.benchmark.plan_remat=('none',)",
       "--config.benchmark.target_devices=2", "--config.benchmark.batch_size.iMRrhpc=4"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = __import__("json").loads((tmp_path / "benchmark.json").read_text())
  assert report["environment"]["device_kind"] == gpu_target.GPUS["h100"].description
  hlo = report["models"]["iMRrhpc"]["hlo"]
  census = hlo["eval"]["census"]
  assert sum(v["kernels"] for k, v in census["categories"].items() if k.startswith("conv_")) == 17
  assert hlo["devices"] == 2
  assert census["gflop"] * 1e9 == pytest.approx(hlo["flops"]["forward"] * hlo["batch_size"] / 2,
                                                rel=1e-4)
  # The ceiling is one device's FLOPs at the peak over its floor: for eval, the census' own.
  peak = report["peak"]["tflops"] * 1e12
  assert hlo["eval"]["mfu_ceiling"] == pytest.approx(
      census["gflop"] * 1e9 / (peak * census["floor_ms"] * 1e-3), rel=1e-4)
  assert 0 < hlo["train"]["mfu_ceiling"] <= 1
  assert hlo["train"]["census"]["categories"]["collective"]["gb"] > 0
  assert {"conv_backward_input", "conv_backward_filter"} <= set(
      hlo["train"]["census"]["categories"])
  (row,) = report["models"]["iMRrhpc"]["plan"]
  assert "error" not in row and row["planned_bytes"] > 0

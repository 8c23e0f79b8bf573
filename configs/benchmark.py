"""Throughput benchmark: JAX train / eval steps of rhpc, iMGrhpc and iMRrhpc, and PyTorch's.

Command:
  python -m mrp_jax.main --config configs/benchmark.py:full --workdir runs/bench
Prints one row per model, framework and part (median / p10 / p90 step time, examples/s,
analytic GFLOP per example, XLA/analytic FLOP ratio, MFU, compile time, XLA-planned and device
peak memory) and writes runs/bench/benchmark.json (mrp_jax/benchmark/ lists its keys).

Variants (comma-separated, after a colon):
  full        the 'full' geometry preset (the paper's), bfloat16
  cpu         the 'small' geometry preset, batch 2, float32: a CPU-sized comparison
  tiny        test size (configs/common.py's tiny plus few steps): CI
  gpu         what launch/gpu_benchmark.sh runs: iMRrhpc only, optimised HLO dumped
  h100, h200  compile iMRrhpc's steps for that GPU here, without one: the HLO census and the
              memory plan per remat policy and batch (launch/gpu_hlo.sh runs the comparisons)
  medicalnet  and every other variant of configs/common.py (no_knowledge, no_time, paper)
The encoder layout, dtype, remat policy and Siamese batching are config.model's fields
(--config.model.encoder.layout=monai); they apply to iMRrhpc; iMGrhpc keeps its torchvision
layout (configs/iMGrhpc.py) and rhpc runs in float32 (configs/rhpc.py).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = common.get_config()
  config.job = "benchmark"
  config.model.name = "iMRrhpc"
  config.model.encoder.shortcut = "A"  # as configs/iMRrhpc.py (MedicalNet weights)

  config.benchmark = b = ml_collections.ConfigDict()
  b.models = ("iMRrhpc", "iMGrhpc", "rhpc")  # which models, in this order
  # Global batch per model (the train configs' defaults: authors' 8 MRI pairs, 32 mammograms).
  b.batch_size = ml_collections.ConfigDict({"iMRrhpc": 8, "iMGrhpc": 32, "rhpc": 64})
  b.parts = ("eval", "train", "augment", "pipeline", "torch")  # see mrp_jax/benchmark/
  b.warmup_steps = 3  # untimed steps after compilation
  b.steps = 20  # timed steps (fewer if budget_s runs out first, never fewer than 3)
  b.budget_s = 30.0  # seconds per timed loop
  b.pipeline_steps = 10  # batches timed through the Grain pipeline (needs config.data.records)
  b.augment = False  # True: on-device augmentation inside the timed train step, as training
  b.peak_tflops = 0.0  # MFU denominator; 0: measure a matmul of config.model.dtype in the run
  b.matmul_size = 8192  # side of the square matmul that measures the peak
  b.torch_compile = True  # torch.compile the PyTorch model (falls back to eager if it fails)
  b.dump_hlo = False  # write WORKDIR/<model>_<train|eval>.hlo.txt: the optimised HLO
  b.bandwidth_gbs = 0.0  # GB/s for the HLO census' roofline floor; 0: the (target) GPU's if listed
  # Compile for a GPU that is not here (mrp_jax/benchmark/gpu_target.py: 'h100', 'h200'; needs
  # the jax CUDA plugin, no GPU): XLA:GPU's own HLO and memory plan; only the parts 'plan' and
  # 'hlo'.
  b.target = ""
  b.target_devices = 1  # compile-only devices of the target (one host), for a sharded plan
  b.compiler_options = ""  # XLA options for every compile: "xla_gpu_force_conv_nhwc=true,..."
  # The 'plan' part (not in the default parts): XLA's memory plan of the train step, compiled
  # from shapes only, per remat policy and global batch.
  b.plan_remat = ("none", "dots", "full")
  b.plan_batches = (1, 2, 4, 8, 16)
  b.plan_compile = True  # False: only the bytes kept for backward (traced, not compiled)

  for variant in filter(None, (v.strip() for v in (arg or "").split(","))):
    if variant in VARIANTS:
      VARIANTS[variant](config)
    else:
      common.apply_variants(config, variant)
  return config


def _full(config):
  """The paper's geometry in bfloat16 (the defaults, named for clarity)."""
  config.data.geometry = "full"
  config.model.dtype = "bfloat16"


def _cpu(config):
  """Small enough for a 2-core CPU: float32, since bf16 convolutions are emulated on CPU."""
  config.data.geometry = "small"
  config.model.dtype = "float32"
  b = config.benchmark
  b.batch_size = ml_collections.ConfigDict({"iMRrhpc": 2, "iMGrhpc": 2, "rhpc": 64})
  b.warmup_steps, b.steps, b.budget_s = 2, 10, 30.0
  b.pipeline_steps = 10
  b.matmul_size = 1024
  b.torch_compile = False  # inductor's C++ build of a 3D ResNet takes minutes on 2 cores


def _tiny(config):
  """CI size: a few steps of the tiny models."""
  common.apply_variants(config, "tiny")
  b = config.benchmark
  b.batch_size = ml_collections.ConfigDict({"iMRrhpc": 2, "iMGrhpc": 2, "rhpc": 4})
  b.warmup_steps, b.steps, b.budget_s = 1, 2, 5.0
  b.pipeline_steps = 2
  b.matmul_size = 128
  b.torch_compile = False
  b.plan_batches = (1, 2)


def _gpu(config):
  """launch/gpu_benchmark.sh: iMRrhpc, PyTorch compiled, convolutions' layouts dumped."""
  b = config.benchmark
  b.models = ("iMRrhpc",)
  b.parts = ("eval", "train", "augment", "torch")
  b.warmup_steps, b.steps, b.budget_s = 3, 20, 20.0
  b.dump_hlo = True


def _compile_for(target):
  def apply(config):
    b = config.benchmark
    b.target = target
    b.models = ("iMRrhpc",)
    b.parts = ("hlo", "plan")
    b.plan_batches = (8, 16, 32)
  return apply


VARIANTS = {"full": _full, "cpu": _cpu, "tiny": _tiny, "gpu": _gpu,
            "h100": _compile_for("h100"), "h200": _compile_for("h200")}

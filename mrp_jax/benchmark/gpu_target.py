"""Compile for an NVIDIA GPU that is not here: XLA:GPU's deviceless (ahead-of-time) compilation.

``compile_only_devices("h100")`` returns JAX devices that can compile but not run: a program
lowered and compiled with shardings on them goes through XLA:GPU's whole pipeline (cuDNN
convolution rewriting, layout assignment, fusion, scheduling, buffer assignment) for that GPU,
so its optimised HLO and memory plan are the ones a real H100 would get, except for what only a
device can decide: autotuning (convolution algorithms are left to cuDNN's heuristics, so the
plan holds no convolution workspace) and the clock. Needs the CUDA plugin of the installed
jaxlib (``pip install "jax-cuda12-plugin==<jax version>" "jax-cuda12-pjrt==<jax version>"``,
or the ``gpu-aot`` extra); no CUDA libraries, driver or GPU.

The device descriptions below are NVIDIA's published figures for each part; the cuDNN and CUDA
versions are those of the installed NVIDIA wheels when present (they decide which cuDNN
features XLA may use), else the oldest the jax CUDA 12 plugin supports.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class GpuSpec:
  description: str
  compute_capability: tuple[int, int]
  sms: int
  boost_clock_ghz: float
  memory_bytes: int  # as nvidia-smi reports the board's total
  bandwidth_gbs: float  # HBM, GB/s
  l2_bytes: int
  bf16_dense_tflops: float  # tensor-core peak without sparsity


GPUS = {
    # H100 SXM5 80 GB: 132 SMs, 1.98 GHz boost, HBM3 3.35 TB/s, 50 MB L2, 989.4 TFLOP/s bf16.
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 1.98, 81_559 * 2**20, 3_350.0,
                    50 * 2**20, 989.4),
    # H200 SXM 141 GB: the H100's chip with HBM3e, 4.8 TB/s.
    "h200": GpuSpec("NVIDIA H200", (9, 0), 132, 1.98, 143_771 * 2**20, 4_800.0, 50 * 2**20,
                    989.4),
}


def spec_for(device_kind: str) -> GpuSpec | None:
  """The listed GPU whose description ``device_kind`` (a JAX device's) starts with, if any."""
  for spec in GPUS.values():
    if device_kind.startswith(spec.description):
      return spec
  return None


def _version(package: str, default: tuple[int, int]) -> tuple[int, int]:
  try:
    major, minor = importlib.metadata.version(package).split(".")[:2]
    return int(major), int(minor)
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return default


def target_config(spec: GpuSpec) -> str:
  """XLA's GpuTargetConfigProto, as text, for ``spec`` (Hopper's per-SM limits)."""
  cudnn = _version("nvidia-cudnn-cu12", (9, 8))
  cuda = _version("nvidia-cuda-runtime-cu12", (12, 8))
  major, minor = spec.compute_capability
  return f"""
gpu_device_info {{
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {spec.sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(spec.bandwidth_gbs * 1e9)}
  l2_cache_size: {spec.l2_bytes}
  clock_rate_ghz: {spec.boost_clock_ghz}
  device_memory_size: {spec.memory_bytes}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: {cudnn[0]} minor: {cudnn[1]} }}
runtime_version {{ major: {cuda[0]} minor: {cuda[1]} }}
device_description_str: "{spec.description}"
"""


def compile_only_devices(name: str, count: int = 1) -> list[Any]:
  """``count`` compile-only devices of GPU ``name`` (a key of :data:`GPUS`) on one host."""
  if name not in GPUS:
    raise ValueError(f"unknown GPU target {name!r}; known: {sorted(GPUS)}")
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

  if not xla_bridge.backends_are_initialized():
    # Only the CPU backend is started: with the CUDA plugin installed and no GPU, starting the
    # 'cuda' backend would fail loudly, and compiling for a target needs no local GPU.
    jax.config.update("jax_platforms", "cpu")
  try:
    topology = topologies.get_topology_desc(platform="cuda", topology=f"1x1x{count}",
                                            target_config=target_config(GPUS[name]))
  except Exception as error:  # pylint: disable=broad-except  (plugin missing or too old)
    raise RuntimeError(
        f"cannot compile for GPU target {name!r}: {type(error).__name__}: {error}. Deviceless "
        f"compilation needs the jax CUDA plugin matching jax {jax.__version__}: pip install "
        f"'jax-cuda12-plugin=={jax.__version__}' 'jax-cuda12-pjrt=={jax.__version__}'") from error
  return list(topology.devices)

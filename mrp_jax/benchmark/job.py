"""The `benchmark` job: step time, examples/s, FLOPs, MFU and memory of each model, JAX and PyTorch.

Per model of ``config.benchmark.models`` (rhpc, iMGrhpc, iMRrhpc), on one synthetic batch that
lives on the devices (every image slot present, random intensities):

* ``eval`` / ``train``: the jitted eval step and the train step of ``train_step.py`` (donated
  state, the step's own sharding), compiled ahead with ``lower().compile()`` (timed apart), then
  warm-up steps and timed steps, each ended by ``block_until_ready``; median / p10 / p90 step
  time, examples/s, FLOPs per example from XLA's cost analysis and from ``flops.py``, MFU
  against ``benchmark.peak_tflops`` (0: a matmul of the model's dtype measured in the same run),
  XLA's planned memory and the device's peak memory where the backend reports it;
* ``augment``: the on-device augmentation alone (the train job runs it inside its step);
* ``pipeline``: the train step fed by the real Grain pipeline from ``data.records`` (skipped with
  a note when empty), and the pipeline alone;
* ``torch``: the same model and step in PyTorch (``torch_baseline.py``), started from the JAX
  model's initial weights; its eval outputs are compared with JAX's, and the JAX/PyTorch ratio of
  examples/s is reported (> 1: JAX is faster).
* ``plan``: the train step compiled from shapes alone (nothing allocated, nothing run) for each
  remat policy of ``benchmark.plan_remat`` and global batch of ``benchmark.plan_batches``:
  XLA's memory plan (arguments, outputs, temporaries) of each, i.e. which batch fits the device
  and what rematerialisation saves. On the accelerator (or for a ``benchmark.target``) it is
  the real plan; on CPU a proxy (another compiler's fusion and buffer assignment).
* ``hlo``: the train and eval steps compiled from shapes alone, and a census of their optimised
  HLO (``hlo_census.py``): kernels, FLOPs, bytes moved and roofline floor per category
  (cuDNN convolutions by kind and layout, layout changes, norms, elementwise work), the
  heaviest kernels, and the memory plan.

``benchmark.target`` ('h100', 'h200') compiles for that GPU without one (``gpu_target.py``,
XLA:GPU's deviceless compilation): only ``plan`` and ``hlo`` then, since nothing can run.
``benchmark.compiler_options`` (``xla_gpu_force_conv_nhwc=true,...``) go to every compile.

PyTorch runs after every JAX part so each framework's timings are taken alone. Writes
``WORKDIR/benchmark.json`` after each part (a crash keeps what was measured) and prints a table.
Grain and torch are imported only by the parts that need them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import jax

from mrp_jax import configuration as cfg
from mrp_jax import console, models
from mrp_jax.benchmark import (
  COMPILE_ONLY_PARTS,
  PARTS,
  compile_only,
  flops,
  gpu_target,
  measure,
  steps,
  table,
)
from mrp_jax.core import sharding
from mrp_jax.models.resnet import REMAT_POLICIES
from mrp_jax.training import checks as train_checks

# config.benchmark; the rest of the config is checked as the train job checks it (the
# benchmark times the train job's state, step and pipeline).
CONFIG_RULES: dict[str, cfg.Rule] = {
    "benchmark.models": cfg.tuple_of(*models.MODEL_NAMES),
    "benchmark.parts": cfg.tuple_of(*PARTS),
    **{f"benchmark.batch_size.{m}": cfg.POSITIVE_INT for m in models.MODEL_NAMES},
    "benchmark.warmup_steps": cfg.COUNT,
    "benchmark.steps": cfg.POSITIVE_INT,
    "benchmark.budget_s": cfg.POSITIVE,
    "benchmark.pipeline_steps": cfg.POSITIVE_INT,
    "benchmark.peak_tflops": cfg.NON_NEGATIVE,
    "benchmark.matmul_size": cfg.POSITIVE_INT,
    "benchmark.plan_batches": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                               and all(cfg.positive_int(x) for x in v),
                               "must be a non-empty tuple of positive integers"),
    "benchmark.plan_compile": cfg.BOOLEAN,
    "benchmark.bandwidth_gbs": cfg.NON_NEGATIVE,
    "benchmark.target": cfg.one_of("", *gpu_target.GPUS),
    "benchmark.target_devices": cfg.POSITIVE_INT,
    "benchmark.compiler_options": (lambda v: isinstance(v, str),
                                   "must be a string 'name=value,name=value' of XLA options"),
    "benchmark.plan_remat": cfg.tuple_of("none", *REMAT_POLICIES),
}
CONFIG_CHECKS: tuple[cfg.Check, ...] = (*train_checks.CONFIG_CHECKS, CONFIG_RULES)


def environment(devices: list[Any]) -> dict[str, Any]:
  import flax
  import jaxlib
  import optax

  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "host": platform.node(), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
          "device_count": len(devices), "process_count": jax.process_count(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _check(config: Any) -> None:
  b = config.benchmark
  unknown = [p for p in b.parts if p not in PARTS]
  if unknown:
    raise ValueError(f"config.benchmark.parts: unknown {unknown}; known: {list(PARTS)}")
  for name in b.models:
    if name not in models.MODEL_NAMES:
      raise ValueError(f"config.benchmark.models: {name!r} is not one of {models.MODEL_NAMES}")
    if name not in b.batch_size:
      raise ValueError(f"config.benchmark.batch_size.{name} is not set")
  if b.target and set(b.parts) - COMPILE_ONLY_PARTS:
    raise ValueError(
        f"config.benchmark.target={b.target!r} compiles for a GPU that is not here, so only the "
        f"parts {sorted(COMPILE_ONLY_PARTS)} can run; got parts {list(b.parts)}")
  measure.compiler_options(b.compiler_options)  # a malformed option fails before anything compiles


def _devices_and_rates(config: Any) -> tuple[list[Any], float, float, str]:
  """(devices, peak TFLOP/s, memory GB/s, where the peak comes from) for this run. The peak is
  measured when something runs (unless config gives it); for compile-only parts it is a known
  GPU's published bf16 peak. The bandwidth (the census' floor) is config's or a known GPU's."""
  b, dtype = config.benchmark, config.model.dtype
  if b.target:
    devices = gpu_target.compile_only_devices(b.target, b.target_devices)
    spec = gpu_target.GPUS[b.target]
  else:
    devices = jax.devices()
    spec = gpu_target.spec_for(devices[0].device_kind)  # None on CPUs and unlisted GPUs
  bandwidth = float(b.bandwidth_gbs) or (spec.bandwidth_gbs if spec else 0.0)
  if b.peak_tflops > 0:
    return devices, float(b.peak_tflops), bandwidth, "config.benchmark.peak_tflops"
  if not set(b.parts) - COMPILE_ONLY_PARTS:
    if spec:
      return devices, spec.bf16_dense_tflops, bandwidth, (
          f"{spec.description}: bf16 dense tensor-core peak as published (nothing runs)")
    return devices, 0.0, bandwidth, "not measured (compile-only parts: nothing runs)"
  return devices, measure.measure_matmul_tflops(dtype, b.matmul_size), bandwidth, (
      f"measured: {dtype} matmul {b.matmul_size}^3 on {devices[0]}")


def run(config: Any, workdir: str | Path) -> dict[str, Any]:
  """Runs the benchmark described by ``config.benchmark``; returns what benchmark.json holds."""
  _check(config)
  stage = console.current("benchmark").stage
  b = config.benchmark
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out_path = workdir / "benchmark.json"
  if not b.peak_tflops and set(b.parts) - COMPILE_ONLY_PARTS:
    stage(f"the peak: a {config.model.dtype} matmul of side {b.matmul_size}")
  devices, peak, bandwidth, source = _devices_and_rates(config)
  result: dict[str, Any] = {
      "environment": environment(devices),
      "settings": {"benchmark": b.to_dict(), "model": config.model.to_dict(),
                   "mri_shape": list(steps.synthetic_spec(config).mri_shape),
                   "mg_shape": list(steps.synthetic_spec(config).mg_shape),
                   "records": config.data.records},
      "models": {}, "notes": []}

  def save() -> None:
    out_path.write_text(json.dumps(result, indent=1, default=str))

  def note(text: str) -> None:
    stage(f"note: {text}")
    result["notes"].append(text)

  mesh = sharding.make_mesh(devices)
  result["peak"] = {"tflops": peak, "source": source, "bandwidth_gbs": bandwidth or None}
  save()

  torch_inputs = {}
  timed = f"compiled, {b.warmup_steps} warm-up and up to {b.steps} timed steps"
  for name in b.models:
    entry = result["models"][name] = {"jax": {}}
    if "plan" in b.parts and name != "rhpc":
      stage(f"{name}: memory plan of remat {list(b.plan_remat)} x batch {list(b.plan_batches)}")
      entry["plan"] = compile_only.plan_memory(config, name, mesh)
      save()
    if "hlo" in b.parts:
      stage(f"{name}: HLO census of the train and eval steps")
      entry["hlo"] = compile_only.hlo_part(config, name, mesh, peak, bandwidth, workdir)
      save()
    if not set(b.parts) - COMPILE_ONLY_PARTS:
      continue
    stage(f"{name}: JAX, batch {b.batch_size[name]}")
    bench = steps.JaxModelBench(config, name, mesh)
    entry.update(batch_size=bench.batch_size, parameters=bench.parameters, flops=bench.flops)
    if name == "iMRrhpc" and steps.synthetic_spec(config).mri_shape == flops.FULL_MRI_SHAPE:
      # The reference figure for this layout (docs/background.md), next to ours.
      entry["flops"]["reference_encoder_forward"] = flops.REFERENCE_GFLOP.get(
          config.model.encoder.layout, 0.0) * 1e9
    outputs = None
    if "eval" in b.parts or "torch" in b.parts:
      stage(f"{name}: eval step ({timed})")
      entry["jax"]["eval"], outputs = bench.time_eval(peak, b)
      save()
    if "torch" in b.parts:
      torch_inputs[name] = (bench.host_batch, bench.host_variables(), outputs, bench.flops)
    if "train" in b.parts or "pipeline" in b.parts:
      stage(f"{name}: train step ({timed})")
      entry["jax"]["train"] = bench.time_train(peak, bandwidth, b, workdir)
      ratio = entry["jax"]["train"]["xla_over_analytic_valid"]
      # Convolutions dominate an imaging model's count; elsewhere the optimizer and elementwise
      # work XLA also counts make any ratio plausible.
      if name != "rhpc" and ratio is not None and not 0.9 <= ratio <= 1.25:
        note(f"{name}: XLA counts {ratio:.2f}x the analytic train FLOPs (valid taps)")
      save()
    if "augment" in b.parts and name != "rhpc":
      stage(f"{name}: augmentation ({timed})")
      entry["jax"]["augment"] = bench.time_augment(b)
      save()
    if "pipeline" in b.parts:
      if config.data.records:
        stage(f"{name}: train step fed by the Grain pipeline ({b.pipeline_steps} batches)")
        entry["jax"]["pipeline"] = bench.time_pipeline(b)
      else:
        note(f"{name}: pipeline part skipped: config.data.records is empty")
      save()
    del bench

  for name, (host_batch, variables, outputs, model_flops) in torch_inputs.items():
    try:
      from mrp_jax.benchmark import torch_comparison  # torch: only this part needs it
      entry = result["models"][name]
      stage(f"{name}: PyTorch, the same eval and train steps")
      entry["torch"] = torch_comparison.torch_part(config, name, host_batch, variables, outputs,
                                                   peak, model_flops)
    except ImportError as error:
      note(f"{name}: torch part skipped: {error}")
      break
    entry["jax_over_torch"] = {
        part: entry["jax"][part]["examples_per_s"] / entry["torch"][part]["examples_per_s"]
        for part in ("eval", "train") if part in entry["jax"]}
    if entry["torch"]["parameters"] != entry["parameters"]:
      note(f"{name}: PyTorch has {entry['torch']['parameters']} parameters, JAX "
           f"{entry['parameters']}")
    save()

  print(table.format_table(result), flush=True)
  return result

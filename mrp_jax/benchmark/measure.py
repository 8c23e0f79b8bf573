"""Measuring primitives of the benchmark: step timing, a matmul peak, XLA's cost and memory
analyses, compiler options."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def _summary(times: list[float], warmup_s: list[float]) -> dict[str, Any]:
  p10, median, p90 = np.percentile(times, [10, 50, 90])
  return {"median_s": float(median), "p10_s": float(p10), "p90_s": float(p90),
          "mean_s": float(np.mean(times)), "steps": len(times), "warmup_s": warmup_s}


def time_steps(step: Callable[[], Any], warmup: int, steps: int, budget_s: float) -> dict[str, Any]:
  """Runs ``step`` (which must block until its work is done) ``warmup`` times untimed, then up to
  ``steps`` times, stopping early once ``budget_s`` has passed and 3 steps are timed."""
  return time_alternating({"step": step}, warmup, steps, budget_s)["step"]


def time_alternating(steps: Mapping[str, Callable[[], Any]], warmup: int, count: int,
                     budget_s: float) -> dict[str, dict[str, Any]]:
  """:func:`time_steps` for several steps taken in turn (a, b, a, b, ...), so that the load of
  a shared machine weighs on each alike; ``budget_s`` bounds all of them together."""
  first: dict[str, list[float]] = {name: [] for name in steps}
  for _ in range(warmup):
    for name, step in steps.items():
      t = time.perf_counter()
      step()
      first[name].append(time.perf_counter() - t)
  times: dict[str, list[float]] = {name: [] for name in steps}
  start = time.perf_counter()
  for _ in range(count):
    for name, step in steps.items():
      t = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - t)
    if time.perf_counter() - start > budget_s and len(next(iter(times.values()))) >= 3:
      break
  return {name: _summary(times[name], first[name]) for name in steps}


def measure_matmul_tflops(dtype: str, size: int, reps: int = 10) -> float:
  """Achieved TFLOP/s of a [size, size] x [size, size] product in ``dtype`` (random data; the
  calls are queued back to back and the last one waited for)."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (size, size), jnp.dtype(dtype))
  b = jax.random.normal(kb, (size, size), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  best = 0.0
  for _ in range(3):
    t = time.perf_counter()
    outs = [matmul(a, b) for _ in range(reps)]
    outs[-1].block_until_ready()
    best = max(best, 2 * size**3 * reps / (time.perf_counter() - t) / 1e12)
  return best


def cost_analysis(analysis: Any) -> dict[str, float]:
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  analysis = analysis or {}
  return {k: float(analysis[k]) for k in ("flops", "bytes accessed") if k in analysis}


def memory_analysis(compiled: Any) -> dict[str, Any]:
  """XLA's plan for one executable: arguments + outputs + temporaries - donated aliases."""
  try:
    m = compiled.memory_analysis()
    planned = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
    return {"planned_bytes": int(planned), "temp_bytes": int(m.temp_size_in_bytes)}
  except Exception:  # pylint: disable=broad-except  (backends without the analysis)
    return {"planned_bytes": None, "temp_bytes": None}


def device_peak_bytes() -> int | None:
  """The device's peak bytes in use since the process started (None on CPU: not reported)."""
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def compiler_options(text: str) -> dict[str, Any] | None:
  """``benchmark.compiler_options`` ("xla_gpu_force_conv_nhwc=true,name=value") as the dict
  ``Lowered.compile`` takes: true/false are booleans, numbers numbers, anything else text."""
  options: dict[str, Any] = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
      raise ValueError(f"config.benchmark.compiler_options: {item!r} is not name=value")
    value = value.strip()
    try:  # JSON's literals: true / false, integers, decimals
      options[name.strip()] = json.loads(value.lower() if value.lower() in ("true", "false")
                                         else value)
    except json.JSONDecodeError:
      options[name.strip()] = value
  return options or None


def rate(timing: dict[str, Any], batch_size: int, flops_per_example: float,
          peak_tflops: float) -> dict[str, Any]:
  rate = batch_size / timing["median_s"]
  return {**timing, "examples_per_s": rate,
          "mfu": flops_per_example * rate / (peak_tflops * 1e12) if peak_tflops else None}

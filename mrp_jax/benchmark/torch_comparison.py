"""The benchmark's ``torch`` part: the PyTorch twin (torch_baseline.py) on the same batch and
initial weights as JAX, its outputs compared with JAX's, its eval and train steps timed."""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from mrp_jax.benchmark import measure, torch_baseline
from mrp_jax.benchmark import steps as steps_lib


def _relative_error(a: Any, b: Any) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def torch_part(config: Any, name: str, host_batch: Mapping[str, np.ndarray],
               variables: Mapping[str, Any], jax_outputs: Mapping[str, np.ndarray] | None,
               peak_tflops: float, model_flops: Mapping[str, float]) -> dict[str, Any]:
  """The PyTorch twin on the same batch and initial weights: eval check, eval and train timing."""
  b = config.benchmark
  batch_size = int(b.batch_size[name])
  make = functools.partial(torch_baseline.Steps, steps_lib.model_config(config, name), config.loss,
                           config.train, host_batch, variables, config.model.dtype)
  result: dict[str, Any] = {"environment": torch_baseline.environment(),
                            "compile": bool(b.torch_compile)}
  steps = make(b.torch_compile)
  try:
    outputs = steps.eval_outputs()
  except Exception as error:  # pylint: disable=broad-except  (torch.compile's many failure modes)
    if not b.torch_compile:
      raise
    result.update(compile=False, compile_error=f"{type(error).__name__}: {error}"[:2000])
    steps = make(False)
    outputs = steps.eval_outputs()
  result["parameters"] = steps.parameters
  if jax_outputs is not None:
    result["eval_relative_error"] = {
        k: _relative_error(outputs[k].float().cpu().numpy(), jax_outputs[k])
        for k in ("logit", "image_logit", "image_features", "rhpc_features")
        if k in outputs and k in jax_outputs}
  for part, fn, flop in (("eval", steps.eval_step, model_flops["forward"]),
                         ("train", steps.train_step, model_flops["train"])):
    steps.reset_peak_memory()
    timing = measure.time_steps(fn, b.warmup_steps, b.steps, b.budget_s)
    result[part] = {**measure.rate(timing, batch_size, flop, peak_tflops),
                    "device_peak_bytes": steps.peak_memory_bytes()}
  result["loss"] = float(steps.train_step())
  del steps
  return result

"""The parts that compile from shapes and run nothing: ``plan`` (XLA's memory plan per remat policy
and batch) and ``hlo`` (a census of the optimised program). They also work for a GPU that is
not here (``benchmark.target``, gpu_target.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import jax

from mrp_jax.benchmark import (
  flops,
  hlo_census,
  measure,
  steps,
  table,
)
from mrp_jax.core import augment, inference, sharding


def accelerator_model_config(config: Any, name: str) -> dict[str, Any]:
  """``name``'s model section with every convolution one XLA convolution op ('direct'): these
  parts describe the program an accelerator runs, whichever backend compiles it."""
  model_cfg = steps.model_config(config, name)
  model_cfg["encoder"]["conv_lowering"] = "direct"
  return model_cfg


def hlo_part(config: Any, name: str, mesh: jax.sharding.Mesh, peak_tflops: float,
             bandwidth_gbs: float, workdir: Path) -> dict[str, Any]:
  """The train and eval steps of ``name`` compiled from shapes on ``mesh`` (real devices or a
  compile-only target), each with its memory plan and the census of its optimised HLO."""
  b = config.benchmark
  recipe, train_jit = steps.train_setup(config, name, mesh, accelerator_model_config(config, name))
  abstract, shardings = recipe.abstract, recipe.shardings
  batch_size = int(b.batch_size[name])
  batch = steps.abstract_batch(config, name, batch_size, sharding.batch_sharding(mesh))
  eval_jit = inference.jit_eval_step(recipe.model, in_shardings=(
      shardings.params, shardings.batch_stats, sharding.batch_sharding(mesh)),
      compiler_options={})  # compiled for the target: this host's CPU options do not apply
  programs = {"train": (train_jit, (abstract, batch)),
              "eval": (eval_jit, (abstract.params, abstract.batch_stats, batch))}
  spec = steps.synthetic_spec(config)
  analytic = flops.model_flops(name, steps.encoder_kwargs(steps.model_config(config, name)),
                               abstract.params, spec.mri_shape, spec.mg_shape)
  result: dict[str, Any] = {"batch_size": batch_size, "devices": mesh.size, "flops": analytic}
  options = measure.compiler_options(b.compiler_options)
  for part, (jitted, args) in programs.items():
    t = time.perf_counter()
    compiled = jitted.lower(*args).compile(compiler_options=options)
    compile_s = time.perf_counter() - t
    text = compiled.as_text()
    if b.dump_hlo:
      (workdir / f"{name}_{part}.hlo.txt").write_text(text)
    census = hlo_census.census(text, peak_tflops, bandwidth_gbs)
    print(f"benchmark: hlo {name} {part} (batch {batch_size}, compiled in "
          f"{compile_s:.1f} s):\n{hlo_census.format_census(census)}", flush=True)
    # One device's program (a data-parallel step's share of the global batch), and the most
    # of the peak it could reach if every kernel ran at its roofline.
    step_flops = analytic["train" if part == "train" else "forward"] * batch_size / mesh.size
    ceiling = (step_flops / (peak_tflops * 1e12 * census["floor_ms"] * 1e-3)
               if census["floor_ms"] else None)
    result[part] = {"compile_s": compile_s, **measure.memory_analysis(compiled), "census": census,
                    "mfu_ceiling": ceiling}
  return result


def residual_bytes(model: Any, state: Any, batch: Mapping[str, Any]) -> int:
  """Bytes the model's training forward keeps for its backward pass (the vjp's residuals:
  saved activations, plus the parameters and inputs it closes over), from shapes alone. What a
  remat policy changes, on any backend."""
  def residuals(params, batch_stats, batch, key):
    def forward(p):
      outputs, _ = model.apply({"params": p, "batch_stats": batch_stats},
                               augment.prepare_images(batch), train=True,
                               mutable=["batch_stats"], rngs={"dropout": key})
      return outputs
    _, vjp = jax.vjp(forward, params)
    return jax.tree.leaves(vjp)  # a vjp function is a pytree of its residuals
  leaves = jax.eval_shape(residuals, state.params, state.batch_stats, batch,
                          jax.random.key(0))
  return int(sum(leaf.size * leaf.dtype.itemsize for leaf in leaves))


def _compiled_plan(step: Any, state: Any, batch: Mapping[str, Any], options: Any
                   ) -> dict[str, Any]:
  """XLA's memory plan of ``step`` compiled for these shapes, or the compile's error."""
  t = time.perf_counter()
  try:
    compiled = step.lower(state, batch).compile(compiler_options=options)
  except Exception as error:  # pylint: disable=broad-except  (reported per row)
    return {"error": f"{type(error).__name__}: {str(error)[:300]}"}
  m = compiled.memory_analysis()
  return {"compile_s": time.perf_counter() - t,
          "argument_bytes": int(m.argument_size_in_bytes),
          "output_bytes": int(m.output_size_in_bytes),
          "alias_bytes": int(m.alias_size_in_bytes), **measure.memory_analysis(compiled)}


def plan_memory(config: Any, name: str, mesh: jax.sharding.Mesh) -> list[dict[str, Any]]:
  """Memory of ``name``'s train step per remat policy and global batch, from shapes alone.

  Per row: the bytes saved for the backward pass (:func:`residual_bytes`, backend-independent)
  and XLA's memory plan of the compiled step (ShapeDtypeStructs in: the state and batch are
  never allocated, so a CPU can plan a full-geometry step it could not run). A compile that
  fails (e.g. the backend refuses a plan that does not fit) is a row with its error.
  """
  b = config.benchmark
  options = measure.compiler_options(b.compiler_options)
  rows = []
  for remat in b.plan_remat:
    model_cfg = accelerator_model_config(config, name)
    model_cfg["encoder"]["remat"] = remat
    recipe, step = steps.train_setup(config, name, mesh, model_cfg)
    model, abstract = recipe.model, recipe.abstract
    for batch_size in b.plan_batches:
      batch = steps.abstract_batch(config, name, batch_size)
      row: dict[str, Any] = {"remat": remat, "batch_size": int(batch_size),
                             "residual_bytes": residual_bytes(model, abstract, batch)}
      if b.plan_compile:
        row.update(_compiled_plan(step, abstract, batch, options))
      print(f"benchmark: plan {name} remat={remat} batch={batch_size}: "
            + table.plan_text(row), flush=True)
      rows.append(row)
  return rows

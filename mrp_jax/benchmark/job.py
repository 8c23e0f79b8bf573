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
import functools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import encoding, schema
from mrp_jax import models, sharding
from mrp_jax.benchmark import COMPILE_ONLY_PARTS, PARTS, flops, gpu_target, hlo_census
from mrp_jax.training import augment, train_step

# ---- inputs ---------------------------------------------------------------------------------------

def model_config(config: Any, name: str) -> dict[str, Any]:
  """The model section for ``name``: config.model for iMRrhpc; the other two as their own
  config files set them (configs/iMGrhpc.py: torchvision layout, shortcut B, no phase
  embedding; configs/rhpc.py: float32), keeping dtype, remat and width from config.model."""
  model = config.model.to_dict()
  model["name"] = name
  if name == "iMGrhpc":
    model["encoder"].update(layout="resnet", shortcut="B", stem_stride=None, strides=None,
                            dilations=None)
    model["time_embedding"] = False
  elif name == "rhpc":
    model["dtype"] = "float32"
  return model


def synthetic_batch(name: str, batch_size: int, mri_shape: tuple[int, ...],
                    mg_shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
  """A batch with the records' dtypes (MRI float16, mammogram uint16), every slot present, random
  one-hot rhpc inputs and auxiliary targets, and random labels."""
  rng = np.random.default_rng(seed)
  batch = models.dummy_batch(name, batch_size, mri_shape, mg_shape)
  for start, stop in encoding.INPUT_SLICES:
    batch["rhpc"][np.arange(batch_size), rng.integers(start, stop, batch_size)] = 1.0
  batch["label"] = rng.integers(0, 2, batch_size).astype(np.float32)
  batch["aux_masks"][:] = 1.0
  for var, (start, stop) in zip(schema.VARIABLES, encoding.AUX_SLICES):
    if var.aux_loss == schema.AuxLoss.CE:
      batch["aux_targets"][np.arange(batch_size), rng.integers(start, stop, batch_size)] = 1.0
    elif var.aux_loss == schema.AuxLoss.BCE:
      batch["aux_targets"][:, start:stop] = rng.integers(0, 2, (batch_size, stop - start))
    else:
      batch["aux_targets"][:, start:stop] = rng.normal(size=(batch_size, stop - start))
  if "mri" in batch:
    batch["mri"] = rng.normal(size=batch["mri"].shape).astype(np.float16)
    batch["mri_phase"][:, 1] = rng.integers(1, len(schema.PHASES), batch_size)
  if "mg" in batch:
    batch["mg"] = rng.integers(0, 65536, batch["mg"].shape).astype(np.uint16)
  return batch


# ---- measuring ------------------------------------------------------------------------------------

def time_steps(step: Callable[[], Any], warmup: int, steps: int, budget_s: float) -> dict[str, Any]:
  """Runs ``step`` (which must block until its work is done) ``warmup`` times untimed, then up to
  ``steps`` times, stopping early once ``budget_s`` has passed and 3 steps are timed."""
  first = []
  for _ in range(warmup):
    t = time.perf_counter()
    step()
    first.append(time.perf_counter() - t)
  times: list[float] = []
  start = time.perf_counter()
  while len(times) < steps:
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
    if time.perf_counter() - start > budget_s and len(times) >= 3:
      break
  p10, median, p90 = np.percentile(times, [10, 50, 90])
  return {"median_s": float(median), "p10_s": float(p10), "p90_s": float(p90),
          "mean_s": float(np.mean(times)), "steps": len(times), "warmup_s": first}


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


def _cost(analysis: Any) -> dict[str, float]:
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  analysis = analysis or {}
  return {k: float(analysis[k]) for k in ("flops", "bytes accessed") if k in analysis}


def _memory(compiled: Any) -> dict[str, Any]:
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


def _rate(timing: dict[str, Any], batch_size: int, flops_per_example: float,
          peak_tflops: float) -> dict[str, Any]:
  rate = batch_size / timing["median_s"]
  return {**timing, "examples_per_s": rate,
          "mfu": flops_per_example * rate / (peak_tflops * 1e12) if peak_tflops else None}


# ---- the JAX parts ----------------------------------------------------------------------------

def _train_setup(config: Any, name: str, model: Any, mesh: jax.sharding.Mesh
                 ) -> tuple[Callable[[jax.Array], Any], Any, Any, Any]:
  """(init, abstract state, its shardings, the jitted train step) of ``model``; nothing is
  allocated until ``init`` runs."""
  optimizer = train_step.create_optimizer(config.train)
  init = functools.partial(train_step.init_state, model, models.dummy_batch(
      name, 1, tuple(config.data.mri_shape), tuple(config.data.mg_shape)), optimizer)
  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = sharding.state_shardings(abstract, mesh, config.mesh.fsdp,
                                       config.mesh.fsdp_min_size)
  return init, abstract, shardings, _train_jit(config, model, optimizer, shardings, mesh)


def _train_jit(config: Any, model: Any, optimizer: Any, shardings: Any,
               mesh: jax.sharding.Mesh) -> Any:
  """The train job's jitted step (donated state; augmentation inside when benchmark.augment)."""
  if config.benchmark.augment:
    options = augment.AugmentOptions.from_config(config.augment)
    preprocess = lambda b, k: augment.augment_batch(augment.prepare_images(b), k, options)
  else:
    preprocess = lambda b, k: augment.prepare_images(b)
  return jax.jit(
      train_step.make_train_step(model, optimizer, config.loss,
                                 train_step.learning_rate_schedule(config.train), preprocess),
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)


def _encoder_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
  """The ResNet's keyword arguments for flops.py (None for rhpc, which has no encoder)."""
  name = model_cfg["name"]
  if name == "rhpc":
    return None
  return models.encoder_kwargs(model_cfg["encoder"], 2 if name == "iMGrhpc" else 3, "float32")


def abstract_batch(config: Any, name: str, batch_size: int,
                   sharding_: jax.sharding.Sharding | None = None) -> dict[str, Any]:
  """Shapes of a global batch (a batch of one, widened: a full-geometry batch is never
  allocated)."""
  one = models.dummy_batch(name, 1, tuple(config.data.mri_shape), tuple(config.data.mg_shape))
  return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype, sharding=sharding_)
          for k, v in one.items()}


def _eval_jit(model: Any, shardings: Any = None, batch_sharding: Any = None) -> Any:
  """The jitted eval step: (params, batch_stats, batch) -> outputs."""
  def eval_step(params, batch_stats, batch):
    return model.apply({"params": params, "batch_stats": batch_stats},
                       augment.prepare_images(batch), train=False)
  if shardings is None:
    return jax.jit(eval_step)
  return jax.jit(eval_step, in_shardings=(shardings.params, shardings.batch_stats,
                                          batch_sharding))


def hlo_part(config: Any, name: str, mesh: jax.sharding.Mesh, peak_tflops: float,
             bandwidth_gbs: float, workdir: Path) -> dict[str, Any]:
  """The train and eval steps of ``name`` compiled from shapes on ``mesh`` (real devices or a
  compile-only target), each with its memory plan and the census of its optimised HLO."""
  b = config.benchmark
  model = models.create_model(model_config(config, name))
  _, abstract, shardings, train_jit = _train_setup(config, name, model, mesh)
  batch_size = int(b.batch_size[name])
  batch = abstract_batch(config, name, batch_size, sharding.batch_sharding(mesh))
  steps = {"train": (train_jit, (abstract, batch)),
           "eval": (_eval_jit(model, shardings, sharding.batch_sharding(mesh)),
                    (abstract.params, abstract.batch_stats, batch))}
  analytic = flops.model_flops(name, _encoder_kwargs(model_config(config, name)),
                               abstract.params, tuple(config.data.mri_shape),
                               tuple(config.data.mg_shape))
  result: dict[str, Any] = {"batch_size": batch_size, "devices": mesh.size, "flops": analytic}
  for part, (jitted, args) in steps.items():
    t = time.perf_counter()
    compiled = jitted.lower(*args).compile(compiler_options=compiler_options(b.compiler_options))
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
    result[part] = {"compile_s": compile_s, **_memory(compiled), "census": census,
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
          "alias_bytes": int(m.alias_size_in_bytes), **_memory(compiled)}


def plan_memory(config: Any, name: str, mesh: jax.sharding.Mesh) -> list[dict[str, Any]]:
  """Memory of ``name``'s train step per remat policy and global batch, from shapes alone.

  Per row: the bytes saved for the backward pass (:func:`residual_bytes`, backend-independent)
  and XLA's memory plan of the compiled step (ShapeDtypeStructs in: the state and batch are
  never allocated, so a CPU can plan a full-geometry step it could not run). A compile that
  fails (e.g. the backend refuses a plan that does not fit) is a row with its error.
  """
  b = config.benchmark
  options = compiler_options(b.compiler_options)
  rows = []
  for remat in b.plan_remat:
    model_cfg = model_config(config, name)
    model_cfg["encoder"]["remat"] = remat
    model = models.create_model(model_cfg)
    _, abstract, _, step = _train_setup(config, name, model, mesh)
    for batch_size in b.plan_batches:
      batch = abstract_batch(config, name, batch_size)
      row: dict[str, Any] = {"remat": remat, "batch_size": int(batch_size),
                             "residual_bytes": residual_bytes(model, abstract, batch)}
      if b.plan_compile:
        row.update(_compiled_plan(step, abstract, batch, options))
      print(f"benchmark: plan {name} remat={remat} batch={batch_size}: "
            + _plan_text(row), flush=True)
      rows.append(row)
  return rows


class JaxModelBench:
  """One model's state, synthetic device batch and compiled steps."""

  def __init__(self, config: Any, name: str, mesh: jax.sharding.Mesh):
    self.config, self.name, self.mesh = config, name, mesh
    self.model_config = model_config(config, name)
    self.batch_size = int(config.benchmark.batch_size[name])
    mri_shape, mg_shape = tuple(config.data.mri_shape), tuple(config.data.mg_shape)
    self.host_batch = synthetic_batch(name, self.batch_size, mri_shape, mg_shape, config.seed)
    self.batch_sharding = sharding.batch_sharding(mesh)
    self.batch = jax.device_put(self.host_batch, self.batch_sharding)
    self.model = models.create_model(self.model_config)
    init, _, shardings, self.train_jit = _train_setup(config, name, self.model, mesh)
    self.state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
    self.eval_jit = _eval_jit(self.model)
    self.encoder = _encoder_kwargs(self.model_config)
    self.flops = flops.model_flops(name, self.encoder, self.state.params, mri_shape, mg_shape)
    self.parameters = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
    self.train_compiled = None

  def host_variables(self) -> dict[str, Any]:
    return jax.device_get({"params": self.state.params, "batch_stats": self.state.batch_stats})

  def _compile(self, jitted, *args) -> tuple[Any, dict[str, Any]]:
    t = time.perf_counter()
    lowered = jitted.lower(*args)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options(self.config.benchmark
                                                                 .compiler_options))
    info = {"lower_s": lower_s, "compile_s": time.perf_counter() - t,
            "xla_lowered": _cost(lowered.cost_analysis()), "xla": _cost(compiled.cost_analysis()),
            "memory": _memory(compiled)}
    return compiled, info

  def _flop_fields(self, info: dict[str, Any], analytic: float, analytic_valid: float
                   ) -> dict[str, Any]:
    # A data-parallel program's cost is one device's share of the global batch.
    scale = self.mesh.size / self.batch_size
    xla = info["xla"].get("flops", 0.0) * scale
    xla_lowered = info["xla_lowered"].get("flops", 0.0) * scale
    return {"flops_per_example_analytic": analytic,
            "flops_per_example_analytic_valid": analytic_valid,
            "flops_per_example_xla": xla or None,
            "flops_per_example_xla_lowered": xla_lowered or None,
            "xla_over_analytic_valid": xla / analytic_valid if xla and analytic_valid else None}

  def time_eval(self, peak_tflops: float, b: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Eval step timing, and its outputs on the initial weights (for the PyTorch check)."""
    state = self.state
    compiled, info = self._compile(self.eval_jit, state.params, state.batch_stats, self.batch)
    outputs = jax.device_get(compiled(state.params, state.batch_stats, self.batch))
    timing = time_steps(lambda: jax.block_until_ready(
        compiled(state.params, state.batch_stats, self.batch)), b.warmup_steps, b.steps,
        b.budget_s)
    result = {**info, **self._flop_fields(info, self.flops["forward"],
                                          self.flops["forward_valid"]),
              **_rate(timing, self.batch_size, self.flops["forward"], peak_tflops),
              "device_peak_bytes": device_peak_bytes()}
    return result, outputs

  def _train_once(self, fn, batch) -> Any:
    self.state, metrics = fn(self.state, batch)
    return jax.block_until_ready(metrics)

  def time_train(self, peak_tflops: float, bandwidth_gbs: float, b: Any, workdir: Path
                 ) -> dict[str, Any]:
    compiled, info = self._compile(self.train_jit, self.state, self.batch)
    self.train_compiled = compiled
    text = compiled.as_text()
    if b.dump_hlo:
      (workdir / f"{self.name}_train.hlo.txt").write_text(text)
    timing = time_steps(lambda: self._train_once(compiled, self.batch), b.warmup_steps, b.steps,
                        b.budget_s)
    metrics = jax.device_get(self._train_once(compiled, self.batch))
    result = {**info, **self._flop_fields(info, self.flops["train"], self.flops["train_valid"]),
              **_rate(timing, self.batch_size, self.flops["train"], peak_tflops),
              "device_peak_bytes": device_peak_bytes(), "loss": float(metrics["loss"]),
              "census": hlo_census.census(text, peak_tflops, bandwidth_gbs)}
    return result

  def time_augment(self, b: Any) -> dict[str, Any]:
    options = augment.AugmentOptions.from_config(self.config.augment)
    fn = jax.jit(lambda batch, key: augment.augment_batch(augment.prepare_images(batch), key,
                                                          options))
    key = jax.random.key(self.config.seed)
    t = time.perf_counter()
    jax.block_until_ready(fn(self.batch, key))
    first_s = time.perf_counter() - t
    timing = time_steps(lambda: jax.block_until_ready(fn(self.batch, key)), b.warmup_steps,
                        b.steps, b.budget_s)
    return {"compile_and_first_s": first_s, **_rate(timing, self.batch_size, 0.0, 0.0)}

  def time_pipeline(self, b: Any) -> dict[str, Any]:
    """The train step fed by the Grain pipeline; also the pipeline alone."""
    from input_pipeline import pipeline  # Grain: only this part needs it

    records = self.config.data.records
    spec = pipeline.batch_spec(records)
    iterator = pipeline.train_iterator(
        pipeline.split_paths(records, "train"), model_name=self.name,
        batch_size=sharding.local_batch_size(self.batch_size), seed=self.config.seed,
        shuffle_window=self.config.data.shuffle_window, process_index=jax.process_index(),
        process_count=jax.process_count(), workers=self.config.data.workers)
    keys = set(self.host_batch)
    same = tuple(spec.mri_shape) == tuple(self.config.data.mri_shape) and tuple(
        spec.mg_shape) == tuple(self.config.data.mg_shape) and self.train_compiled is not None
    # Same geometry: the executable compiled above; else the jitted step compiles for the records.
    fn = self.train_compiled if same else self.train_jit
    try:
      mb_s, alone = pipeline.pipeline_rate(iterator, b.pipeline_steps, warmup=1)

      def step():
        local = {k: v for k, v in next(iterator).items() if k in keys}
        return self._train_once(fn, sharding.global_batch(local, self.mesh))
      timing = time_steps(step, b.warmup_steps, b.pipeline_steps, b.budget_s)
    finally:
      iterator.close()
    return {"records": str(records), "records_mri_shape": list(spec.mri_shape),
            "recompiled_for_records": not same, "pipeline_alone_examples_per_s": alone,
            "pipeline_alone_payload_mb_per_s": mb_s,
            **_rate(timing, self.batch_size, 0.0, 0.0)}


# ---- the PyTorch part -------------------------------------------------------------------------

def _relative_error(a: Any, b: Any) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def torch_part(config: Any, name: str, host_batch: Mapping[str, np.ndarray],
               variables: Mapping[str, Any], jax_outputs: Mapping[str, np.ndarray] | None,
               peak_tflops: float, model_flops: Mapping[str, float]) -> dict[str, Any]:
  """The PyTorch twin on the same batch and initial weights: eval check, eval and train timing."""
  from mrp_jax.benchmark import torch_baseline

  b = config.benchmark
  batch_size = int(b.batch_size[name])
  make = functools.partial(torch_baseline.Steps, model_config(config, name), config.loss,
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
    timing = time_steps(fn, b.warmup_steps, b.steps, b.budget_s)
    result[part] = {**_rate(timing, batch_size, flop, peak_tflops),
                    "device_peak_bytes": steps.peak_memory_bytes()}
  result["loss"] = float(steps.train_step())
  del steps
  return result


# ---- the job ------------------------------------------------------------------------------------

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
  compiler_options(b.compiler_options)  # a malformed option fails before anything compiles


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
  return devices, measure_matmul_tflops(dtype, b.matmul_size), bandwidth, (
      f"measured: {dtype} matmul {b.matmul_size}^3 on {devices[0]}")


def run(config: Any, workdir: str | Path) -> dict[str, Any]:
  """Runs the benchmark described by ``config.benchmark``; returns what benchmark.json holds."""
  _check(config)
  b = config.benchmark
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out_path = workdir / "benchmark.json"
  devices, peak, bandwidth, source = _devices_and_rates(config)
  result: dict[str, Any] = {
      "environment": environment(devices),
      "settings": {"benchmark": b.to_dict(), "model": config.model.to_dict(),
                   "mri_shape": list(config.data.mri_shape),
                   "mg_shape": list(config.data.mg_shape), "records": config.data.records},
      "models": {}, "notes": []}

  def save() -> None:
    out_path.write_text(json.dumps(result, indent=1, default=str))

  def note(text: str) -> None:
    print(f"benchmark: {text}", flush=True)
    result["notes"].append(text)

  mesh = sharding.make_mesh(devices)
  result["peak"] = {"tflops": peak, "source": source, "bandwidth_gbs": bandwidth or None}
  save()

  torch_inputs = {}
  for name in b.models:
    entry = result["models"][name] = {"jax": {}}
    if "plan" in b.parts and name != "rhpc":
      entry["plan"] = plan_memory(config, name, mesh)
      save()
    if "hlo" in b.parts:
      entry["hlo"] = hlo_part(config, name, mesh, peak, bandwidth, workdir)
      save()
    if not set(b.parts) - COMPILE_ONLY_PARTS:
      continue
    bench = JaxModelBench(config, name, mesh)
    entry.update(batch_size=bench.batch_size, parameters=bench.parameters, flops=bench.flops)
    if name == "iMRrhpc" and tuple(config.data.mri_shape) == flops.FULL_MRI_SHAPE:
      # DESIGN.md's figure for this layout, next to ours (the same convention).
      entry["flops"]["design_encoder_forward"] = flops.DESIGN_GFLOP.get(
          config.model.encoder.layout, 0.0) * 1e9
    outputs = None
    if "eval" in b.parts or "torch" in b.parts:
      entry["jax"]["eval"], outputs = bench.time_eval(peak, b)
      save()
    if "torch" in b.parts:
      torch_inputs[name] = (bench.host_batch, bench.host_variables(), outputs, bench.flops)
    if "train" in b.parts or "pipeline" in b.parts:
      entry["jax"]["train"] = bench.time_train(peak, bandwidth, b, workdir)
      ratio = entry["jax"]["train"]["xla_over_analytic_valid"]
      # Convolutions dominate an imaging model's count; elsewhere the optimizer and elementwise
      # work XLA also counts make any ratio plausible.
      if name != "rhpc" and ratio is not None and not 0.9 <= ratio <= 1.25:
        note(f"{name}: XLA counts {ratio:.2f}x the analytic train FLOPs (valid taps)")
      save()
    if "augment" in b.parts and name != "rhpc":
      entry["jax"]["augment"] = bench.time_augment(b)
      save()
    if "pipeline" in b.parts:
      if config.data.records:
        entry["jax"]["pipeline"] = bench.time_pipeline(b)
      else:
        note(f"{name}: pipeline part skipped: config.data.records is empty")
      save()
    del bench

  for name, (host_batch, variables, outputs, model_flops) in torch_inputs.items():
    try:
      entry = result["models"][name]
      entry["torch"] = torch_part(config, name, host_batch, variables, outputs, peak,
                                  model_flops)
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

  print(format_table(result), flush=True)
  print(f"benchmark: wrote {out_path}", flush=True)
  return result


def _fmt(value: Any, scale: float = 1.0, digits: int = 1) -> str:
  return "-" if value is None else f"{value * scale:.{digits}f}"


def _plan_text(row: Mapping[str, Any]) -> str:
  text = f"{_fmt(row['residual_bytes'], 1e-9, 2)} GB kept for backward"
  if "error" in row:
    return f"{text}; compile failed: {row['error']}"
  if "planned_bytes" not in row:
    return text + " (not compiled)"
  return (f"{text}, {_fmt(row['planned_bytes'], 1e-9, 2)} GB planned by XLA "
          f"({_fmt(row['temp_bytes'], 1e-9, 2)} GB temporaries), compile "
          f"{_fmt(row['compile_s'], 1, 1)} s")


def format_table(result: Mapping[str, Any]) -> str:
  """One row per model, framework and part."""
  env = result["environment"]
  lines = [f"benchmark {env['date']} on {env['device_kind']} x{env['device_count']} "
           f"(jax {env['jax']}); peak {result['peak']['tflops']:.3g} TFLOP/s "
           f"({result['peak']['source']})",
           f"{'model':<9} {'fw':<5} {'part':<8} {'median ms':>10} {'p10':>8} {'p90':>8} "
           f"{'ex/s':>9} {'GFLOP/ex':>9} {'XLA/an.':>7} {'MFU %':>6} {'compile s':>9} "
           f"{'plan GB':>8} {'peak GB':>8}"]
  for name, entry in result["models"].items():
    rows = [("jax", part, r) for part, r in entry["jax"].items()]
    rows += [("torch", part, entry["torch"][part]) for part in ("eval", "train")
             if part in entry.get("torch", {})]
    for framework, part, r in rows:
      flop = {"eval": "forward", "train": "train"}.get(part)
      planned = (r.get("memory") or {}).get("planned_bytes")
      lines.append(
          f"{name:<9} {framework:<5} {part:<8} "
          f"{_fmt(r['median_s'], 1e3, 2):>10} {_fmt(r['p10_s'], 1e3, 2):>8} "
          f"{_fmt(r['p90_s'], 1e3, 2):>8} {_fmt(r['examples_per_s'], 1, 2):>9} "
          f"{_fmt(entry['flops'][flop] if flop else None, 1e-9, 2):>9} "
          f"{_fmt(r.get('xla_over_analytic_valid'), 1, 3):>7} {_fmt(r.get('mfu'), 100, 1):>6} "
          f"{_fmt(r.get('compile_s'), 1, 1):>9} {_fmt(planned, 1e-9, 2):>8} "
          f"{_fmt(r.get('device_peak_bytes'), 1e-9, 2):>8}")
    for part, r in entry.get("hlo", {}).items():
      if part in ("batch_size", "devices", "flops"):
        continue
      c, devices = r["census"], entry["hlo"]["devices"]
      lines.append(
          f"{name:<9} hlo   {part:<8} batch {entry['hlo']['batch_size']}"
          + (f" over {devices} devices (figures per device)" if devices > 1 else "") + ": "
          f"{c['kernels']} kernels, {c['gflop']:.0f} GFLOP, {c['gb']:.1f} GB moved, roofline "
          f"floor {c['floor_ms']:.1f} ms (convolutions {_fmt(c['conv_share_of_floor'], 100)}%), "
          f"MFU ceiling {_fmt(r['mfu_ceiling'], 100)}%, plan {_fmt(r['planned_bytes'], 1e-9, 2)}"
          f" GB, compile {r['compile_s']:.1f} s; " + ", ".join(
              f"{k} x{v}" for k, v in c["conv_layouts"].items()))
    for r in entry.get("plan", []):
      lines.append(f"{name:<9} plan  remat={r['remat']:<5} "
                   f"batch {r['batch_size']:>4}: " + _plan_text(r))
    if "jax_over_torch" in entry:
      ratios = ", ".join(f"{k} {v:.2f}" for k, v in entry["jax_over_torch"].items())
      errors = ", ".join(f"{k} {v:.1e}" for k, v in
                         entry["torch"].get("eval_relative_error", {}).items())
      lines.append(f"{'':<9} JAX/PyTorch examples/s: {ratios}; eval outputs rel. error: {errors}")
  lines += [f"note: {n}" for n in result["notes"]]
  return "\n".join(lines)

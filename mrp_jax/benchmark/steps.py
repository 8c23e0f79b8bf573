"""What the benchmark runs: each model's config, state, synthetic batch and compiled steps.

The state and the train step are the train job's (mrp_jax/core/state.py), the eval step
evaluation's (mrp_jax/core/inference.py): the benchmark times what training runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

from input_pipeline import encoding, schema
from input_pipeline.feed import batching
from input_pipeline.geometries import preset
from mrp_jax import models
from mrp_jax.benchmark import (
  flops,
  hlo_census,
  measure,
)
from mrp_jax.core import augment, inference, sharding
from mrp_jax.core import state as state_lib


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




def synthetic_spec(config: Any) -> batching.BatchSpec:
  """The image shapes of the synthetic batches: the geometry preset config.data.geometry."""
  geometry = preset(config.data.geometry)
  return batching.BatchSpec(mri_shape=geometry.mri_box, mri_dtype="float32",
                            mg_shape=geometry.mg_size, mg_dtype="float32")


def train_setup(config: Any, name: str, mesh: jax.sharding.Mesh,
                 model_cfg: Mapping[str, Any] | None = None
                 ) -> tuple[state_lib.StateRecipe, Callable[..., Any]]:
  """The state recipe of model ``name`` (nothing allocated) and the train job's jitted step
  (augmentation inside when benchmark.augment)."""
  recipe = state_lib.build_state(config, mesh, synthetic_spec(config),
                                 model_cfg or model_config(config, name))
  return recipe, state_lib.jit_train_step(
      recipe, config, mesh, config.augment if config.benchmark.augment else None)


def encoder_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
  """The ResNet's keyword arguments for flops.py (None for rhpc, which has no encoder)."""
  name = model_cfg["name"]
  if name == "rhpc":
    return None
  return models.encoder_kwargs(model_cfg["encoder"], 2 if name == "iMGrhpc" else 3, "float32")


def abstract_batch(config: Any, name: str, batch_size: int,
                   sharding_: jax.sharding.Sharding | None = None) -> dict[str, Any]:
  """Shapes of a global batch (a batch of one, widened: a full-geometry batch is never
  allocated)."""
  spec = synthetic_spec(config)
  one = models.dummy_batch(name, 1, spec.mri_shape, spec.mg_shape)
  return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype, sharding=sharding_)
          for k, v in one.items()}


class JaxModelBench:
  """One model's state, synthetic device batch and compiled steps."""

  def __init__(self, config: Any, name: str, mesh: jax.sharding.Mesh):
    self.config, self.name, self.mesh = config, name, mesh
    self.model_config = model_config(config, name)
    self.batch_size = int(config.benchmark.batch_size[name])
    spec = synthetic_spec(config)
    mri_shape, mg_shape = spec.mri_shape, spec.mg_shape
    self.host_batch = synthetic_batch(name, self.batch_size, mri_shape, mg_shape, config.seed)
    self.batch_sharding = sharding.batch_sharding(mesh)
    self.batch = jax.device_put(self.host_batch, self.batch_sharding)
    recipe, self.train_jit = train_setup(config, name, mesh, self.model_config)
    self.model = recipe.model
    self.state = recipe.create(config.seed)
    self.eval_jit = inference.jit_eval_step(self.model)
    self.encoder = encoder_kwargs(self.model_config)
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
    compiled = lowered.compile(compiler_options=measure.compiler_options(self.config.benchmark
                                                                 .compiler_options))
    info = {"lower_s": lower_s, "compile_s": time.perf_counter() - t,
            "xla_lowered": measure.cost_analysis(lowered.cost_analysis()),
            "xla": measure.cost_analysis(compiled.cost_analysis()),
            "memory": measure.memory_analysis(compiled)}
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
    timing = measure.time_steps(lambda: jax.block_until_ready(
        compiled(state.params, state.batch_stats, self.batch)), b.warmup_steps, b.steps,
        b.budget_s)
    result = {**info, **self._flop_fields(info, self.flops["forward"],
                                          self.flops["forward_valid"]),
              **measure.rate(timing, self.batch_size, self.flops["forward"], peak_tflops),
              "device_peak_bytes": measure.device_peak_bytes()}
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
    timing = measure.time_steps(lambda: self._train_once(compiled, self.batch), b.warmup_steps,
                                b.steps, b.budget_s)
    metrics = jax.device_get(self._train_once(compiled, self.batch))
    result = {**info, **self._flop_fields(info, self.flops["train"], self.flops["train_valid"]),
              **measure.rate(timing, self.batch_size, self.flops["train"], peak_tflops),
              "device_peak_bytes": measure.device_peak_bytes(), "loss": float(metrics["loss"]),
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
    timing = measure.time_steps(lambda: jax.block_until_ready(fn(self.batch, key)), b.warmup_steps,
                        b.steps, b.budget_s)
    return {"compile_and_first_s": first_s, **measure.rate(timing, self.batch_size, 0.0, 0.0)}

  def time_pipeline(self, b: Any) -> dict[str, Any]:
    """The train step fed by the Grain pipeline, and the same step on a batch already on the
    devices, taken in turn (a shared machine's load weighs on both alike); also the pipeline
    alone."""
    from input_pipeline import records as records_lib
    from input_pipeline.feed import pipeline, throughput  # Grain: only this part
    from mrp_jax.training import train  # the train job's choice of views

    records = self.config.data.records
    spec = pipeline.batch_spec(records)
    views = train.uses_views(self.config.data, self.mesh, records_lib.read_manifest(records))
    iterator = pipeline.train_iterator(pipeline.split_paths(records, "train"), pipeline.TrainFeed(
        model_name=self.name, batch_size=sharding.local_batch_size(self.batch_size),
        seed=self.config.seed, shuffle_window=self.config.data.shuffle_window,
        process_index=jax.process_index(), process_count=jax.process_count(),
        workers=self.config.data.workers, views=views))
    keys = set(self.host_batch)
    synthetic = synthetic_spec(self.config)
    same = (spec.mri_shape, spec.mg_shape) == (synthetic.mri_shape, synthetic.mg_shape) and (
        self.train_compiled is not None)
    # Same geometry: the executable compiled above; else the jitted step compiles for the
    # records. Views are another argument structure: the jitted step compiles for them.
    fn = self.train_compiled if same and not views else self.train_jit
    device_fn = self.train_compiled if same else self.train_jit

    def next_batch() -> dict[str, jax.Array]:
      local = {k: v for k, v in next(iterator).items() if k in keys}
      return sharding.global_batch(local, self.mesh)

    try:
      alone = throughput.pipeline_rate(iterator, b.pipeline_steps, warmup=1)
      # The records' geometry, stacked, on the devices: the batch the step would wish for.
      on_device = jax.block_until_ready(sharding.global_batch(
          batching.stack_views({k: v for k, v in next(iterator).items() if k in keys}),
          self.mesh))
      timing = measure.time_alternating(
          {"fed": lambda: self._train_once(fn, next_batch()),
           "device": lambda: self._train_once(device_fn, on_device)},
          b.warmup_steps, b.pipeline_steps, b.budget_s)
    finally:
      iterator.close()
    return {"records": str(records), "records_mri_shape": list(spec.mri_shape), "views": views,
            "recompiled_for_records": not same,
            "pipeline_alone_examples_per_s": alone.per_s,
            "pipeline_alone_payload_mb_per_s": alone.mb_per_s,
            **measure.rate(timing["fed"], self.batch_size, 0.0, 0.0),
            "device_batch": measure.rate(timing["device"], self.batch_size, 0.0, 0.0),
            "fed_over_device": timing["fed"]["median_s"] / timing["device"]["median_s"]}

"""One iMRrhpc train step on 1 device, on 4 devices (the batch given as the input pipeline's
views, which the host stacks for several devices), and on 4 devices with FSDP, for
tests/test_train.py (a subprocess: the device count is fixed when JAX starts).

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharded_step.py

Prints one JSON line: per setting, the step's metrics, a checksum of the new parameters, and
how many state leaves ended up sharded.
"""

import json

import jax
import numpy as np

from configs import iMRrhpc
from input_pipeline import clinical_table, encoding
from input_pipeline.feed import batching
from input_pipeline.schema import Phase
from mrp_jax import models
from mrp_jax.core import sharding
from mrp_jax.core import state as state_lib


def run(devices: int, fsdp: bool, views: bool = False) -> dict:
  config = iMRrhpc.get_config("tiny")
  config.mesh.fsdp, config.mesh.fsdp_min_size = fsdp, 256
  # Smaller than 'tiny': three SPMD compilations of the step must stay cheap on CPU.
  shape = (8, 8, 16)
  config.model.encoder.width = 4
  config.model.head_dim = config.model.rhpc_hidden_dim = 16
  config.train.warmup_steps = 0  # the first step moves the parameters
  mesh = sharding.make_mesh(jax.devices()[:devices])
  spec = batching.BatchSpec(mri_shape=shape, mri_dtype="float16", mg_shape=(32, 16),
                            mg_dtype="uint16")
  recipe = state_lib.build_state(config, mesh, spec)  # the train job's state and step
  state = recipe.create(0)

  rng = np.random.default_rng(0)
  batch = models.dummy_batch("iMRrhpc", 4, shape)
  batch["mri"] = rng.normal(size=batch["mri"].shape).astype(np.float16)
  batch["mri_mask"][0, 1] = False  # one Pre-only patient
  batch["mri"][0, 1] = 0
  batch["mri_phase"][:] = [Phase.PRE, Phase.POST]
  batch["label"] = np.array([1, 0, 1, 0], np.float32)
  parsed = clinical_table.parse_rows([{"age": 41, "Molecular subtype": "TNBC", "laterality": "left",
                               "cT": "2", "grade": "poor"},
                              {"age": 67, "Molecular subtype": "luminal a", "cN": "1"},
                              {"laterality": "right", "histology": "lobular"}, {}])
  batch["rhpc"] = encoding.model_inputs(parsed)
  batch["aux_targets"], batch["aux_masks"] = encoding.aux_targets(parsed)  # auxiliary losses too
  if views:  # the input pipeline's form: per row, its slots' volumes (stacked on the host)
    batch["mri"] = tuple(tuple(row) for row in batch["mri"])
  step = state_lib.jit_train_step(recipe, config, mesh, config.augment)
  state, metrics = step(state, sharding.global_batch(batch, mesh))
  leaves = jax.tree.leaves(state.params)
  sharded = sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state))
  return {
      "devices": mesh.size,
      "metrics": {k: float(v) for k, v in jax.device_get(metrics).items()},
      "param_checksum": float(sum(np.abs(np.asarray(p, np.float64)).sum() for p in leaves)),
      "sharded_leaves": int(sharded),
  }


if __name__ == "__main__":
  jax.config.update("jax_default_matmul_precision", "highest")
  assert jax.device_count() == 4, jax.devices()
  print(json.dumps({"one": run(1, False), "four": run(4, False, views=True),
                    "fsdp": run(4, True)}))

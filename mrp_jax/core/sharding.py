"""One device mesh and the rules that place state and batches on it.

The mesh has a single axis, 'data', over every device of every host. Batches are split along
their leading axis over it (data parallelism); BatchNorm statistics are computed over the
global batch because the jitted step sees global arrays (cross-replica BatchNorm by
construction). Parameters and optimizer state are replicated, or with ``fsdp`` each array of at
least ``fsdp_min_size`` elements is split along its largest dimension divisible by the number of
devices (ZeRO-3 / FSDP style: XLA gathers them where they are used).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from input_pipeline.feed import batching
from mrp_jax import configuration as cfg

DATA = "data"

# config.mesh: how state_shardings places the state.
CONFIG_RULES: dict[str, cfg.Rule] = {
    "mesh.fsdp": cfg.BOOLEAN,
    "mesh.fsdp_min_size": cfg.POSITIVE_INT,
}


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA))


def fsdp_spec(shape: tuple[int, ...], num_devices: int, min_size: int) -> P:
  """Split the largest dimension divisible by the device count, if the array is large enough."""
  if num_devices == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % num_devices == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp: bool, min_size: int) -> Any:
  """A sharding for every leaf of an abstract train state (jax.eval_shape output)."""
  def rule(leaf):
    if not fsdp or not hasattr(leaf, "shape"):
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), mesh.size, min_size))
  return jax.tree.map(rule, abstract_state)


def global_batch(local: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
  """Host-local batch (this process's rows) -> global arrays sharded over 'data'.

  Every process passes its own rows; together they form the global batch (process k's rows
  come k-th), without any host reading another's data.

  An image entry in the pipeline's ``views`` form (per row, a tuple of its slots' arrays:
  input_pipeline/feed/batching.py) stays a tuple on one device: each array is put there as it is
  (on the CPU backend a 64-byte aligned array is used in place, not copied; on an accelerator
  one transfer each), and ``augment.prepare_images`` stacks them inside the step. On several
  devices the host stacks them first (a copy) and the batch is split as usual.
  """
  sharding = batch_sharding(mesh)
  if mesh.size > 1:
    local = batching.stack_views(local)
  return {k: jax.tree.map(lambda a: jax.device_put(a, sharding), v) if batching.is_views(v)
          else jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def local_batch_size(global_size: int) -> int:
  """This process's share of the global batch; the global batch must split evenly."""
  count = jax.process_count()
  if global_size % jax.device_count():
    raise ValueError(f"config.train.batch_size={global_size} must be a multiple of the "
                     f"{jax.device_count()} devices")
  return global_size // count

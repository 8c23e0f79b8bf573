"""One state builder for training, evaluation and the benchmark: shapes first, then shardings.

``build_state`` makes the model and optimiser from a config, traces the initial state's shapes
(``jax.eval_shape``: nothing is allocated), and derives each leaf's sharding on the mesh.
Training creates the state born sharded from it (:meth:`StateRecipe.create`) or restores a
checkpoint into its abstract state; evaluation restores the best checkpoint; the benchmark
compiles from its shapes. :func:`jit_train_step` is the train job's compiled step, donated state
in and out, batch sharded over the data axis.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import ml_collections
import optax

from input_pipeline.feed import batching
from mrp_jax import configuration, models
from mrp_jax.core import augment, sharding, train_step
from mrp_jax.models import losses

# Everything build_state and jit_train_step read: the model, its loss, the optimiser, the
# mesh and the augmentation (the example's shapes come from the records, not the config).
CONFIG_CHECKS: tuple[configuration.Check, ...] = (
    models.CONFIG_RULES, losses.CONFIG_RULES, train_step.CONFIG_RULES, sharding.CONFIG_RULES,
    augment.config_problems)


@dataclasses.dataclass(frozen=True)
class StateRecipe:
  """How to make a model's TrainState on a mesh.

  Attributes:
    model: the Flax module.
    optimizer: its optax transformation.
    init: ``rng -> TrainState`` (pure; jit it with ``out_shardings=shardings``).
    abstract: the state's shapes and dtypes (jax.ShapeDtypeStruct leaves).
    shardings: a NamedSharding per leaf (replicated, or FSDP-sharded when config.mesh.fsdp).
  """
  model: nn.Module
  optimizer: optax.GradientTransformation
  init: Callable[[jax.Array], train_step.TrainState]
  abstract: train_step.TrainState
  shardings: train_step.TrainState

  def create(self, seed: int) -> train_step.TrainState:
    """The initial state, each leaf created where its sharding puts it."""
    return jax.jit(self.init, out_shardings=self.shardings)(jax.random.key(seed))

  @property
  def abstract_sharded(self) -> train_step.TrainState:
    """The abstract state with shardings: what a checkpoint is restored into."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract, self.shardings)


def build_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                spec: batching.BatchSpec,
                model_config: Mapping[str, Any] | None = None) -> StateRecipe:
  """The state recipe of ``config`` (its model, train, mesh sections and seed).

  Args:
    spec: the image shapes of the batches (the records', :func:`pipeline.batch_spec`, or a
      run's, from its preprocessing.json); the state is traced on a batch of them.
    model_config: a model section to use instead of ``config.model`` (the benchmark builds
      all three models from one config).
  """
  model_config = config.model if model_config is None else model_config
  model = models.create_model(model_config)
  optimizer = train_step.create_optimizer(config.train)
  example = models.dummy_batch(model_config["name"], 1, spec.mri_shape, spec.mg_shape)
  init = functools.partial(train_step.init_state, model, example, optimizer)
  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = sharding.state_shardings(abstract, mesh, config.mesh.fsdp,
                                       config.mesh.fsdp_min_size)
  return StateRecipe(model, optimizer, init, abstract, shardings)


def make_preprocess(augment_config: Mapping[str, Any] | None
                    ) -> Callable[[Any, jax.Array], Any]:
  """Inside the train step: image scaling, then on-device augmentation (None: none)."""
  if augment_config is None:
    return lambda batch, key: augment.prepare_images(batch)
  options = augment.AugmentOptions.from_config(augment_config)
  return lambda batch, key: augment.augment_batch(augment.prepare_images(batch), key, options)


def jit_train_step(recipe: StateRecipe, config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh, augment_config: Mapping[str, Any] | None
                   ) -> Callable[..., Any]:
  """The jitted ``(state, batch) -> (state, metrics)``: state donated, batch data-parallel,
  metrics replicated."""
  step = train_step.make_train_step(recipe.model, recipe.optimizer, config.loss,
                                    train_step.learning_rate_schedule(config.train),
                                    preprocess=make_preprocess(augment_config))
  return jax.jit(step, in_shardings=(recipe.shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(recipe.shardings, sharding.replicated(mesh)), donate_argnums=0)

"""The training state, the optimiser and the pure train step (sharding is added by the caller).

``train_step(state, batch)`` is a pure function of arrays: the caller jits it with shardings and
donated state. It returns the new state and a flat dict of scalars: every loss term, the
learning rate, and the global norms of gradients, parameters and updates.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mrp_jax.models import losses


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # base key; per-step keys are folded from it with the step


def learning_rate_schedule(train: Mapping[str, Any]) -> optax.Schedule:
  if train["optimizer"] == "paper":
    return optax.constant_schedule(train["learning_rate"])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train["learning_rate"], warmup_steps=train["warmup_steps"],
      decay_steps=max(train["num_steps"], train["warmup_steps"] + 1), end_value=0.0)


def create_optimizer(train: Mapping[str, Any]) -> optax.GradientTransformation:
  """AdamW with warmup-cosine (default), or the authors' Adam with L2 weight decay ('paper').

  The paper preset follows PyTorch's Adam(weight_decay=...) (decay added to the gradient before
  the moments); its ReduceLROnPlateau schedule is driven by validation, outside the step.
  """
  schedule = learning_rate_schedule(train)
  parts = []
  if train["grad_clip_norm"] > 0:
    parts.append(optax.clip_by_global_norm(train["grad_clip_norm"]))
  if train["optimizer"] == "paper":
    parts += [optax.add_decayed_weights(train["weight_decay"]),
              optax.adam(schedule, b1=train["b1"], b2=train["b2"])]
  else:
    parts.append(optax.adamw(schedule, b1=train["b1"], b2=train["b2"],
                             weight_decay=train["weight_decay"]))
  return optax.chain(*parts)


def init_state(model: nn.Module, batch: Mapping[str, Any], optimizer: optax.GradientTransformation,
               rng: jax.Array) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  # Jitted: one compilation instead of one per initialiser (seconds on CPU).
  variables = jax.jit(lambda key, b: model.init(key, b, train=False))(init_rng, batch)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=optimizer.init(params), rng=state_rng)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    loss: Mapping[str, Any],
                    schedule: optax.Schedule | None = None) -> Callable[..., Any]:
  """Builds ``train_step(state, batch) -> (state, metrics)``."""
  loss_kwargs = dict(response_weight=loss["response_weight"],
                     image_response_weight=loss["image_response_weight"],
                     aux_weights=dict(loss["aux_weights"]))

  def loss_fn(params, batch_stats, batch):
    outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch,
                                   train=True, mutable=["batch_stats"])
    total, terms = losses.compute_loss(outputs, batch, **loss_kwargs)
    return total, (terms, updates.get("batch_stats", batch_stats))

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    grads, (terms, batch_stats) = jax.grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **terms,
        "norm/grads": optax.tree.norm(grads),
        "norm/params": optax.tree.norm(params),
        "norm/updates": optax.tree.norm(updates),
    }
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step

"""The training state, the optimiser and the pure train step (sharding is added by the caller).

``train_step(state, batch)`` is a pure function of arrays: the caller jits it with shardings and
donated state. It returns the new state and a flat dict of scalars: every loss term, the
learning rate, and the global norms of gradients, parameters and updates. The step's random key
is the state's key folded with the step, so a resumed run draws the same augmentations.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mrp_jax import configuration as cfg
from mrp_jax.models import losses


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2] raw key data (checkpoints hold plain arrays); per step folded
  lr_scale: jax.Array  # float32 scalar, multiplies the schedule (the paper's plateau halving)
  plateau: jax.Array  # float32 [2]: best validation AUROC so far, evaluations without gain

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


# adamw: AdamW with warmup-cosine; paper: the authors' Adam with L2 decay and ReduceLROnPlateau.
OPTIMIZERS = ("adamw", "paper")
# What the best checkpoint maximises: the mean validation AUROC of the model's pCR output, or of
# a fused model's image-only output (the knowledge predictor's P(pCR)).
BEST_METRICS = ("auroc", "image_auroc")
ENCODER = "image_encoder"  # the fused models' image encoder (models/fusion.py)

# The fields of config.train the optimiser and its schedule read.
CONFIG_RULES: dict[str, cfg.Rule] = {
    "train.num_steps": cfg.POSITIVE_INT,
    "train.optimizer": cfg.one_of(*OPTIMIZERS),
    "train.learning_rate": cfg.POSITIVE,
    "train.warmup_steps": cfg.COUNT,
    "train.weight_decay": cfg.NON_NEGATIVE,
    "train.b1": cfg.UNIT_INTERVAL,
    "train.b2": cfg.UNIT_INTERVAL,
    "train.grad_clip_norm": cfg.NON_NEGATIVE,
    "train.encoder_learning_rate_scale": (
        lambda v: isinstance(v, (int, float)) and v >= 0,
        "must be >= 0 (0 freezes the encoder's weights)"),
    "train.encoder_weight_decay": (lambda v: v is None or cfg.NON_NEGATIVE[0](v),
                                   "must be >= 0, or None for train.weight_decay"),
}


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

  A fused model's image encoder gets its own rate and decay when ``encoder_learning_rate_scale``
  is not 1 or ``encoder_weight_decay`` is set (optax.multi_transform over the top-level
  'image_encoder' parameters; scale 0 freezes its weights, not its batch statistics). Otherwise
  the optimizer and its state are exactly the single-group ones.
  """
  schedule = learning_rate_schedule(train)
  parts = []
  if train["grad_clip_norm"] > 0:
    parts.append(optax.clip_by_global_norm(train["grad_clip_norm"]))
  scale = train.get("encoder_learning_rate_scale", 1.0)
  decay = train.get("encoder_weight_decay")
  if scale == 1.0 and decay is None:
    parts += _adam(train, schedule, train["weight_decay"])
  else:
    encoder = (optax.chain(*_adam(train, lambda step: schedule(step) * scale,
                                  train["weight_decay"] if decay is None else decay))
               if scale > 0 else optax.set_to_zero())
    parts.append(optax.multi_transform(
        {"encoder": encoder, "rest": optax.chain(*_adam(train, schedule, train["weight_decay"]))},
        _encoder_labels))
  return optax.chain(*parts)


def _adam(train: Mapping[str, Any], schedule: optax.Schedule, weight_decay: float
          ) -> list[optax.GradientTransformation]:
  if train["optimizer"] == "paper":
    return [optax.add_decayed_weights(weight_decay),
            optax.adam(schedule, b1=train["b1"], b2=train["b2"])]
  return [optax.adamw(schedule, b1=train["b1"], b2=train["b2"], weight_decay=weight_decay)]


def _encoder_labels(params: Mapping[str, Any]) -> dict[str, Any]:
  return {name: jax.tree.map(lambda _, n=name: "encoder" if n == ENCODER else "rest", tree)
          for name, tree in params.items()}


def init_state(model: nn.Module, batch: Mapping[str, Any], optimizer: optax.GradientTransformation,
               rng: jax.Array) -> TrainState:
  """The initial state. Jit it (with out_shardings) to create the state sharded on devices."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, batch, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=optimizer.init(params), rng=jax.random.key_data(state_rng),
                    lr_scale=jnp.ones((), jnp.float32),
                    plateau=jnp.asarray([-jnp.inf, 0.0], jnp.float32))


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    loss: Mapping[str, Any], schedule: optax.Schedule | None = None,
                    preprocess: Callable[[Any, jax.Array], Any] | None = None
                    ) -> Callable[..., Any]:
  """Builds ``train_step(state, batch) -> (state, metrics)``.

  Args:
    preprocess: ``(batch, key) -> batch`` run first inside the step (image scaling and
      augmentation on the device); None leaves the batch as it is.
  """
  loss_kwargs = dict(response_weight=loss["response_weight"],
                     image_response_weight=loss["image_response_weight"],
                     aux_weights=dict(loss["aux_weights"]))

  def loss_fn(params, batch_stats, batch, key):
    outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch,
                                   train=True, mutable=["batch_stats"], rngs={"dropout": key})
    total, terms = losses.compute_loss(outputs, batch, **loss_kwargs)
    return total, (terms, updates.get("batch_stats", batch_stats))

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    augment_key, dropout_key = jax.random.split(state.step_key())
    if preprocess is not None:
      batch = preprocess(batch, augment_key)
    grads, (terms, batch_stats) = jax.grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, dropout_key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    # Adam(W) updates are linear in the learning rate: scaling them scales the rate.
    updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **terms,
        "norm/grads": optax.tree.norm(grads),
        "norm/params": optax.tree.norm(params),
        "norm/updates": optax.tree.norm(updates),
    }
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step) * state.lr_scale
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step

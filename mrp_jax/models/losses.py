"""Training losses: pCR BCE (fused and image-only) and the knowledge predictor's rhpc targets.

Every term is a masked mean over the examples that carry it: padding examples
('example_mask' = 0), examples without images (for the image-only terms) and Unknown rhpc
targets (masked by encoding.aux_targets) contribute nothing. Weights follow the authors' code
(docs/background.md section 1) and come from the config.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from input_pipeline import encoding, schema
from mrp_jax import configuration as cfg

# config.loss: the weights of the terms below.
CONFIG_RULES: dict[str, cfg.Rule] = {
    "loss.response_weight": cfg.NON_NEGATIVE,
    "loss.image_response_weight": cfg.NON_NEGATIVE,
    **{f"loss.aux_weights.{name}": cfg.NON_NEGATIVE for name in schema.VARIABLE_NAMES},
}


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _aux_terms(aux: jax.Array, targets: jax.Array, masks: jax.Array,
               present: jax.Array) -> dict[str, jax.Array]:
  """Per-variable auxiliary losses, unweighted. aux/targets/masks [B, AUX_DIM]; present [B]."""
  terms = {}
  aux = aux.astype(jnp.float32)
  for var, (start, stop) in zip(schema.VARIABLES, encoding.AUX_SLICES):
    logits, target = aux[:, start:stop], targets[:, start:stop]
    mask = masks[:, start:stop] * present[:, None]
    if var.aux_loss == schema.AuxLoss.CE:
      per_example = optax.softmax_cross_entropy(logits, target)
      terms[var.name] = _masked_mean(per_example, mask[:, 0])
    elif var.aux_loss == schema.AuxLoss.BCE:
      terms[var.name] = _masked_mean(optax.sigmoid_binary_cross_entropy(logits, target), mask)
    else:
      terms[var.name] = _masked_mean((logits[:, 0] - target[:, 0]) ** 2, mask[:, 0])
  return terms


def compute_loss(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *,
                 response_weight: float, image_response_weight: float,
                 aux_weights: Mapping[str, float]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss and its terms.

  Args:
    outputs: model outputs ('logit', and for imaging models 'image_present', optionally
      'image_logit' and 'aux').
    batch: 'label' [B] (1 pCR / 0 non-pCR), 'example_mask' [B] (0 for padding),
      'aux_targets' and 'aux_masks' [B, encoding.AUX_DIM] when the model has a knowledge predictor.
    response_weight, image_response_weight: BCE weights (10 in the authors' code).
    aux_weights: per rhpc variable name.

  Returns:
    (loss, terms): terms holds each weighted component under 'loss/<name>' and the total
    under 'loss'.
  """
  label = batch["label"].astype(jnp.float32)
  valid = batch["example_mask"].astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(outputs["logit"].astype(jnp.float32), label)
  terms = {"loss/response": response_weight * _masked_mean(bce, valid)}
  if "image_logit" in outputs:
    present = valid * outputs["image_present"].astype(jnp.float32)
    image_bce = optax.sigmoid_binary_cross_entropy(
        outputs["image_logit"].astype(jnp.float32), label)
    terms["loss/image_response"] = image_response_weight * _masked_mean(image_bce, present)
    aux = _aux_terms(outputs["aux"], batch["aux_targets"], batch["aux_masks"], present)
    for name, value in aux.items():
      terms[f"loss/aux/{name}"] = aux_weights[name] * value
  total = sum(terms.values())
  return total, {"loss": total, **terms}

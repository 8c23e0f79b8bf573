"""iMGrhpc and iMRrhpc: an image encoder fused with the rhpc encoder (paper Fig. 2, Methods).

One module serves both models. Images arrive in ``slots``: iMGrhpc has one (the Pre-NAT
mammogram), iMRrhpc two (the baseline Pre-NAT subtraction volume and the follow-up Mid- or
Post-NAT volume). A single encoder instance is applied to every slot, so the Siamese branches
share parameters by construction. Each slot's features get its phase's embedding added
(one-hot Pre/Mid/Post -> Linear -> ELU), missing slots are zeroed, and the slot features are
concatenated into the image representation. From it:

* the cross-modal knowledge predictor (image features only) predicts every rhpc variable and the
  response; it exists to make the image encoder learn what rhpc knows, and is dropped at
  inference;
* the response head predicts pCR from image and rhpc features together.

Modality dropout (``modality_dropout`` > 0, training only): per example the response head is
shown the image features as if the patient had no images, so it cannot lean on image features
alone. Without it, an image encoder that memorises its training patients (easy for a 3D ResNet
on a few hundred cases) drives the fused head to ignore rhpc, and the fused model generalises
worse than rhpc alone (docs/experiments.md, "The fused models on small cohorts"). The same
zeros are what the head sees for a patient whose images are missing, so dropout also trains
the missing-modality path.

Ablations of the paper: ``knowledge_predictor=False`` removes the predictor's parameters,
``time_embedding=False`` the phase embedding's; nothing else changes shape.

Siamese BatchNorm: with ``siamese_batching='joint'`` (default) the slots are folded into the
batch and normalised with shared statistics over all present images; with 'separate' each slot is
run as its own call (PyTorch semantics of calling one module twice), which normalises baseline and
follow-up with different batch statistics. Why joint is the default: docs/design.md, "Model".
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from input_pipeline import encoding, schema
from mrp_jax.models.resnet import ResNet
from mrp_jax.models.rhpc import RhpcEncoder

SIAMESE_BATCHING = ("joint", "separate")  # one 2B encoder call | one call per branch

class ImagingRhpcModel(nn.Module):
  """Image(s) + rhpc -> pCR logit, image-only logit and auxiliary rhpc predictions.

  Attributes:
    image_key: batch key of the images: 'mg' ([B, 1, H, W]) or 'mri' ([B, 2, D, H, W]).
    encoder: keyword arguments of :class:`ResNet` (spatial_dims, strides, shortcut, ...).
    time_embedding: add the phase embedding to each slot's features.
    knowledge_predictor: build the cross-modal knowledge predictor.
    siamese_batching: 'joint' or 'separate' (module docstring).
    head_dim: hidden width of the response head and the knowledge predictor.
    rhpc_embed_dim, rhpc_hidden_dim: RhpcEncoder sizes.
    modality_dropout: in training, the probability that an example's response head sees no
      image features (as for a patient without images); the knowledge predictor always sees
      them. Needs a 'dropout' rng when > 0. Module docstring: why.
    rhpc_skip: add the rhpc model's own linear classifier on the rhpc features to the response
      head's output, whose last layer then starts at zero: with both rhpc parts warm-started
      from a trained rhpc run the fused model starts as that model and learns what the images
      add (module docstring: why).
    feature_dropout: in training, dropout (rate, inverted scaling) on the pooled image features
      that both heads read: a regulariser against an encoder and heads that memorise a few
      hundred noisy labels. Needs a 'dropout' rng when > 0.
  """
  image_key: str = "mri"
  encoder: Mapping[str, Any] | None = None  # a FrozenDict, so the module stays hashable
  time_embedding: bool = True
  knowledge_predictor: bool = True
  siamese_batching: str = "joint"
  head_dim: int = 256
  rhpc_embed_dim: int = 16
  rhpc_hidden_dim: int = 256
  modality_dropout: float = 0.0
  rhpc_skip: bool = False
  feature_dropout: float = 0.0

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    """Args:
      batch: '<image_key>' [B, S, *spatial] images; '<image_key>_mask' [B, S] bool (slot present);
        '<image_key>_phase' [B, S] int (Phase of each slot); 'rhpc' [B, encoding.INPUT_DIM].
      train: batch statistics and their update (BatchNorm).

    Returns:
      'logit' [B]: fused pCR log-odds; 'image_logit' [B] and 'aux' [B, encoding.AUX_DIM]: knowledge
      predictor outputs (absent when disabled); 'image_present' [B] bool; 'image_features'
      [B, S * F]; 'rhpc_features' [B, rhpc_hidden_dim].
    """
    images = batch[self.image_key]
    slot_mask = batch[f"{self.image_key}_mask"].astype(bool)
    b, s = images.shape[:2]
    encoder = ResNet(**(self.encoder or {}), name="image_encoder")

    if self.siamese_batching == "joint":
      flat = images.reshape((b * s,) + images.shape[2:] + (1,))
      features = encoder(flat, train=train, mask=slot_mask.reshape(-1)).reshape(b, s, -1)
    elif self.siamese_batching == "separate":
      features = jnp.stack([
          encoder(images[:, k, ..., None], train=train, mask=slot_mask[:, k]) for k in range(s)
      ], axis=1)
    else:
      raise ValueError(f"siamese_batching must be 'joint' or 'separate', got "
                       f"{self.siamese_batching!r}")

    if self.time_embedding:
      phase = jax.nn.one_hot(batch[f"{self.image_key}_phase"], len(schema.PHASES))
      features = features + nn.elu(nn.Dense(features.shape[-1], name="time_embedding")(phase))
    features = jnp.where(slot_mask[..., None], features, 0.0)
    image_features = features.reshape(b, -1)
    if train and self.feature_dropout > 0:
      image_features = nn.Dropout(self.feature_dropout, deterministic=False)(
          image_features, rng=self.make_rng("dropout"))
    image_present = jnp.any(slot_mask, axis=1)

    rhpc_features = RhpcEncoder(self.rhpc_embed_dim, self.rhpc_hidden_dim,
                                name="rhpc_encoder")(batch["rhpc"])
    head_image_features = image_features
    if train and self.modality_dropout > 0:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.modality_dropout, (b,))
      head_image_features = jnp.where(keep[:, None], image_features, 0.0)
    fused = jnp.concatenate([head_image_features, rhpc_features], axis=-1)
    hidden = nn.elu(nn.Dense(self.head_dim, name="response_head_0")(fused))
    if self.rhpc_skip:
      logit = (nn.Dense(1, name="rhpc_classifier")(rhpc_features)
               + nn.Dense(1, kernel_init=nn.initializers.zeros, name="response_head_1")(hidden))
    else:
      logit = nn.Dense(1, name="response_head_1")(hidden)
    outputs = {
        "logit": logit[:, 0],
        "image_present": image_present,
        "image_features": image_features,
        "rhpc_features": rhpc_features,
    }
    if self.knowledge_predictor:
      hidden = nn.elu(nn.Dense(self.head_dim, name="knowledge_0")(image_features))
      outputs["aux"] = nn.Dense(encoding.AUX_DIM, name="knowledge_rhpc")(hidden)
      outputs["image_logit"] = nn.Dense(1, name="knowledge_response")(hidden)[:, 0]
    return outputs


"""The three MRP models: rhpc, iMGrhpc, iMRrhpc (Flax Linen modules); the MRP ensemble that
combines them is mrp_jax/evaluation/ensemble.py."""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from input_pipeline import schema
from input_pipeline.feed import batching
from mrp_jax import configuration as cfg
from mrp_jax.models.fusion import SIAMESE_BATCHING, ImagingRhpcModel
from mrp_jax.models.resnet import (
  CONV_LOWERINGS,
  LAYOUTS,
  NORMS,
  REMAT_POLICIES,
  SHORTCUTS,
  ResNet,
  resolve_conv_lowering,
)
from mrp_jax.models.rhpc import RhpcEncoder, RhpcModel

# Declared in schema (no JAX there: the input pipeline's worker processes import it).
MODEL_NAMES, IMAGE_KEYS = schema.MODEL_NAMES, schema.IMAGE_KEYS

# config.model, as create_model and the train job read it.
CONFIG_RULES: dict[str, cfg.Rule] = {
    "model.name": cfg.one_of(*MODEL_NAMES),
    "model.dtype": cfg.one_of("bfloat16", "float32", "float16"),
    "model.rhpc_embed_dim": cfg.POSITIVE_INT,
    "model.rhpc_hidden_dim": cfg.POSITIVE_INT,
    "model.head_dim": cfg.POSITIVE_INT,
    "model.modality_dropout": cfg.UNIT_INTERVAL,
    "model.feature_dropout": cfg.UNIT_INTERVAL,
    "model.siamese_batching": cfg.one_of(*SIAMESE_BATCHING),
    "model.rhpc_skip": cfg.BOOLEAN,
    "model.encoder.layout": cfg.one_of(*LAYOUTS),
    "model.encoder.stem_kernel": (lambda v: cfg.positive_int(v) and v % 2 == 1,
                                  "must be an odd positive integer"),
    "model.encoder.stem_stride": cfg.optional(cfg.POSITIVE_INT),
    "model.encoder.strides": cfg.optional(cfg.ints(4)),
    "model.encoder.dilations": cfg.optional(cfg.ints(4)),
    "model.encoder.shortcut": cfg.one_of(*SHORTCUTS),
    "model.encoder.norm": cfg.one_of(*NORMS),
    "model.encoder.width": cfg.POSITIVE_INT,
    "model.encoder.remat": cfg.one_of("none", *REMAT_POLICIES),
    "model.encoder.stem_space_to_depth": cfg.BOOLEAN,
    "model.encoder.conv_lowering": cfg.one_of("auto", *CONV_LOWERINGS),
    "model.pretrained": cfg.OPTIONAL_FILE,
    "model.rhpc_init": (lambda v: v == "" or os.path.isfile(os.path.join(v, "config.json")),
                        "must be '' or a train workdir of an rhpc run (with config.json)"),
}


def encoder_kwargs(encoder: Mapping[str, Any], spatial_dims: int, dtype: str) -> dict[str, Any]:
  """ResNet keyword arguments from an encoder config (layout preset + explicit overrides)."""
  kwargs = dict(LAYOUTS[encoder["layout"]])
  for key in ("stem_stride", "strides", "dilations"):
    if encoder.get(key) is not None:
      kwargs[key] = tuple(encoder[key]) if key != "stem_stride" else int(encoder[key])
  kwargs.update(spatial_dims=spatial_dims, shortcut=encoder["shortcut"], norm=encoder["norm"],
                width=int(encoder["width"]), stem_kernel=int(encoder["stem_kernel"]),
                remat=encoder["remat"], dtype=jnp.dtype(dtype),
                stem_space_to_depth=bool(encoder.get("stem_space_to_depth", False)),
                conv_lowering=resolve_conv_lowering(encoder.get("conv_lowering", "auto")))
  return kwargs


def create_model(model: Mapping[str, Any]) -> nn.Module:
  """Builds the Flax module named by ``model['name']`` from a model config (configs/common.py)."""
  name = model["name"]
  if name == "rhpc":
    return RhpcModel(embed_dim=model["rhpc_embed_dim"], hidden_dim=model["rhpc_hidden_dim"])
  if name not in IMAGE_KEYS:
    raise ValueError(f"config.model.name must be one of {MODEL_NAMES}, got {name!r}")
  image_key = IMAGE_KEYS[name]
  return ImagingRhpcModel(
      image_key=image_key,
      encoder=flax.core.FrozenDict(
          encoder_kwargs(model["encoder"], 2 if image_key == "mg" else 3, model["dtype"])),
      time_embedding=model["time_embedding"],
      knowledge_predictor=model["knowledge_predictor"],
      siamese_batching=model["siamese_batching"],
      head_dim=model["head_dim"],
      rhpc_embed_dim=model["rhpc_embed_dim"],
      rhpc_hidden_dim=model["rhpc_hidden_dim"],
      modality_dropout=model.get("modality_dropout", 0.0),
      rhpc_skip=model.get("rhpc_skip", False),
      feature_dropout=model.get("feature_dropout", 0.0),
  )


def dummy_batch(model_name: str, batch_size: int, mri_shape=(8, 8, 16),
                mg_shape=(32, 16)) -> dict[str, np.ndarray]:
  """A zero batch of the batch contract (input_pipeline.feed.batching.empty_batch) with every
  example and image slot present and float32 images: for init and eval_shape.

  mri_shape is [z, y, x] voxels, mg_shape [rows, cols] pixels.
  """
  batch = batching.empty_batch(model_name, batch_size, batching.BatchSpec(
      tuple(mri_shape), "float32", tuple(mg_shape), "float32"))
  batch["example_mask"][:] = 1.0
  for key in ("mri_mask", "mg_mask"):
    if key in batch:
      batch[key][:] = True
  return batch


__all__ = ["ImagingRhpcModel", "ResNet", "RhpcEncoder", "RhpcModel", "create_model",
           "dummy_batch", "encoder_kwargs", "CONFIG_RULES", "MODEL_NAMES", "IMAGE_KEYS"]

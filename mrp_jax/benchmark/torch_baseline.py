"""The same models and train step in PyTorch: the baseline the benchmark compares JAX against.

What is ported, module for module and named as our Flax parameters (so weights move across by
name, :func:`load_flax_variables`):

* the ResNet trunk of ``mrp_jax/models/resnet.py`` (2D and 3D; any stem, stage strides and
  dilations, so the 'resnet', 'medicalnet' and 'monai' layouts; shortcut A or B; BatchNorm with
  PyTorch's momentum 0.1 / eps 1e-5, or GroupNorm), global average pool in float32;
* iMRrhpc / iMGrhpc (``fusion.py``): Siamese batching joint or separate, phase embedding added to
  each slot's features, missing slots zeroed, rhpc encoder, response head and knowledge
  predictor; the rhpc model;
* the loss (``losses.py``): fused and image-only pCR BCE and every auxiliary rhpc term with the
  config's weights;
* the optimizer: AdamW (or the 'paper' Adam with L2 decay) with global-norm clipping; the
  learning-rate schedule is left out (a scalar per step).

What is not: masking missing images out of the BatchNorm statistics (the benchmark's synthetic
batches have every slot present, where the two agree), on-device augmentation, and the gradient /
parameter / update norms our step logs. The forward pass equals ours in float32 on the same
weights (tests/test_benchmark.py).

Speed settings: bf16 autocast (when the config's dtype is bfloat16), channels_last(_3d) memory
format, ``cudnn.benchmark``, fused AdamW on CUDA, optional ``torch.compile`` of the model.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

from input_pipeline import encoding, schema


def _norm(kind: str, features: int, spatial_dims: int) -> nn.Module:
  if kind == "batch":
    cls = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
    return cls(features, eps=1e-5, momentum=0.1)
  if kind == "group":
    return nn.GroupNorm(min(32, features), features, eps=1e-5)
  raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class BasicBlock(nn.Module):
  """Two 3x3(x3) convolutions with a residual connection (shortcut A or B)."""

  def __init__(self, in_channels: int, features: int, spatial_dims: int, stride: int,
               dilation: int, shortcut: str, norm: str):
    super().__init__()
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    self.spatial_dims, self.stride, self.shortcut = spatial_dims, stride, shortcut
    self.extra_channels = features - in_channels
    self.conv1 = conv(in_channels, features, 3, stride, padding=dilation, dilation=dilation,
                      bias=False)
    self.bn1 = _norm(norm, features, spatial_dims)
    self.conv2 = conv(features, features, 3, 1, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = _norm(norm, features, spatial_dims)
    self.project = stride != 1 or in_channels != features
    if self.project and shortcut == "B":
      self.downsample_conv = conv(in_channels, features, 1, stride, bias=False)
      self.downsample_bn = _norm(norm, features, spatial_dims)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    residual = x
    if self.project:
      if self.shortcut == "A":  # MedicalNet: strided subsampling + zero channels
        residual = x[(slice(None), slice(None)) + (slice(None, None, self.stride),)
                     * self.spatial_dims]
        residual = F.pad(residual, (0, 0) * self.spatial_dims + (0, self.extra_channels))
      else:
        residual = self.downsample_bn(self.downsample_conv(x))
    return F.relu(y + residual)


class ResNet(nn.Module):
  """:class:`mrp_jax.models.resnet.ResNet` in PyTorch: [N, 1, *spatial] -> [N, features]."""

  def __init__(self, spatial_dims: int = 3, stage_sizes: Sequence[int] = (2, 2, 2, 2),
               stem_kernel: int = 7, stem_stride: int = 2, stem_pool: bool = True,
               strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
               shortcut: str = "B", norm: str = "batch", width: int = 64, **ignored: Any):
    super().__init__()
    del ignored  # dtype and remat: JAX-side settings
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    self.spatial_dims, self.stem_pool = spatial_dims, stem_pool
    self.conv1 = conv(1, width, stem_kernel, stem_stride, padding=stem_kernel // 2, bias=False)
    self.bn1 = _norm(norm, width, spatial_dims)
    self.block_names = []
    channels = width
    for stage, (blocks, stride, dilation) in enumerate(zip(stage_sizes, strides, dilations)):
      features = width * 2**stage
      for block in range(blocks):
        name = f"layer{stage + 1}_{block}"
        self.add_module(name, BasicBlock(channels, features, spatial_dims,
                                         stride if block == 0 else 1, dilation, shortcut, norm))
        self.block_names.append(name)
        channels = features
    self.num_features = channels

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn1(self.conv1(x)))
    if self.stem_pool:
      pool = F.max_pool3d if self.spatial_dims == 3 else F.max_pool2d
      x = pool(x, 3, 2, 1)
    for name in self.block_names:
      x = getattr(self, name)(x)
    return x.float().mean(dim=tuple(range(2, 2 + self.spatial_dims)))


class RhpcEncoder(nn.Module):
  """Per-variable Linear + ELU embeddings, concatenated, two-layer ELU MLP."""

  def __init__(self, embed_dim: int, hidden_dim: int):
    super().__init__()
    self.names = [f"embed_{name}" for name in schema.VARIABLE_NAMES]
    for name, (start, stop) in zip(self.names, encoding.INPUT_SLICES):
      self.add_module(name, nn.Linear(stop - start, embed_dim))
    self.mlp_0 = nn.Linear(embed_dim * len(self.names), hidden_dim)
    self.mlp_1 = nn.Linear(hidden_dim, hidden_dim)

  def forward(self, rhpc: torch.Tensor) -> torch.Tensor:
    x = torch.cat([F.elu(getattr(self, name)(rhpc[:, start:stop]))
                   for name, (start, stop) in zip(self.names, encoding.INPUT_SLICES)], dim=-1)
    return F.elu(self.mlp_1(F.elu(self.mlp_0(x))))


class RhpcModel(nn.Module):
  def __init__(self, embed_dim: int, hidden_dim: int):
    super().__init__()
    self.rhpc_encoder = RhpcEncoder(embed_dim, hidden_dim)
    self.classifier = nn.Linear(hidden_dim, 1)

  def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    features = self.rhpc_encoder(batch["rhpc"].float())
    return {"logit": self.classifier(features)[:, 0], "rhpc_features": features}


class ImagingRhpcModel(nn.Module):
  """iMGrhpc / iMRrhpc (``mrp_jax/models/fusion.py``); images [B, S, *spatial]."""

  def __init__(self, image_key: str, encoder: Mapping[str, Any], time_embedding: bool,
               knowledge_predictor: bool, siamese_batching: str, head_dim: int,
               rhpc_embed_dim: int, rhpc_hidden_dim: int, rhpc_skip: bool = False):
    super().__init__()
    if siamese_batching not in ("joint", "separate"):
      raise ValueError(f"siamese_batching must be 'joint' or 'separate', got "
                       f"{siamese_batching!r}")
    self.image_key, self.siamese_batching = image_key, siamese_batching
    self.slots = 2 if image_key == "mri" else 1
    self.image_encoder = ResNet(**encoder)
    features = self.image_encoder.num_features
    self.time_embedding = nn.Linear(len(schema.PHASES), features) if time_embedding else None
    self.rhpc_encoder = RhpcEncoder(rhpc_embed_dim, rhpc_hidden_dim)
    self.response_head_0 = nn.Linear(self.slots * features + rhpc_hidden_dim, head_dim)
    self.response_head_1 = nn.Linear(head_dim, 1)
    self.rhpc_classifier = nn.Linear(rhpc_hidden_dim, 1) if rhpc_skip else None
    self.knowledge = knowledge_predictor
    if knowledge_predictor:
      self.knowledge_0 = nn.Linear(self.slots * features, head_dim)
      self.knowledge_rhpc = nn.Linear(head_dim, encoding.AUX_DIM)
      self.knowledge_response = nn.Linear(head_dim, 1)

  def _encode(self, images: torch.Tensor) -> torch.Tensor:
    """[N, *spatial] float -> [N, F], channels-last memory layout on the way in."""
    x = images.unsqueeze(1)
    fmt = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
    return self.image_encoder(x.contiguous(memory_format=fmt))

  def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    images = batch[self.image_key].float()
    slot_mask = batch[f"{self.image_key}_mask"].bool()
    b, s = images.shape[:2]
    if self.siamese_batching == "joint":
      features = self._encode(images.reshape((b * s,) + images.shape[2:])).reshape(b, s, -1)
    else:
      features = torch.stack([self._encode(images[:, k]) for k in range(s)], dim=1)
    if self.time_embedding is not None:
      phase = F.one_hot(batch[f"{self.image_key}_phase"].long(), len(schema.PHASES)).float()
      features = features + F.elu(self.time_embedding(phase))
    features = torch.where(slot_mask[..., None], features, torch.zeros_like(features))
    image_features = features.reshape(b, -1)
    rhpc_features = self.rhpc_encoder(batch["rhpc"].float())
    fused = torch.cat([image_features, rhpc_features.to(image_features.dtype)], dim=-1)
    logit = self.response_head_1(F.elu(self.response_head_0(fused)))
    if self.rhpc_classifier is not None:
      logit = logit + self.rhpc_classifier(rhpc_features.to(logit.dtype))
    outputs = {
        "logit": logit[:, 0],
        "image_present": slot_mask.any(dim=1),
        "image_features": image_features,
        "rhpc_features": rhpc_features,
    }
    if self.knowledge:
      hidden = F.elu(self.knowledge_0(image_features))
      outputs["aux"] = self.knowledge_rhpc(hidden)
      outputs["image_logit"] = self.knowledge_response(hidden)[:, 0]
    return outputs


def create_model(model: Mapping[str, Any]) -> nn.Module:
  """The PyTorch twin of ``models.create_model(model)`` (same config mapping)."""
  from mrp_jax import models  # the encoder's layout presets and overrides, read once

  name = model["name"]
  if name == "rhpc":
    return RhpcModel(model["rhpc_embed_dim"], model["rhpc_hidden_dim"])
  image_key = models.IMAGE_KEYS[name]
  encoder = models.encoder_kwargs(model["encoder"], 2 if image_key == "mg" else 3, "float32")
  return ImagingRhpcModel(image_key, encoder, model["time_embedding"],
                          model["knowledge_predictor"], model["siamese_batching"],
                          model["head_dim"], model["rhpc_embed_dim"], model["rhpc_hidden_dim"],
                          model.get("rhpc_skip", False))


# ---- weights ------------------------------------------------------------------------------------

_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
           ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}


def load_flax_variables(module: nn.Module, variables: Mapping[str, Any]) -> None:
  """Copies Flax variables ({'params', 'batch_stats'}) into ``module``, matched by name.

  Conv kernels [*k, in, out] become [out, in, *k], Dense kernels [in, out] become [out, in].
  Raises ValueError naming every tensor that is missing on either side or has another shape.
  """
  state = module.state_dict()
  wanted = {k for k in state if not k.endswith("num_batches_tracked")}
  problems, loaded = [], set()
  for collection in ("params", "batch_stats"):
    for path, value in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
      key = ".".join(path[:-1] + (_LEAVES[(collection, path[-1])],))
      value = np.asarray(value, np.float32)
      if path[-1] == "kernel":
        value = np.transpose(value, (value.ndim - 1, value.ndim - 2, *range(value.ndim - 2)))
      if key not in state:
        problems.append(f"{'/'.join((collection,) + path)}: no {key} in the PyTorch model")
      elif tuple(state[key].shape) != value.shape:
        problems.append(f"{key}: PyTorch {tuple(state[key].shape)} vs Flax {value.shape}")
      else:
        state[key] = torch.from_numpy(np.array(value))  # a writable copy
        loaded.add(key)
  problems += [f"{key}: not in the Flax variables" for key in sorted(wanted - loaded)]
  if problems:
    raise ValueError("Flax variables do not fit the PyTorch model:\n  " + "\n  ".join(problems))
  module.load_state_dict(state)


def parameter_count(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


# ---- loss and step ------------------------------------------------------------------------------

def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  mask = mask.float()
  return (values * mask).sum() / mask.sum().clamp(min=1.0)


def compute_loss(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], *,
                 response_weight: float, image_response_weight: float,
                 aux_weights: Mapping[str, float]) -> torch.Tensor:
  """``mrp_jax.models.losses.compute_loss`` (the total) in PyTorch."""
  label, valid = batch["label"].float(), batch["example_mask"].float()
  bce = F.binary_cross_entropy_with_logits(outputs["logit"].float(), label, reduction="none")
  total = response_weight * _masked_mean(bce, valid)
  if "image_logit" in outputs:
    present = valid * outputs["image_present"].float()
    image_bce = F.binary_cross_entropy_with_logits(outputs["image_logit"].float(), label,
                                                   reduction="none")
    total = total + image_response_weight * _masked_mean(image_bce, present)
    aux, targets, masks = outputs["aux"].float(), batch["aux_targets"], batch["aux_masks"]
    for var, (start, stop) in zip(schema.VARIABLES, encoding.AUX_SLICES):
      logits, target = aux[:, start:stop], targets[:, start:stop]
      mask = masks[:, start:stop] * present[:, None]
      if var.aux_loss == schema.AuxLoss.CE:
        term = _masked_mean(-(target * F.log_softmax(logits, dim=-1)).sum(-1), mask[:, 0])
      elif var.aux_loss == schema.AuxLoss.BCE:
        term = _masked_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"),
                            mask)
      else:
        term = _masked_mean((logits[:, 0] - target[:, 0]) ** 2, mask[:, 0])
      total = total + aux_weights[var.name] * term
  return total


def device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_torch(batch: Mapping[str, np.ndarray], where: torch.device) -> dict[str, torch.Tensor]:
  """Host batch -> tensors on ``where``; images as float32 (``augment.prepare_images``)."""
  out = {}
  for key, value in batch.items():
    tensor = torch.from_numpy(np.array(value))  # writable: device_get arrays are read-only
    if key == "mg" and value.dtype == np.uint16:
      tensor = tensor.to(torch.int32).float() / 65535.0
    elif key in ("mri", "mg"):
      tensor = tensor.float()
    out[key] = tensor.to(where)
  return out


class Steps:
  """A PyTorch train step and eval step over one fixed on-device batch, each synchronising.

  Args:
    model_config: the model mapping (``configs/common.py`` model section).
    loss: the loss section; train: the train section (optimizer settings).
    batch: the host batch (numpy), as the JAX benchmark feeds it.
    variables: Flax variables to start from (the JAX model's initial weights) or None.
    dtype: 'float32' | 'bfloat16' | 'float16': the autocast dtype (float32: no autocast).
    compile: wrap the model in ``torch.compile``.
  """

  def __init__(self, model_config: Mapping[str, Any], loss: Mapping[str, Any],
               train: Mapping[str, Any], batch: Mapping[str, np.ndarray],
               variables: Mapping[str, Any] | None, dtype: str, compile: bool):
    self.device = device()
    cuda = self.device.type == "cuda"
    if cuda:
      torch.backends.cudnn.benchmark = True
    model = create_model(model_config)
    if variables is not None:
      load_flax_variables(model, variables)
    self.parameters = parameter_count(model)
    # Module.to converts only weights of the format's rank (5-D for _3d, 4-D otherwise).
    fmt = torch.channels_last_3d if model_config["name"] == "iMRrhpc" else torch.channels_last
    self.model = model.to(self.device, memory_format=fmt)
    self.forward: Callable[..., Any] = torch.compile(self.model) if compile else self.model
    self.batch = to_torch(batch, self.device)
    self.loss_kwargs = dict(response_weight=loss["response_weight"],
                            image_response_weight=loss["image_response_weight"],
                            aux_weights=dict(loss["aux_weights"]))
    lr, betas = train["learning_rate"], (train["b1"], train["b2"])
    params = list(self.model.parameters())
    if train["optimizer"] == "paper":
      self.optimizer = torch.optim.Adam(params, lr, betas, weight_decay=train["weight_decay"],
                                        fused=True if cuda else None)
    else:
      self.optimizer = torch.optim.AdamW(params, lr, betas, weight_decay=train["weight_decay"],
                                         fused=True if cuda else None)
    self.clip = train["grad_clip_norm"]
    autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    self.autocast = ((lambda: torch.autocast(self.device.type, dtype=autocast_dtype))
                     if autocast_dtype else contextlib.nullcontext)

  def _sync(self) -> None:
    if self.device.type == "cuda":
      torch.cuda.synchronize()

  def train_step(self) -> torch.Tensor:
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    with self.autocast():
      loss = compute_loss(self.forward(self.batch), self.batch, **self.loss_kwargs)
    loss.backward()
    if self.clip > 0:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.optimizer.step()
    self._sync()
    return loss.detach()

  @torch.no_grad()
  def eval_outputs(self) -> dict[str, torch.Tensor]:
    self.model.eval()
    with self.autocast():
      outputs = self.forward(self.batch)
    self._sync()
    return outputs

  def eval_step(self) -> None:
    self.eval_outputs()

  def reset_peak_memory(self) -> None:
    if self.device.type == "cuda":
      torch.cuda.reset_peak_memory_stats()

  def peak_memory_bytes(self) -> int | None:
    return int(torch.cuda.max_memory_allocated()) if self.device.type == "cuda" else None


def environment() -> dict[str, Any]:
  info: dict[str, Any] = {"torch": torch.__version__, "device": str(device())}
  if torch.cuda.is_available():
    info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                cudnn_enabled=torch.backends.cudnn.enabled,
                gpu=torch.cuda.get_device_name(0))
  else:
    info["threads"] = torch.get_num_threads()
  return info

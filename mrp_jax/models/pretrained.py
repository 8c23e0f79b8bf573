"""Pretrained image encoders from PyTorch checkpoints, without unpickling code.

Two layouts are understood:

* MedicalNet (Tencent, 'Med3D') 3D ResNet18, e.g. ``resnet_18_23dataset.pth``: a dict with a
  'state_dict' whose keys start with 'module.' (DataParallel), shortcut A (no downsample
  weights), and a segmentation head 'conv_seg.*' that we drop.
* torchvision resnet18 (2D, ImageNet): shortcut B ('downsample.0/1'), and an 'fc' head that we
  drop. Its RGB stem is collapsed to our one-channel input by summing over the colour axis: a
  grey image replicated to RGB then gives exactly the same stem response.

Checkpoints are read with ``torch.load(..., weights_only=True)``, which refuses anything but
tensors and plain containers. A checkpoint that does not fit the configured encoder fails with
one message listing every missing key, unexpected key and shape mismatch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

DROPPED_HEADS = ("conv_seg.", "fc.")


class PretrainedMismatchError(ValueError):
  """The checkpoint does not fit the encoder; the message lists every mismatch."""


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint as {key: float32 array}, unwrapping 'state_dict' and 'module.'."""
  try:
    import torch  # only needed here: a test extra and an optional runtime dependency
  except ImportError as error:
    raise ImportError("loading PyTorch checkpoints needs torch: pip install torch==2.13.0 "
                      "(CPU wheel)") from error
  checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
  if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
    checkpoint = checkpoint["state_dict"]
  if not isinstance(checkpoint, Mapping):
    raise PretrainedMismatchError(f"{path}: expected a state dict, found {type(checkpoint)}")
  out = {}
  for key, value in checkpoint.items():
    key = key[len("module."):] if key.startswith("module.") else key
    if hasattr(value, "detach"):
      out[key] = value.detach().cpu().float().numpy()
  return out


def _flax_path(torch_key: str) -> tuple[str, tuple[str, ...]] | None:
  """torch key -> (collection, flax path) in a ResNet's variables; None for ignored buffers."""
  if torch_key.endswith("num_batches_tracked"):
    return None
  match = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", torch_key)
  prefix: tuple[str, ...] = ()
  rest = torch_key
  if match:
    prefix = (f"layer{match.group(1)}_{match.group(2)}",)
    rest = match.group(3)
  rest = rest.replace("downsample.0.", "downsample_conv.").replace("downsample.1.",
                                                                     "downsample_bn.")
  module, _, leaf = rest.rpartition(".")
  if leaf == "weight":
    return ("params", (*prefix, module, "kernel" if "conv" in module else "scale"))
  if leaf == "bias":
    return ("params", (*prefix, module, "bias"))
  if leaf == "running_mean":
    return ("batch_stats", (*prefix, module, "mean"))
  if leaf == "running_var":
    return ("batch_stats", (*prefix, module, "var"))
  return ("unknown", (torch_key,))


def _to_flax(value: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  if value.ndim >= 4:  # conv: [out, in, *k] -> [*k, in, out]
    value = np.transpose(value, (*range(2, value.ndim), 1, 0))
    if value.shape[-2] == 3 and target_shape[-2] == 1:
      value = value.sum(axis=-2, keepdims=True)  # RGB stem -> one grey channel
  return value


def convert_resnet(state_dict: Mapping[str, np.ndarray],
                   target: Mapping[str, Any]) -> dict[str, Any]:
  """Converts a ResNet state dict into the variables of :class:`mrp_jax.models.ResNet`.

  Args:
    state_dict: from :func:`load_state_dict`.
    target: the encoder's variables {'params': ..., 'batch_stats': ...} (arrays or
      ShapeDtypeStructs), which fix the expected keys and shapes.

  Returns:
    New variables with every leaf taken from the checkpoint (float32 numpy arrays).

  Raises:
    PretrainedMismatchError: listing missing keys, unexpected keys and shape mismatches.
  """
  flat_target = {(collection, *path): leaf for collection in ("params", "batch_stats")
                 for path, leaf in traverse_util.flatten_dict(target.get(collection, {})).items()}
  converted, unexpected, mismatched, seen = {}, [], [], set()
  for key, value in state_dict.items():
    if key.startswith(DROPPED_HEADS):
      continue
    located = _flax_path(key)
    if located is None:
      continue
    path = (located[0], *located[1])
    if path not in flat_target:
      unexpected.append(key)
      continue
    seen.add(path)
    target_shape = tuple(flat_target[path].shape)
    value = _to_flax(value, target_shape)
    if value.shape != target_shape:
      mismatched.append(f"{key}: checkpoint {tuple(value.shape)} (as Flax) vs model "
                        f"{target_shape} at {'/'.join(path)}")
      continue
    converted[path] = value.astype(np.float32)
  missing = sorted("/".join(p) for p in flat_target if p not in seen)
  if missing or unexpected or mismatched:
    lines = []
    if missing:
      lines.append(f"missing from the checkpoint ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      lines.append(f"not in the model ({len(unexpected)}): {', '.join(sorted(unexpected))}")
    if mismatched:
      lines.append(f"shape mismatches ({len(mismatched)}):\n    " + "\n    ".join(mismatched))
    raise PretrainedMismatchError(
        "checkpoint does not fit the encoder (check config.model.encoder.shortcut/width):\n  "
        + "\n  ".join(lines))
  out: dict[str, Any] = {}
  for (collection, *path), value in converted.items():
    out.setdefault(collection, {})[tuple(path)] = value
  return {c: traverse_util.unflatten_dict(v) for c, v in out.items()}


def load_encoder(path: str | Path, variables: Mapping[str, Any],
                 module: str = "image_encoder") -> dict[str, Any]:
  """Returns ``variables`` of a whole model with its image encoder replaced from ``path``."""
  target = {c: variables[c][module] for c in ("params", "batch_stats") if c in variables}
  try:
    encoder = convert_resnet(load_state_dict(path), target)
  except PretrainedMismatchError as error:
    raise PretrainedMismatchError(f"{path}: {error}") from None
  out = {c: dict(v) for c, v in variables.items()}
  for collection, tree in encoder.items():
    out[collection][module] = tree
  return out

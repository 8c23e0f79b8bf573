"""Analytic FLOP counts of the ResNet encoders and the dense layers, per example.

The convention is the usual one for model FLOPs: a multiply-add is 2 FLOPs, every kernel tap of
every output position counts (padding included), and normalisation, activations, pooling and the
optimizer are left out. docs/background.md (section 4) gives 330 / 1,595 / 2,613 GFLOP per
176 x 176 x 352 forward for the 'resnet' / 'medicalnet' / 'monai' layouts in this convention.

XLA's cost analysis (``HloCostAnalysis``) counts only the taps that land inside the input, so
padding taps are missing from its figure; :func:`forward_flops` with ``valid_only=True`` counts
the same way, which is what the benchmark and the tests compare XLA against.

A train step costs, per convolution, its forward, the weight gradient (the same multiply-adds)
and the input gradient (the same again), except the stem's input gradient: the image needs none.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
from flax import traverse_util

from input_pipeline.geometries import GEOMETRIES
from mrp_jax.models.resnet import ResNet

FULL_MRI_SHAPE = GEOMETRIES["full"].mri_box  # [z, y, x] voxels: the paper's breast box at 1 mm
# docs/background.md section 4: forward GFLOP of one 3D ResNet18 trunk at FULL_MRI_SHAPE, one
# channel.
REFERENCE_GFLOP = {"resnet": 330.0, "medicalnet": 1595.0, "monai": 2613.0}


@dataclasses.dataclass(frozen=True)
class Conv:
  """One convolution of a network: shapes in voxels (or pixels), channels, geometry."""
  name: str
  in_shape: tuple[int, ...]  # spatial input size
  in_channels: int
  out_channels: int
  kernel: int
  stride: int = 1
  dilation: int = 1
  padding: int = 0  # on each side
  input_grad: bool = True  # False for the stem: the image needs no gradient

  @property
  def out_shape(self) -> tuple[int, ...]:
    return tuple(conv_output_size(n, self.kernel, self.stride, self.dilation, self.padding)
                 for n in self.in_shape)

  def taps(self, valid_only: bool = False) -> int:
    """(output position, kernel tap) pairs, over all spatial dimensions."""
    per_dim = [
        _valid_taps(n, self.kernel, self.stride, self.dilation, self.padding) if valid_only
        else conv_output_size(n, self.kernel, self.stride, self.dilation, self.padding)
        * self.kernel for n in self.in_shape]
    return math.prod(per_dim)

  def flops(self, valid_only: bool = False) -> int:
    """Forward FLOPs for one example (2 per multiply-add)."""
    return 2 * self.taps(valid_only) * self.in_channels * self.out_channels


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, padding: int) -> int:
  return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _valid_taps(size: int, kernel: int, stride: int, dilation: int, padding: int) -> int:
  """Pairs (output index, tap) of one dimension whose input index lies inside [0, size)."""
  out = conv_output_size(size, kernel, stride, dilation, padding)
  starts = np.arange(out)[:, None] * stride - padding + np.arange(kernel)[None, :] * dilation
  return int(np.sum((starts >= 0) & (starts < size)))


def resnet_convs(resnet: ResNet, spatial_shape: Sequence[int], in_channels: int = 1
                 ) -> list[Conv]:
  """Every convolution of ``resnet`` on a ``spatial_shape`` input of ``in_channels`` channels.

  Reads the hyperparameters from the :class:`mrp_jax.models.resnet.ResNet` module itself
  (``ResNet(**models.encoder_kwargs(...))``; its norm, dtype, remat and lowering do not change
  the count) and mirrors its ``__call__``: stem, 3/2/1 max-pool, then per block conv1 (the
  block's stride and dilation, padding = dilation), conv2, and a 1x1 strided projection where
  shortcut B changes the shape.
  """
  shape = tuple(int(n) for n in spatial_shape)
  if len(shape) != resnet.spatial_dims:
    raise ValueError(f"spatial_shape {shape} does not have {resnet.spatial_dims} dimensions")
  width, stem_kernel = resnet.width, resnet.stem_kernel
  stem = Conv("conv1", shape, in_channels, width, stem_kernel, resnet.stem_stride,
              padding=stem_kernel // 2, input_grad=False)
  convs = [stem]
  shape = stem.out_shape
  if resnet.stem_pool:
    shape = tuple(conv_output_size(n, 3, 2, 1, 1) for n in shape)
  channels = width
  for stage, (blocks, stride, dilation) in enumerate(zip(resnet.stage_sizes, resnet.strides,
                                                         resnet.dilations)):
    features = width * 2**stage
    for block in range(blocks):
      s = stride if block == 0 else 1
      name = f"layer{stage + 1}_{block}"
      conv1 = Conv(f"{name}/conv1", shape, channels, features, 3, s, dilation, dilation)
      conv2 = Conv(f"{name}/conv2", conv1.out_shape, features, features, 3, 1, dilation, dilation)
      convs += [conv1, conv2]
      if resnet.shortcut == "B" and (s != 1 or channels != features):
        convs.append(Conv(f"{name}/downsample_conv", shape, channels, features, 1, s))
      shape, channels = conv1.out_shape, features
  return convs


def forward_flops(convs: Sequence[Conv], valid_only: bool = False) -> int:
  return sum(c.flops(valid_only) for c in convs)


def train_flops(convs: Sequence[Conv], valid_only: bool = False) -> int:
  """Forward + weight gradients + input gradients (none for convs with input_grad=False)."""
  return sum(c.flops(valid_only) * (3 if c.input_grad else 2) for c in convs)


def dense_flops(params: Mapping[str, Any], skip: Sequence[str] = ("image_encoder",)) -> int:
  """Forward FLOPs per example of every Dense layer (2-D 'kernel') outside ``skip``.

  Each layer is counted once per example; the phase embedding, which runs once per image slot,
  is counted once (3 x 512 multiply-adds: far below 0.01% of an encoder)."""
  total = 0
  for path, leaf in traverse_util.flatten_dict(dict(params)).items():
    if path[0] in skip or path[-1] != "kernel" or len(leaf.shape) != 2:
      continue
    total += 2 * int(leaf.shape[0]) * int(leaf.shape[1])
  return total


def model_flops(model_name: str, encoder: Mapping[str, Any] | None, params: Mapping[str, Any],
                mri_shape: Sequence[int], mg_shape: Sequence[int]) -> dict[str, float]:
  """FLOPs per example (one patient: an MRI pair, a mammogram or an rhpc row).

  Args:
    model_name: 'rhpc', 'iMGrhpc' or 'iMRrhpc'.
    encoder: the ResNet's keyword arguments (``models.encoder_kwargs``); None for rhpc.
    params: the model's parameters (arrays or ShapeDtypeStructs), for the dense layers.
    mri_shape: [z, y, x]; mg_shape: [rows, cols].

  Returns:
    'forward', 'train': model FLOPs (padding taps included); 'forward_valid', 'train_valid':
    padding taps excluded (XLA's convention); 'encoder_forward': one image through the encoder;
    'images': images per example.
  """
  dense = dense_flops(params)
  out = {"images": 0, "encoder_forward": 0.0}
  forward = {False: float(dense), True: float(dense)}
  train = {False: 3.0 * dense, True: 3.0 * dense}
  if model_name != "rhpc":
    assert encoder is not None
    images = 2 if model_name == "iMRrhpc" else 1
    shape = tuple(mri_shape) if model_name == "iMRrhpc" else tuple(mg_shape)
    convs = resnet_convs(ResNet(**encoder), shape)
    out["images"] = images
    out["encoder_forward"] = float(forward_flops(convs))
    for valid in (False, True):
      forward[valid] += images * forward_flops(convs, valid)
      train[valid] += images * train_flops(convs, valid)
  out.update(forward=forward[False], forward_valid=forward[True], train=train[False],
             train_valid=train[True])
  return out

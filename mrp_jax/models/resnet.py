"""ResNet18 for 2D mammograms and 3D MRI volumes, from one definition.

Channels-last throughout: inputs are [B, H, W, C] (2D) or [B, D, H, W, C] (3D). Parameters are
float32; convolutions and normalisation run in ``dtype`` (bfloat16 by default) with BatchNorm
statistics accumulated in float32.

The layouts that matter:

* torchvision resnet18 (2D): 7x7 stride-2 stem, 3x3 stride-2 max-pool, stage strides
  (1, 2, 2, 2), shortcut B (1x1 conv + BN when the shape changes).
* MedicalNet resnet18 (3D, Chen et al. 2019, the weights the MRP authors start from): the same
  stem, stage strides (1, 2, 1, 1) with dilations (1, 1, 2, 4), shortcut A (parameter-free:
  strided subsampling and zero channel padding).

Weights do not depend on strides or dilations, so either layout loads the same checkpoint.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
NORMS = ("batch", "group")
SHORTCUTS = ("A", "B")  # A: parameter-free (MedicalNet); B: 1x1 conv + norm (torchvision)

# PyTorch's ResNet initialisation (kaiming normal, fan_out) so training from scratch behaves like
# the reference implementations.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def make_norm(kind: str, features: int, train: bool, dtype: Dtype, name: str) -> nn.Module:
  """BatchNorm (PyTorch momentum 0.1, eps 1e-5) or GroupNorm (32 groups or fewer)."""
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, param_dtype=jnp.float32, name=name)
  if kind == "group":
    return nn.GroupNorm(num_groups=min(32, features), epsilon=1e-5, dtype=dtype,
                        param_dtype=jnp.float32, name=name)
  raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


def batch_stats_mask(mask: jax.Array | None, x: jax.Array, kind: str,
                     train: bool) -> jax.Array | None:
  """Which examples enter BatchNorm statistics: ``mask`` [B] broadcast to ``x``.

  Missing images (a zero-filled follow-up slot, a patient without MRI) must not enter batch
  statistics. When a batch holds no valid example at all the statistics fall back to the whole
  batch so they stay finite; those outputs are masked downstream anyway.
  """
  if mask is None or kind != "batch" or not train:
    return None
  mask = jnp.logical_or(mask, ~jnp.any(mask))
  return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


class BasicBlock(nn.Module):
  """Two 3x3(x3) convolutions with a residual connection."""
  features: int
  spatial_dims: int
  strides: int = 1
  dilation: int = 1
  shortcut: str = "B"  # 'A' (parameter-free) | 'B' (1x1 conv + norm)
  norm: str = "batch"
  dtype: Dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
    n = self.spatial_dims
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=conv_init)
    norm = functools.partial(make_norm, self.norm, self.features, train, self.dtype)
    norm_mask = batch_stats_mask(mask, x, self.norm, train)
    pad = [(self.dilation, self.dilation)] * n
    y = conv(self.features, (3,) * n, strides=(self.strides,) * n, padding=pad,
             kernel_dilation=(self.dilation,) * n, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y, mask=norm_mask))
    y = conv(self.features, (3,) * n, padding=pad, kernel_dilation=(self.dilation,) * n,
             name="conv2")(y)
    y = norm(name="bn2")(y, mask=norm_mask)

    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.shortcut == "A":
        residual = x[(slice(None),) + (slice(None, None, self.strides),) * n]
        extra = self.features - x.shape[-1]
        residual = jnp.pad(residual, [(0, 0)] * (n + 1) + [(0, extra)])
      elif self.shortcut == "B":
        residual = conv(self.features, (1,) * n, strides=(self.strides,) * n,
                        name="downsample_conv")(x)
        residual = norm(name="downsample_bn")(residual, mask=norm_mask)
      else:
        raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
    return nn.relu(y + residual)


def space_to_depth_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """A strided convolution computed as a stride-1 convolution of the space-to-depth input.

  ``x`` [B, *spatial, C], ``kernel`` [k, ..., k, C, F]; the result equals
  ``conv(x, kernel, strides=stride, padding=padding)``. Output position i reads
  x_pad[s*i + t] for taps t < k; writing t = s*a + b (b < s) makes it a stride-1 convolution
  with ceil(k / s) taps over the blocks of s voxels, whose s^n positions become channels: a
  7^3 stride-2 stem on a one-channel volume becomes a 4^3 stride-1 convolution with 8 input
  channels (the kernel zero-padded to 8^3). A GPU's convolution kernels use few input
  channels poorly; the weights (and checkpoints) are the same.
  """
  n = x.ndim - 2
  k, s = kernel.shape[0], stride
  taps = -(-k // s)
  out = [(size + 2 * padding - k) // s + 1 for size in x.shape[1:-1]]
  need = [s * (o + taps - 1) for o in out]
  x = jnp.pad(x, [(0, 0)] + [(padding, max(0, m - size - padding))
                             for m, size in zip(need, x.shape[1:-1])] + [(0, 0)])
  x = x[(slice(None),) + tuple(slice(0, m) for m in need)]
  b, c = x.shape[0], x.shape[-1]
  # [B, q0, s, q1, s, ..., C] -> [B, q0, q1, ..., s, s, ..., C] -> [B, q0, q1, ..., s^n C]
  x = x.reshape((b,) + sum(((m // s, s) for m in need), ()) + (c,))
  x = x.transpose((0,) + tuple(range(1, 2 * n, 2)) + tuple(range(2, 2 * n + 1, 2)) + (2 * n + 1,))
  x = x.reshape((b,) + tuple(m // s for m in need) + (s**n * c,))
  f = kernel.shape[-1]
  kernel = jnp.pad(kernel, [(0, taps * s - k)] * n + [(0, 0), (0, 0)])
  kernel = kernel.reshape(sum(((taps, s) for _ in range(n)), ()) + (c, f))
  kernel = kernel.transpose(tuple(range(0, 2 * n, 2)) + tuple(range(1, 2 * n, 2)) +
                            (2 * n, 2 * n + 1))
  kernel = kernel.reshape((taps,) * n + (s**n * c, f))
  spatial = "DHW"[-n:]
  return jax.lax.conv_general_dilated(
      x, kernel, (1,) * n, "VALID",
      dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))


class _SpaceToDepthConv(nn.Module):
  """nn.Conv's parameter (``kernel`` [k, ..., k, C, F], same initialiser) computed by
  :func:`space_to_depth_conv`."""
  features: int
  kernel_size: int
  stride: int
  dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n = x.ndim - 2
    kernel = self.param("kernel", conv_init, (self.kernel_size,) * n + (x.shape[-1],
                                                                         self.features),
                        jnp.float32)
    return space_to_depth_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                               self.kernel_size // 2)


class Stem(nn.Module):
  """The first convolution, its norm and ReLU, and the optional max-pool.

  A module of its own so that it can be rematerialised like the blocks: at full MRI geometry
  its outputs (64 channels at half resolution, in float32 inside the norm) are most of what the
  backward pass keeps once the blocks are rematerialised. Its parameters stay at the ResNet's
  top level (``conv1``, ``bn1``: ``nn.share_scope``), where checkpoints and converters expect
  them.
  """
  spatial_dims: int
  width: int
  kernel: int
  stride: int
  pool: bool
  norm: str
  dtype: Dtype
  space_to_depth: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
    n = self.spatial_dims
    pad = self.kernel // 2
    if self.space_to_depth and self.stride > 1:
      x = _SpaceToDepthConv(self.width, self.kernel, self.stride, self.dtype, name="conv1")(x)
    else:
      x = nn.Conv(self.width, (self.kernel,) * n, strides=(self.stride,) * n,
                  padding=[(pad, pad)] * n, use_bias=False, dtype=self.dtype,
                  param_dtype=jnp.float32, kernel_init=conv_init,
                  name="conv1")(x.astype(self.dtype))
    x = nn.relu(make_norm(self.norm, self.width, train, self.dtype, "bn1")(
        x, mask=batch_stats_mask(mask, x, self.norm, train)))
    if self.pool:
      x = nn.max_pool(x, (3,) * n, strides=(2,) * n, padding=[(1, 1)] * n)
    return x


class ResNet(nn.Module):
  """ResNet trunk returning globally pooled features.

  Attributes:
    spatial_dims: 2 (mammogram) or 3 (MRI).
    stage_sizes: blocks per stage ((2, 2, 2, 2) is ResNet18).
    stem_kernel, stem_stride: the first convolution (padding kernel // 2).
    stem_pool: 3/2/1 max-pool after the stem.
    strides, dilations: per stage.
    shortcut: 'A' or 'B'.
    norm: 'batch' or 'group'.
    width: channels of the first stage (doubled per stage).
    dtype: computation dtype.
    remat: rematerialise the stem and each residual block in the backward pass: 'none',
      'full' (keep only their inputs) or 'dots' (also keep convolution outputs, recompute
      norms and activations). At full MRI geometry the backward pass keeps 6.8 / 0.8 / 0.25 GB
      per patient (none / dots / full; BUILD_NOTES.md, "Memory plan").
    stem_space_to_depth: compute the strided stem convolution as a stride-1 convolution of the
      space-to-depth input (:func:`space_to_depth_conv`): the same function and parameters.
  """
  spatial_dims: int = 3
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  stem_kernel: int = 7
  stem_stride: int = 2
  stem_pool: bool = True
  strides: Sequence[int] = (1, 2, 2, 2)
  dilations: Sequence[int] = (1, 1, 1, 1)
  shortcut: str = "B"
  norm: str = "batch"
  width: int = 64
  dtype: Dtype = jnp.bfloat16
  remat: str = "none"
  stem_space_to_depth: bool = False

  @property
  def num_features(self) -> int:
    return self.width * 2 ** (len(self.stage_sizes) - 1)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None) -> jax.Array:
    """Args: x [B, *spatial, C]; mask [B] bool (valid examples) or None.

    Returns: features [B, num_features] (global average pool of the last stage), float32.
    """
    n = self.spatial_dims
    if x.ndim != n + 2:
      raise ValueError(f"ResNet(spatial_dims={n}) expects [B, *{n} spatial, C] input, got shape "
                       f"{x.shape}")
    stem_cls, block_cls = Stem, BasicBlock
    if self.remat != "none":
      # static_argnums counts the module as argument 0: `train` is argument 2.
      stem_cls, block_cls = (nn.remat(cls, static_argnums=(2,),
                                      policy=REMAT_POLICIES[self.remat])
                             for cls in (Stem, BasicBlock))
    stem = stem_cls(n, self.width, self.stem_kernel, self.stem_stride, self.stem_pool,
                    self.norm, self.dtype, self.stem_space_to_depth)
    nn.share_scope(self, stem)
    x = stem(x, train, mask)
    for stage, (blocks, stride, dilation) in enumerate(
        zip(self.stage_sizes, self.strides, self.dilations)):
      for block in range(blocks):
        x = block_cls(self.width * 2**stage, n, strides=stride if block == 0 else 1,
                       dilation=dilation, shortcut=self.shortcut, norm=self.norm,
                       dtype=self.dtype, name=f"layer{stage + 1}_{block}")(x, train, mask)
    return jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, n + 1)))


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,  # matmuls and convolutions
}

LAYOUTS = {
    # Standard classification ResNet: every stage after the first halves the resolution.
    "resnet": dict(stem_stride=2, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1)),
    # Tencent MedicalNet (segmentation-style, dilated): 4.8x the FLOPs of 'resnet' in 3D.
    "medicalnet": dict(stem_stride=2, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)),
    # MONAI resnet18 default: stride-1 stem (8x the FLOPs of 'resnet' in 3D).
    "monai": dict(stem_stride=1, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1)),
}

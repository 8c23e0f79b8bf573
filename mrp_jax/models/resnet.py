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
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
NORMS = ("batch", "group")
SHORTCUTS = ("A", "B")  # A: parameter-free (MedicalNet); B: 1x1 conv + norm (torchvision)
# How a convolution reaches XLA (:func:`convolution`): 'direct' (one convolution op: what cuDNN
# and TPUs run) or 'decomposed' (the forms XLA:CPU runs fast); the same function either way.
CONV_LOWERINGS = ("direct", "decomposed")

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


def resolve_conv_lowering(lowering: str) -> str:
  """'auto' -> 'decomposed' when JAX's default backend is the CPU, else 'direct'; the other
  values as they are."""
  if lowering == "auto":
    return "decomposed" if jax.default_backend() == "cpu" else "direct"
  if lowering not in CONV_LOWERINGS:
    raise ValueError(f"conv_lowering must be 'auto' or one of {CONV_LOWERINGS}, got "
                     f"{lowering!r}")
  return lowering


def forward_compiler_options() -> dict[str, str]:
  """XLA options for forward-only programs (evaluation, predict): on the CPU, convolutions on
  XLA's multi-threaded Eigen kernels instead of its YNNPACK fusions, which run each convolution
  on one thread. Measured (docs/experiments.md, "XLA:CPU's options"): the iMRrhpc eval step 1.3-1.5x
  faster on 2 cores, the same on 1; training steps are faster with YNNPACK (its backward
  convolutions), so they keep XLA's defaults. Empty on accelerators."""
  return {"xla_cpu_experimental_ynn_fusion_type": ""} if jax.default_backend() == "cpu" else {}


def _windows(x: jax.Array, axis: int, taps: Sequence[int], stride: int, dilation: int,
             out: int) -> list[jax.Array]:
  """The views of padded ``x`` that a window's ``taps`` read along ``axis`` for ``out`` output
  positions: view t holds x[t * dilation + stride * i] at position i."""
  return [jax.lax.slice_in_dim(x, t * dilation, t * dilation + stride * (out - 1) + 1, stride,
                               axis) for t in taps]


def _output_size(size: int, padding: tuple[int, int], window: int, stride: int,
                 dilation: int) -> int:
  return (size + padding[0] + padding[1] - dilation * (window - 1) - 1) // stride + 1


def _patches_matmul(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                    padding: Sequence[tuple[int, int]], dilation: Sequence[int]) -> jax.Array:
  """The convolution as one matmul of the input's patches [B, *out, taps x C] with the kernel
  [taps x C, F]. Patches are gathered one spatial axis at a time (last axis first), so their
  feature order is the kernel's row-major (tap_1, ..., tap_n, C). Taps that read only padding
  at every output position (most of a 3^3 window on a 1 x 1 x 2 input) add exact zeros and are
  left out, with their kernel rows."""
  n = x.ndim - 2
  live = []  # per spatial axis: (the taps that read the input somewhere, output size)
  for size, pad, k, s, d in zip(x.shape[1:-1], padding, kernel.shape[:n], strides, dilation):
    out = _output_size(size, pad, k, s, d)
    # Tap t reads padded positions t * d ... t * d + s * (out - 1); the input is at
    # pad[0] ... pad[0] + size - 1. The live taps are contiguous.
    live.append(([t for t in range(k) if t * d <= pad[0] + size - 1
                  and t * d + s * (out - 1) >= pad[0]], out))
  x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
  kernel = kernel[tuple(slice(taps[0], taps[-1] + 1) for taps, _ in live)]
  for axis in range(n, 0, -1):
    taps, out = live[axis - 1]
    x = jnp.stack(_windows(x, axis, taps, strides[axis - 1], dilation[axis - 1], out), axis=-2)
    x = x.reshape(x.shape[:-2] + (-1,))
  return jax.lax.dot_general(x, kernel.reshape(-1, kernel.shape[-1]),
                             (((x.ndim - 1,), (0,)), ((), ())))


def _depth_folded(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                  padding: Sequence[tuple[int, int]], dilation: Sequence[int]) -> jax.Array:
  """A 3D convolution as one 2D convolution: the input's depth taps become channels
  ([B * out_depth, H, W, taps x C]; what the kernel's depth axis reads) and the kernel
  [d, h, w, C, F] becomes [h, w, d x C, F]."""
  out = _output_size(x.shape[1], padding[0], kernel.shape[0], strides[0], dilation[0])
  x = jnp.pad(x, [(0, 0), padding[0], (0, 0), (0, 0), (0, 0)])
  views = _windows(x, 1, range(kernel.shape[0]), strides[0], dilation[0], out)
  b = x.shape[0]
  x = jnp.concatenate(views, axis=-1)
  kernel = jnp.moveaxis(kernel, 0, 2)
  kernel = kernel.reshape(kernel.shape[:2] + (-1, kernel.shape[-1]))
  y = jax.lax.conv_general_dilated(
      x.reshape((b * out,) + x.shape[2:]), kernel, strides[1:], padding[1:],
      rhs_dilation=dilation[1:], dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape((b, out) + y.shape[1:])


def convolution(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                padding: Sequence[tuple[int, int]], dilation: Sequence[int],
                lowering: str = "direct") -> jax.Array:
  """``x`` [B, *spatial, C] convolved with ``kernel`` [*window, C, F] (channels last, no bias).

  'direct' is one ``conv_general_dilated``. 'decomposed' gives XLA:CPU the forms it runs fast
  (docs/experiments.md, "Convolutions on XLA:CPU"): XLA:CPU sends 2D convolutions to its
  YNNPACK library but computes 3D ones with a slow generic loop nest, and it swaps the operands
  of any convolution whose window has more taps than its input has positions (the small last
  stages; its backward pass too), which then runs 10-100x slower. So a 3D convolution becomes a
  2D one with its depth taps as channels, and where a plane (input or output) has fewer
  positions than the window has taps, the convolution is one matmul over patches (small there
  by definition).
  The same sums in another order: equal within float32 rounding.
  """
  n = x.ndim - 2
  window = kernel.shape[:n]
  if lowering not in CONV_LOWERINGS:
    raise ValueError(f"convolution lowering must be one of {CONV_LOWERINGS}, got {lowering!r}")
  spatial = "DHW"[-n:]
  direct = functools.partial(jax.lax.conv_general_dilated, x, kernel, tuple(strides),
                             list(padding), rhs_dilation=tuple(dilation),
                             dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
  if lowering == "direct" or math.prod(window) == 1:
    return direct()  # 1x1 convolutions are matmuls already
  out = [_output_size(*args) for args in zip(x.shape[1:-1], padding, window, strides, dilation)]
  plane = slice(n - 2, n)  # the last two spatial axes: what a 2D convolution sees
  taps = math.prod(window[plane])
  if min(math.prod(x.shape[1:-1][plane]), math.prod(out[plane])) < taps:
    return _patches_matmul(x, kernel, strides, padding, dilation)
  return direct() if n == 2 else _depth_folded(x, kernel, strides, padding, dilation)


def max_pool(x: jax.Array, lowering: str = "direct") -> jax.Array:
  """The stem's 3/2/1 max-pool of ``x`` [B, *spatial, C] (window 3, stride 2, padding 1).

  'decomposed' pools one axis at a time (max is separable over a box; the same values):
  XLA:CPU's reduce-window and, above all, the select-and-scatter of its gradient are slow
  (95 ms against 9 ms for a 3D stem's output, forward and backward). The gradient differs only
  where a window holds equal maxima: split between them instead of given to the first; after
  the stem's ReLU those ties are zeros, whose gradient the ReLU stops either way.
  """
  n = x.ndim - 2
  if lowering == "direct":
    return nn.max_pool(x, (3,) * n, strides=(2,) * n, padding=[(1, 1)] * n)
  for axis in range(1, n + 1):
    out = _output_size(x.shape[axis], (1, 1), 3, 2, 1)
    padding = [(0, 0)] * x.ndim
    padding[axis] = (1, 1)
    x = jnp.pad(x, padding, constant_values=-jnp.inf)
    x = functools.reduce(jnp.maximum, _windows(x, axis, range(3), 2, 1, out))
  return x


class Conv(nn.Module):
  """``nn.Conv(use_bias=False)``'s parameter (``kernel`` [*window, C, F], float32, the same
  initialiser and name, so checkpoints and converters are unchanged) applied through
  :func:`convolution` with the given lowering."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  padding: Sequence[tuple[int, int]] | None = None
  kernel_dilation: Sequence[int] | None = None
  dtype: Dtype = jnp.bfloat16
  lowering: str = "direct"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n = len(self.kernel_size)
    kernel = self.param("kernel", conv_init, tuple(self.kernel_size) + (x.shape[-1],
                                                                       self.features),
                        jnp.float32)
    return convolution(x.astype(self.dtype), kernel.astype(self.dtype),
                       self.strides or (1,) * n, self.padding or [(0, 0)] * n,
                       self.kernel_dilation or (1,) * n, self.lowering)


class BasicBlock(nn.Module):
  """Two 3x3(x3) convolutions with a residual connection."""
  features: int
  spatial_dims: int
  strides: int = 1
  dilation: int = 1
  shortcut: str = "B"  # 'A' (parameter-free) | 'B' (1x1 conv + norm)
  norm: str = "batch"
  dtype: Dtype = jnp.bfloat16
  conv_lowering: str = "direct"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
    n = self.spatial_dims
    conv = functools.partial(Conv, dtype=self.dtype, lowering=self.conv_lowering)
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
  conv_lowering: str = "direct"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None) -> jax.Array:
    n = self.spatial_dims
    pad = self.kernel // 2
    if self.space_to_depth and self.stride > 1:
      x = _SpaceToDepthConv(self.width, self.kernel, self.stride, self.dtype, name="conv1")(x)
    else:
      x = Conv(self.width, (self.kernel,) * n, strides=(self.stride,) * n,
               padding=[(pad, pad)] * n, dtype=self.dtype, lowering=self.conv_lowering,
               name="conv1")(x)
    x = nn.relu(make_norm(self.norm, self.width, train, self.dtype, "bn1")(
        x, mask=batch_stats_mask(mask, x, self.norm, train)))
    if self.pool:
      x = max_pool(x, self.conv_lowering)
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
      per patient (none / dots / full; docs/performance.md, "Memory plan").
    stem_space_to_depth: compute the strided stem convolution as a stride-1 convolution of the
      space-to-depth input (:func:`space_to_depth_conv`): the same function and parameters.
    conv_lowering: how convolutions reach XLA (:func:`convolution`): 'direct' or 'decomposed'
      (XLA:CPU's fast forms); the same function and parameters.
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
  conv_lowering: str = "direct"

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
                    self.norm, self.dtype, self.stem_space_to_depth, self.conv_lowering)
    nn.share_scope(self, stem)
    x = stem(x, train, mask)
    for stage, (blocks, stride, dilation) in enumerate(
        zip(self.stage_sizes, self.strides, self.dilations)):
      for block in range(blocks):
        x = block_cls(self.width * 2**stage, n, strides=stride if block == 0 else 1,
                       dilation=dilation, shortcut=self.shortcut, norm=self.norm,
                       dtype=self.dtype, conv_lowering=self.conv_lowering,
                       name=f"layer{stage + 1}_{block}")(x, train, mask)
    # float32 at least (a float64 network, as the tests build, stays float64).
    return jnp.mean(x.astype(jnp.promote_types(self.dtype, jnp.float32)),
                    axis=tuple(range(1, n + 1)))


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

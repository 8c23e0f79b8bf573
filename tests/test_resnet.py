import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import EPS32, EPS64, assert_as_accurate_as, assert_reduction_close

from mrp_jax import configuration, models
from mrp_jax.core import inference
from mrp_jax.models.resnet import (
  LAYOUTS,
  ResNet,
  convolution,
  forward_compiler_options,
  max_pool,
  resolve_conv_lowering,
  space_to_depth_conv,
)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_init(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_3d_trunk_has_medicalnets_parameter_count(layout):
  # MedicalNet resnet18 (shortcut A): 32,986,176 trunk parameters; shortcut B adds the three
  # 1x1 downsample convs and their BN: 33,160,000. Strides and dilations do not change counts.
  variables = _abstract_init(ResNet(spatial_dims=3, shortcut="A", **LAYOUTS[layout]),
                             (1, 16, 16, 16, 1))
  assert _count(variables["params"]) == 32_986_176
  assert not any("downsample" in k for k in variables["params"]["layer2_0"])
  variables = _abstract_init(ResNet(spatial_dims=3, shortcut="B", **LAYOUTS[layout]),
                             (1, 16, 16, 16, 1))
  assert _count(variables["params"]) == 33_160_000


def test_2d_trunk_matches_torchvision_resnet18():
  variables = _abstract_init(ResNet(spatial_dims=2, shortcut="B"), (1, 64, 64, 3))
  # torchvision resnet18: 11,689,512 including the 512x1000 fc layer.
  assert _count(variables["params"]) + 512 * 1000 + 1000 == 11_689_512


@pytest.mark.parametrize("spatial_dims, shape", [(2, (3, 32, 16, 1)), (3, (3, 8, 8, 16, 1))])
def test_bf16_compute_f32_params_and_f32_features(spatial_dims, shape):
  model = ResNet(spatial_dims=spatial_dims, width=8)
  x = jax.random.normal(jax.random.key(1), shape)
  variables = model.init(jax.random.key(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  features, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert features.shape == (3, 64) and features.dtype == jnp.float32
  assert np.isfinite(np.asarray(features)).all()
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).as_text()
  assert "bf16" in hlo  # the convolutions run in bfloat16
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"],
                         variables["batch_stats"])
  assert all(jax.tree.leaves(changed))  # every BN layer updated its running statistics


def test_group_norm_has_no_batch_statistics():
  model = ResNet(spatial_dims=3, width=8, norm="group")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 1)), train=False)
  assert "batch_stats" not in variables
  assert "GroupNorm" not in str(jax.tree_util.tree_structure(variables))  # named bn1, bn2, ...


def test_masked_examples_do_not_enter_batch_statistics():
  model = ResNet(spatial_dims=3, width=8, dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 32, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  mask = jnp.array([True, True, True, False])
  noisy = x.at[3].set(100.0 * jax.random.normal(jax.random.key(2), x.shape[1:]))
  out_a, stats_a = model.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])
  out_b, stats_b = model.apply(variables, noisy, train=True, mask=mask, mutable=["batch_stats"])
  # Exactly: a masked example enters every sum as an exact zero, so the first three examples'
  # outputs and the statistics are the same sums in the same order.
  np.testing.assert_array_equal(out_a[:3], out_b[:3])
  jax.tree.map(np.testing.assert_array_equal, stats_a, stats_b)
  # Without the mask the fourth example does change the first three.
  out_c, _ = model.apply(variables, noisy, train=True, mutable=["batch_stats"])
  assert not np.allclose(out_a[:3], out_c[:3], rtol=1e-3)


def test_rematerialisation_keeps_gradients():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8, 1))
  models = {policy: ResNet(spatial_dims=3, width=4, dtype=jnp.float32, remat=policy)
            for policy in ("none", "full", "dots")}
  variables = models["none"].init(jax.random.key(0), x, train=False)

  def grads_and_stats(model, variables, x):
    def loss(params):
      out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                 x, train=True, mutable=["batch_stats"])
      return jnp.sum(out ** 2), updates["batch_stats"]
    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

  reference = grads_and_stats(models["none"], variables, x)
  with jax.enable_x64(True):  # the same function in float64: what each float32 program rounds
    exact = grads_and_stats(
        models["none"].clone(dtype=jnp.float64),
        jax.tree.map(lambda v: jnp.asarray(np.asarray(v), jnp.float64), variables),
        jnp.asarray(np.asarray(x), jnp.float64))
  for policy in ("full", "dots"):
    # The same variable names (the stem's conv1 / bn1 at the top level, as converters expect).
    shapes = jax.eval_shape(lambda: models[policy].init(jax.random.key(0), x, train=False))
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)
    # Rematerialisation recomputes with another fusion, so another summation order: as close
    # to the exact gradients and statistics as the program without it.
    assert_as_accurate_as(grads_and_stats(models[policy], variables, x), reference, exact,
                          err_msg=policy)


def test_rejects_wrong_rank():
  with pytest.raises(ValueError, match="expects"):
    ResNet(spatial_dims=3).init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)


@pytest.mark.parametrize("shape, kernel, stride", [
    ((9, 10, 11), 7, 2),  # odd and even sizes: the padding arithmetic
    ((12, 13), 7, 2),     # 2D
    ((10, 9, 8), 3, 3),   # another stride and kernel
])
def test_space_to_depth_convolution_is_the_strided_convolution(shape, kernel, stride):
  keys = jax.random.split(jax.random.key(2))
  x = jax.random.normal(keys[0], (2, *shape, 3))
  w = jax.random.normal(keys[1], (kernel,) * len(shape) + (3, 5))
  pad = kernel // 2
  numbers = ("NDHWC", "DHWIO", "NDHWC") if len(shape) == 3 else ("NHWC", "HWIO", "NHWC")

  def strided(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride,) * len(shape), [(pad, pad)] * len(shape),
                                        dimension_numbers=numbers)
  with jax.enable_x64(True):
    x64, w64 = (jnp.asarray(np.asarray(v), jnp.float64) for v in (x, w))
    exact, abs_sum = strided(x64, w64), strided(jnp.abs(x64), jnp.abs(w64))
  # The blocked convolution sums ceil(k/s)^d taps of s^d channels each (zero-padded weights).
  terms = (-(-kernel // stride) * stride) ** len(shape) * x.shape[-1]
  assert_reduction_close(space_to_depth_conv(x, w, stride, pad), exact, abs_sum, terms)
  assert_reduction_close(strided(x, w), exact, abs_sum, terms)  # the bound is not too tight


def test_space_to_depth_stem_keeps_function_and_parameters():
  x = jax.random.normal(jax.random.key(1), (2, 10, 9, 12, 1))
  plain = ResNet(spatial_dims=3, width=4, dtype=jnp.float32)
  s2d = ResNet(spatial_dims=3, width=4, dtype=jnp.float32, stem_space_to_depth=True)
  variables = plain.init(jax.random.key(0), x, train=False)
  # Same parameter tree and the same initial values: checkpoints and converters fit both.
  jax.tree.map(np.testing.assert_array_equal, variables,
               s2d.init(jax.random.key(0), x, train=False))

  # Eval mode: in training mode BatchNorm over two examples amplifies rounding of the stem.
  def loss(model, variables, params, x):
    out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                      train=False)
    return jnp.sum(out ** 2)

  def outputs(model, variables, x):
    return (loss(model, variables, variables["params"], x),
            jax.grad(functools.partial(loss, model, variables))(variables["params"], x))

  with jax.enable_x64(True):
    exact = outputs(plain.clone(dtype=jnp.float64),
                    jax.tree.map(lambda v: jnp.asarray(np.asarray(v), jnp.float64), variables),
                    jnp.asarray(np.asarray(x), jnp.float64))
  # The blocked stem is as close to the exact function as the strided one is on this machine.
  assert_as_accurate_as(outputs(s2d, variables, x), outputs(plain, variables, x), exact)


# Windows that take each branch of the decomposed lowering: a 3D convolution folded into a 2D
# one (depth taps as channels), the matmul over patches where a plane is smaller than the window
# (the last stages; a 1 x 1 x 2 input), the strided 7^3 stem, dilation, and 2D convolutions.
CONVOLUTIONS = [
    ((6, 8, 8), 3, 1, 1),   # depth-folded
    ((7, 9, 8), 3, 2, 1),   # depth-folded, strided, odd sizes
    ((9, 10, 11), 7, 2, 1),  # the stem
    ((6, 6, 6), 3, 1, 2),   # dilated (MedicalNet's last stages)
    ((2, 2, 3), 3, 1, 1),   # patches: 2 x 3 plane, 9 taps
    ((1, 1, 2), 3, 2, 1),   # patches: the last stage of the demo's geometry
    ((12, 13), 7, 2, 1),    # 2D: XLA's own convolution
    ((2, 3), 3, 1, 1),      # 2D patches
]


@pytest.mark.parametrize("shape, kernel, stride, dilation", CONVOLUTIONS)
def test_decomposed_convolution_is_the_convolution(shape, kernel, stride, dilation):
  """The same sums in another order: forward and both gradients within float32's rounding of
  the float64 convolution."""
  n = len(shape)
  keys = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(keys[0], (2, *shape, 3))
  w = jax.random.normal(keys[1], (kernel,) * n + (3, 4))
  args = ((stride,) * n, [(dilation * (kernel // 2),) * 2] * n, (dilation,) * n)
  direct = functools.partial(convolution, lowering="direct")
  decomposed = functools.partial(convolution, lowering="decomposed")
  with jax.enable_x64(True):
    x64, w64 = (jnp.asarray(np.asarray(v), jnp.float64) for v in (x, w))
    exact, abs_sum = direct(x64, w64, *args), direct(jnp.abs(x64), jnp.abs(w64), *args)
  out = decomposed(x, w, *args)
  assert out.shape == exact.shape
  assert_reduction_close(out, exact, abs_sum, kernel ** n * x.shape[-1])

  cotangent = jax.random.normal(keys[2], out.shape)

  def grads(conv, x, w, g):
    return jax.vjp(lambda x, w: conv(x, w, *args), x, w)[1](g)
  with jax.enable_x64(True):
    exact_grads = grads(direct, x64, w64, jnp.asarray(np.asarray(cotangent), jnp.float64))
  assert_as_accurate_as(grads(decomposed, x, w, cotangent), grads(direct, x, w, cotangent),
                        exact_grads)


@pytest.mark.parametrize("shape", [(9, 10, 11), (12, 13), (1, 1, 2)])
def test_decomposed_max_pool_is_the_max_pool(shape):
  """Max is exact, so the forward pass is equal. Without ties (random floats) the gradient
  routes each cotangent to the same input; where windows overlap (window 3, stride 2) an input
  sums up to 2 per axis of them, in either order."""
  x = jax.random.normal(jax.random.key(4), (2, *shape, 3))
  direct, decomposed = (jax.jit(functools.partial(max_pool, lowering=lowering))
                        for lowering in ("direct", "decomposed"))
  np.testing.assert_array_equal(decomposed(x), direct(x))
  g = jax.random.normal(jax.random.key(5), direct(x).shape)
  with jax.enable_x64(True):
    x64, g64 = (jnp.asarray(np.asarray(v), jnp.float64) for v in (x, g))
    pool64 = functools.partial(max_pool, lowering="direct")
    exact = jax.vjp(pool64, x64)[1](g64)[0]
    abs_sum = jax.vjp(pool64, x64)[1](jnp.abs(g64))[0]
  assert_reduction_close(jax.vjp(decomposed, x)[1](g)[0], exact, abs_sum, 2 ** len(shape))


@pytest.mark.parametrize("spatial_dims, shape", [(3, (2, 8, 8, 16, 1)), (2, (2, 32, 16, 1))])
def test_decomposed_resnet_keeps_function_and_parameters(spatial_dims, shape):
  """The whole trunk (training mode, gradients and batch statistics) with either lowering:
  one parameter tree and one function.

  The function is compared in float64, where the lowerings can differ only by float64's
  rounding in another summation order. How far a rounding difference travels through this
  network is measured on the same machine: batch statistics over a handful of values in the
  last stages amplify it to 1e4-1e6 ulps, as both float32 networks' distances to the float64
  one show, and each is one draw of that amplification (either lowering's can be the larger by
  4-5x, so a fixed factor between the two float32 errors holds on one CPU and fails on
  another). Scaled to float64's epsilon, 10x the larger draw is what two float64 orders may
  differ by (relative ~1e-9); a wrong tap, padding or reshape moves results by whole terms,
  relative 1e-3 or more."""
  x = jax.random.normal(jax.random.key(1), shape)
  direct = ResNet(spatial_dims=spatial_dims, width=4, dtype=jnp.float32)
  decomposed = direct.clone(conv_lowering="decomposed")
  variables = direct.init(jax.random.key(0), x, train=False)
  jax.tree.map(np.testing.assert_array_equal, variables,
               decomposed.init(jax.random.key(0), x, train=False))

  def outputs(model, variables, x):
    def loss(params):
      out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                 x, train=True, mutable=["batch_stats"])
      return jnp.sum(out ** 2), updates
    (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return value, grads, updates

  def run(model, variables, x):  # one compiled program each (eager dispatch compiles per op)
    return jax.jit(functools.partial(outputs, model))(variables, x)

  float32 = [run(model, variables, x) for model in (direct, decomposed)]
  with jax.enable_x64(True):
    variables64 = jax.tree.map(lambda v: jnp.asarray(np.asarray(v), jnp.float64), variables)
    x64 = jnp.asarray(np.asarray(x), jnp.float64)
    exact = run(direct.clone(dtype=jnp.float64), variables64, x64)
    actual = run(decomposed.clone(dtype=jnp.float64), variables64, x64)
  jax.tree.map(lambda a: np.testing.assert_equal(np.asarray(a).dtype, np.float64), actual)

  def check(path, a, e, *draws):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    scale = float(np.abs(e).max())
    amplification = max(float(np.abs(np.asarray(d, np.float64) - e).max()) for d in draws)
    amplification = max(amplification / (EPS32 * scale) if scale else 0.0, 16.0)
    allowed = 10.0 * amplification * EPS64 * scale
    error = float(np.abs(a - e).max())
    assert error <= allowed, (f"{jax.tree_util.keystr(path)}: decomposed - direct in float64 "
                              f"{error:.3g}, allowed {allowed:.3g} (float32's errors up to "
                              f"{amplification:.3g} ulps of scale {scale:.3g})")
  jax.tree_util.tree_map_with_path(check, actual, exact, *float32)


def test_auto_lowering_is_decomposed_on_cpu_only():
  assert resolve_conv_lowering("auto") == (
      "decomposed" if jax.default_backend() == "cpu" else "direct")
  assert resolve_conv_lowering("direct") == "direct"
  with pytest.raises(ValueError, match="conv_lowering"):
    resolve_conv_lowering("im2col")


def test_forward_compiler_options_keep_the_convolution():
  """On the CPU the options move convolutions off XLA's YNNPACK fusions (one thread each) to
  its own convolution; the result stays within float32's rounding of the float64 one. The
  eval step is compiled with them; elsewhere they are empty."""
  options = forward_compiler_options()
  if jax.default_backend() != "cpu":
    assert options == {}
    return
  assert options
  x = jax.random.normal(jax.random.key(6), (2, 8, 8, 16, 5))
  w = jax.random.normal(jax.random.key(7), (3, 3, 3, 5, 4))
  args = ((1, 1, 1), [(1, 1)] * 3, (1, 1, 1))
  conv = jax.jit(lambda x, w: convolution(x, w, *args, lowering="decomposed"),
                 compiler_options=options)
  assert "ynn" not in conv.lower(x, w).compile().as_text()
  with jax.enable_x64(True):
    x64, w64 = (jnp.asarray(np.asarray(v), jnp.float64) for v in (x, w))
    exact = convolution(x64, w64, *args)
    abs_sum = convolution(jnp.abs(x64), jnp.abs(w64), *args)
  assert_reduction_close(conv(x, w), exact, abs_sum, 27 * 5)


def test_eval_step_is_compiled_with_the_forward_options():
  """Validation, evaluate and predict run the eval step: it carries the options."""
  config = configuration.load("configs/iMRrhpc.py:tiny")
  model = models.create_model(config.model)
  batch = models.dummy_batch("iMRrhpc", 2, mri_shape=(8, 8, 16))
  variables = model.init(jax.random.key(0), batch, train=False)
  text = inference.jit_eval_step(model).lower(
      variables["params"], variables["batch_stats"], batch).compile().as_text()
  assert ("ynn" not in text) if forward_compiler_options() else True

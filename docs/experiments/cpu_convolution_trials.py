"""Convolution forms on XLA:CPU that the model does not use, measured against those it does
(docs/experiments.md, "XLA:CPU's options").

An experiment, not part of the package. Commands (from the repository root, ~1 minute each on
2 cores):
  python docs/experiments/cpu_convolution_trials.py --trial layouts
  python docs/experiments/cpu_convolution_trials.py --trial patches

``layouts``: one ``lax.conv_general_dilated`` per layout, forward, float32, median of 15 runs:
the ``cpu`` benchmark geometry's iMRrhpc layer-1 3^3 convolution (8 volumes of 8 x 8 x 16 voxels,
64 -> 64 channels) and its stem (7^3, stride 2, 1 -> 64 channels on 8 volumes of 32 x 32 x 64),
each as one 3D convolution channels-last (NDHWC) and channels-first (NCDHW), and folded into a
2D convolution with the depth taps as channels (what ``conv_lowering='decomposed'`` does) in
NHWC and NCHW; with XLA's defaults and with its YNNPACK fusions off (the forward programs'
option, ``resnet.forward_compiler_options``).

``patches``: the benchmark's iMRrhpc and iMGrhpc eval steps (``configs/benchmark.py:cpu``,
batch 2) with the model's lowering, then with every windowed convolution computed as one
matmul over patches (the model does that only where the plane is smaller than the window),
alternating twice.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import benchmark
from mrp_jax.benchmark import steps
from mrp_jax.core import sharding
from mrp_jax.models import resnet

FLAGS = flags.DEFINE_enum("trial", "layouts", ["layouts", "patches"], "What to measure.")
YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


def median_ms(fn, *args, repeats: int = 15) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def conv(x, w, strides, padding, numbers):
  return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)


def layouts() -> None:
  rng = np.random.default_rng(0)
  cases = {"layer1": ((8, 8, 8, 16, 64), (3, 3, 3, 64, 64), (1, 1, 1), [(1, 1)] * 3),
           "stem": ((8, 32, 32, 64, 1), (7, 7, 7, 1, 64), (2, 2, 2), [(3, 3)] * 3)}
  for options_name, options in (("XLA's defaults", {}), ("YNNPACK fusions off", YNN_OFF)):
    for name, (x_shape, w_shape, strides, padding) in cases.items():
      x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
      w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
      # Folded: output depth d gathers its window's depth taps as channels.
      taps, (pad_front, pad_back) = w_shape[0], padding[0]
      out_depth = (x_shape[1] + pad_front + pad_back - taps) // strides[0] + 1
      padded = jnp.pad(x, [(0, 0), padding[0], (0, 0), (0, 0), (0, 0)])
      gathered = jnp.stack([padded[:, k:k + strides[0] * (out_depth - 1) + 1:strides[0]]
                            for k in range(taps)], axis=4)
      x2 = gathered.reshape(x_shape[0] * out_depth, x_shape[2], x_shape[3], taps * x_shape[4])
      w2 = jnp.transpose(w, (1, 2, 0, 3, 4)).reshape(w_shape[1], w_shape[2],
                                                     taps * w_shape[3], w_shape[4])
      forms = {
          "3D NDHWC": (("NDHWC", "DHWIO", "NDHWC"), strides, padding, x, w),
          "3D NCDHW": (("NCDHW", "OIDHW", "NCDHW"), strides, padding,
                       jnp.transpose(x, (0, 4, 1, 2, 3)), jnp.transpose(w, (4, 3, 0, 1, 2))),
          "folded 2D NHWC": (("NHWC", "HWIO", "NHWC"), strides[1:], padding[1:], x2, w2),
          "folded 2D NCHW": (("NCHW", "OIHW", "NCHW"), strides[1:], padding[1:],
                             jnp.transpose(x2, (0, 3, 1, 2)), jnp.transpose(w2, (3, 2, 0, 1))),
      }
      figures = []
      for form, (numbers, s, p, a, b) in forms.items():
        fn = jax.jit(lambda a, b, s=s, p=p, numbers=numbers: conv(a, b, s, p, numbers),
                     compiler_options=options)
        figures.append(f"{form} {median_ms(fn, a, b):.1f} ms")
      print(f"{options_name}, {name}: " + ", ".join(figures), flush=True)


def patches() -> None:
  lowered = resnet.convolution

  def every_window_as_patches(x, kernel, strides, padding, dilation, lowering="direct"):
    if lowering == "decomposed" and math.prod(kernel.shape[:-2]) > 1:
      return resnet._patches_matmul(x, kernel, strides, padding, dilation)
    return lowered(x, kernel, strides, padding, dilation, lowering)

  config = benchmark.get_config("cpu")
  mesh = sharding.make_mesh(jax.devices()[:1])
  for _ in range(2):
    for form, fn in (("decomposed", lowered), ("patches everywhere", every_window_as_patches)):
      resnet.convolution = fn  # read at trace time by every layer
      for name in ("iMRrhpc", "iMGrhpc"):
        bench = steps.JaxModelBench(config, name, mesh)
        ms = median_ms(bench.eval_jit, bench.state.params, bench.state.batch_stats, bench.batch)
        print(f"{form}: {name} eval step {ms:.1f} ms", flush=True)
  resnet.convolution = lowered


def main(argv):
  del argv
  {"layouts": layouts, "patches": patches}[FLAGS.value]()


if __name__ == "__main__":
  app.run(main)

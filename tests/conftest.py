"""Test-wide settings: CPU only, float32 matmuls exact enough for cross-checks."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# LLVM optimisation of XLA:CPU code costs far more than it saves at test sizes: init of a tiny
# 3D ResNet compiles in 6 s instead of 27 s, train steps run as fast (convolutions are library
# calls). BUILD_NOTES.md has the measurement.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

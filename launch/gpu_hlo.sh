#!/usr/bin/env bash
# What XLA:GPU makes of iMRrhpc at 176 x 176 x 352 in bfloat16, compiled for an H100 on a machine
# without a GPU (mrp_jax/gpu_target.py): per variant, the census of the optimised train and eval
# steps (kernels, FLOPs, bytes, roofline floor, convolution layouts) and, for the default, the
# memory plan per remat policy and batch. Nothing runs; each variant is a compile of ~1 min.
#
#   bash launch/gpu_hlo.sh [OUT_DIR]       (TARGET=h200 for the H200)
#
# Needs the jax CUDA plugin of the installed jax (`pip install -e '.[gpu-aot]'`); no CUDA
# libraries, driver or GPU. The figures: docs/performance.md, "Compiled for an H100".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_hlo}
TARGET=${TARGET:-h100}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

variant() {  # name, then config overrides
  local name=$1
  shift
  "$PYTHON" -m mrp_jax.main --config "configs/benchmark.py:full,$TARGET" \
      --workdir "$OUT/$name" "$@" 2>&1 | grep -v -e '^W0000' -e 'cuda drivers' \
      > "$OUT/$name.log" || { tail -20 "$OUT/$name.log"; return 1; }
  grep -e ' hlo ' -e ' plan ' "$OUT/$name.log" || true
}

# XLA's default layouts, and memory per remat policy at batch 8, 16 and 32.
variant default --config.benchmark.plan_remat='("none","dots","full")'
# cuDNN given channels-last (NDHWC) convolutions instead of XLA's NCDHW choice for 3D.
variant nhwc --config.benchmark.parts='("hlo",)' \
    --config.benchmark.compiler_options=xla_gpu_force_conv_nhwc=true
# The stem as a stride-1 convolution of 2x2x2 blocks (8 input channels instead of 1).
variant s2d --config.benchmark.parts='("hlo",)' --config.model.encoder.stem_space_to_depth=True
variant s2d_nhwc --config.benchmark.parts='("hlo",)' --config.model.encoder.stem_space_to_depth=True \
    --config.benchmark.compiler_options=xla_gpu_force_conv_nhwc=true
# MedicalNet's dilated layout.
variant medicalnet --config.benchmark.parts='("hlo",)' --config.model.encoder.layout=medicalnet
variant medicalnet_nhwc --config.benchmark.parts='("hlo",)' \
    --config.model.encoder.layout=medicalnet \
    --config.benchmark.compiler_options=xla_gpu_force_conv_nhwc=true

#!/usr/bin/env bash
# The accelerator figures of BUILD_NOTES.md: iMRrhpc at 176 x 176 x 352 in bfloat16, JAX against
# PyTorch (torch.compile, channels_last_3d, cudnn.benchmark, bf16 autocast) on one GPU, for the
# default ResNet layout and MedicalNet's dilated layout; then the three models' JAX steps.
#
#   bash launch/gpu_benchmark.sh [OUT_DIR]
#
# Needs jax with CUDA, flax, optax, torch and ml-collections. A machine without ml-collections
# (the device tool's image) gets it from wheels in .whl/ (pip download --no-deps ml-collections;
# see /work/.library/device/README.md); the benchmark's import path needs nothing else of ours
# (no Grain, pydicom or SimpleITK: the pipeline part is left out here).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/gpu_benchmark}}
mkdir -p "$OUT"
if ! python3 -c 'import ml_collections' 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "torch", torch.__version__)'

for layout in resnet medicalnet; do
  python3 -m mrp_jax.main --config "configs/benchmark.py:full,gpu" --workdir "$OUT/imr_$layout" \
      --config.model.encoder.layout="$layout" 2>&1 | tee "$OUT/imr_$layout.log"
done
# Every model's JAX steps at the full geometry (no PyTorch; the pipeline needs records).
python3 -m mrp_jax.main --config "configs/benchmark.py:full" --workdir "$OUT/all_models" \
    --config.benchmark.parts="('eval','train','augment')" 2>&1 | tee "$OUT/all_models.log"

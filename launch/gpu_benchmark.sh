#!/usr/bin/env bash
# GPU figures for docs/performance.md: iMRrhpc at 176 x 176 x 352 in bfloat16, JAX against
# PyTorch (torch.compile, channels_last_3d, cudnn.benchmark, bf16 autocast) on one GPU, for the
# default ResNet layout and MedicalNet's dilated layout; the three models' JAX steps; and the
# input pipeline at full geometry on the host's cores (in-process and with worker processes),
# alone and feeding the train step.
#
#   STAGES="pipeline models layout stem all_models" bash launch/gpu_benchmark.sh [OUT_DIR]
#
# Stages run in the order given (default: these five, pipeline first: CPU only, capped at
# 4 min); STAGES=plan adds XLA's memory plan per remat policy (three compiles, nothing run).
# A dry run of every stage on a CPU, at test size:
#   VARIANT=tiny RECORD_ARGS="--patients 8 --mri_shape 22,22,44 --mg_shape 64,32" \
#   STAGES="pipeline models layout stem plan all_models" bash launch/gpu_benchmark.sh /tmp/dry
# Needs jax with CUDA, flax, optax, torch, and for the pipeline Grain and its companions. On an
# offline host whose image lacks the latter, it installs the wheels that
# launch/offline_wheels.sh put in .whl/ (copy .whl/ along with the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/gpu_benchmark}}
STAGES=${STAGES:-pipeline models layout stem all_models}
RECORDS=${RECORDS:-/tmp/mrp_full_records}
VARIANT=${VARIANT:-full}             # configs/benchmark.py variant: full geometry, bfloat16
RECORD_ARGS=${RECORD_ARGS:---patients 48}  # input_pipeline.synthetic.records arguments
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c 'import grain, ml_collections, crc32c' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "torch", torch.__version__)'
echo "cpus $(nproc), /dev/shm $(df -h /dev/shm | awk 'NR==2 {print $2}')"

for stage in $STAGES; do
  case $stage in
    pipeline)
      # 48 patients (2.7 GB, in the page cache after writing), then the pipeline alone:
      # reader + batch thread, and 4 / 8 / 12 worker processes.
      timeout 240 bash -c "
        python3 -m input_pipeline.synthetic.records --out '$RECORDS' $RECORD_ARGS &&
        python3 -m input_pipeline.feed.throughput --records '$RECORDS' --batch_size 8 --batches 20 \
            --threads read+batch --workers 4 --workers 8 --workers 12" 2>&1 | tee "$OUT/pipeline.log" || true
      ;;
    models)
      for layout in resnet medicalnet; do
        parts="('eval','train','augment','torch')"
        # The default layout also trains from the pipeline (8 worker processes).
        [ "$layout" = resnet ] && [ -f "$RECORDS/manifest.json" ] &&
            parts="('eval','train','augment','pipeline','torch')"
        # XLA:GPU plans 14.6 GB for batch 8 without remat on an H100 (docs/performance.md,
        # "Memory plan"); should it not fit, the same run again with every block rematerialised.
        for remat in none full; do
          python3 -m mrp_jax.main --config "configs/benchmark.py:$VARIANT,gpu" \
              --workdir "$OUT/imr_${layout}_remat_$remat" \
              --config.model.encoder.layout="$layout" --config.model.encoder.remat=$remat \
              --config.benchmark.parts="$parts" --config.data.records="$RECORDS" \
              --config.data.workers=8 2>&1 | tee "$OUT/imr_${layout}_remat_$remat.log" && break
        done
      done
      ;;
    stem)
      # The default layout with the stem as a stride-1 convolution over space-to-depth blocks
      # (8 input channels instead of 1; same function): does it beat cuDNN's Cin=1 stem?
      for remat in none full; do
        python3 -m mrp_jax.main --config "configs/benchmark.py:$VARIANT,gpu" \
            --workdir "$OUT/imr_resnet_s2d_remat_$remat" --config.model.encoder.remat=$remat \
            --config.model.encoder.stem_space_to_depth=True \
            --config.benchmark.parts="('eval','train')" 2>&1 |
            tee "$OUT/imr_resnet_s2d_remat_$remat.log" && break
      done
      ;;
    layout)
      # cuDNN given channels-last 3D convolutions (XLA's default on Hopper is NCDHW): the same
      # program otherwise (launch/gpu_hlo.sh shows the HLO of both).
      python3 -m mrp_jax.main --config "configs/benchmark.py:$VARIANT,gpu" \
          --workdir "$OUT/imr_resnet_nhwc" --config.benchmark.parts="('eval','train')" \
          --config.benchmark.compiler_options=xla_gpu_force_conv_nhwc=true 2>&1 |
          tee "$OUT/imr_resnet_nhwc.log"
      ;;
    plan)
      # XLA's memory plan of the iMRrhpc train step on this GPU per remat policy at batch 8
      # (compiled, not run): whether XLA's scheduler keeps what remat saves (XLA:CPU does not).
      python3 -m mrp_jax.main --config "configs/benchmark.py:$VARIANT" --workdir "$OUT/plan" \
          --config.benchmark.models="('iMRrhpc',)" --config.benchmark.parts="('plan',)" \
          --config.benchmark.plan_batches="(8,)" 2>&1 | tee "$OUT/plan.log"
      ;;
    all_models)
      # Every model's JAX steps at the full geometry (no PyTorch).
      python3 -m mrp_jax.main --config "configs/benchmark.py:$VARIANT" --workdir "$OUT/all_models" \
          --config.benchmark.parts="('eval','train','augment')" 2>&1 | tee "$OUT/all_models.log"
      ;;
    *) echo "unknown stage $stage (pipeline, models, stem, plan, all_models)" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# Downloads into .whl/ the wheels that launch/gpu_benchmark.sh needs on an offline GPU host
# whose Python image has jax (CUDA), flax, optax, orbax-checkpoint and torch but not our data
# stack (grain, array_record, ml-collections, tensorflow-datasets' protos, crc32c), as
# the NVIDIA H100/H200 images with Python 3.12 on x86-64 we benchmark on. About 10 MB.
#
#   bash launch/offline_wheels.sh   # then copy .whl/ with the checkout (.gitignore keeps it out
#                                   # of git); gpu_benchmark.sh installs them when imports fail
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PY=${PYTHON:-python3}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# Versions: what the dev venv runs (BUILD_NOTES.md, "Versions tested"); the image has the rest
# of their requirements (absl-py, etils, cloudpickle, protobuf, numpy, six, wrapt, ...).
for pkg in grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 crc32c==2.9.post0 \
           ml-collections==1.1.0 tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 \
           immutabledict==4.3.1 toml==0.10.2 dm-tree==0.1.10; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${platforms[@]}" -d .whl "$pkg"
done
# promise (tensorflow-datasets imports it) is published as an sdist only: build a wheel.
"$PY" -m pip wheel -q --no-deps -w .whl promise==2.3
ls -1 .whl && du -sh .whl

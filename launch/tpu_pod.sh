#!/bin/bash
# Cloud TPU VM pod (e.g. v5p-32: 4 hosts). Creates the environment and starts training on every
# worker; JAX finds the pod's coordinator and process ids from the TPU metadata.
#   launch/tpu_pod.sh my-tpu us-east5-a iMRrhpc /mnt/shared/runs/iMRrhpc /mnt/disks/records
# WORKDIR must be shared by the workers (a gcsfuse or Filestore mount); RECORDS local on each.
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; MODEL=${3:-iMRrhpc}
WORKDIR=${4:?shared workdir}; RECORDS=${5:?records on every worker}
REPO=https://example.org/your/mrp-jax.git   # your fork or mirror
gcloud compute tpus tpu-vm ssh "${TPU}" --zone "${ZONE}" --worker=all --command "
  set -e
  test -d mrp-jax || git clone ${REPO} mrp-jax
  cd mrp-jax
  python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'
  .venv/bin/python -m mrp_jax.main --config configs/${MODEL}.py --workdir ${WORKDIR} \
      --config.data.records=${RECORDS} --config.distributed=True
"

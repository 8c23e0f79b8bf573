#!/bin/bash
# N JAX processes on this machine, joined by jax.distributed over localhost (CPU devices).
#   launch/local_multiprocess.sh 2 --config configs/rhpc.py:tiny --workdir /tmp/run \
#       --config.data.records=/tmp/records
# Every process gets JAX_NUM_PROCESSES, JAX_PROCESS_ID and the coordinator address; the script
# waits for all and fails if any fails.
set -uo pipefail
N=${1:?number of processes}; shift
PORT=${MRP_COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}
PYTHON=${PYTHON:-python}
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS="127.0.0.1:${PORT}" JAX_NUM_PROCESSES="${N}" \
  JAX_PROCESS_ID="${i}" "${PYTHON}" -m mrp_jax.main "$@" > "${MRP_LOG_PREFIX:-/tmp/mrp-process}-${i}.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "${pid}" || status=1; done
exit ${status}

#!/usr/bin/env bash
# Launch `softpick train` with torchrun, like flame's train.sh.
#
#   NGPU=8 bash train.sh --job.config_file configs/fla.toml --model.config configs/softpick_transformer_340M.json ...
#   NGPU=1 bash train.sh ...                         # one GPU (debugging)
#   NGPU=2 bash train.sh ... (no GPU: gloo on CPU)
#   bash train.sh -h                                 # every option with its help
#
# Environment: NGPU (processes per node, default 8), NNODE (nodes, default 1), NODE_RANK (default 0),
# LOG_RANK (ranks whose output is shown, default 0; e.g. 0,1), MASTER_ADDR (default localhost),
# MASTER_PORT (default 29500). Multi-node: run the same command on every node with NNODE, NODE_RANK,
# MASTER_ADDR and MASTER_PORT set (a scheduler such as Slurm usually provides them).
set -euo pipefail

for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
    exec python -m softpick train -h  # answered without importing torch
  fi
done

NGPU=${NGPU:-8}
NNODE=${NNODE:-1}
NODE_RANK=${NODE_RANK:-0}
LOG_RANK=${LOG_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}

if ! command -v torchrun >/dev/null 2>&1; then
  echo "train.sh: torchrun not found on PATH; activate the environment softpick is installed in (. .venv/bin/activate) or pip install -e . first." >&2
  exit 127
fi

# torchrun exits 1 whatever its workers returned and ends with its own failure summary: each worker
# leaves its exit code and one-line error in SOFTPICK_EXIT_FILE (softpick.errors.record_for_launcher),
# and this script exits with that code, the one line printed last.
SOFTPICK_EXIT_FILE=$(mktemp "${TMPDIR:-/tmp}/softpick-exit.XXXXXX")
rm -f "${SOFTPICK_EXIT_FILE}"
export SOFTPICK_EXIT_FILE
trap 'rm -f "${SOFTPICK_EXIT_FILE}"' EXIT

echo "launching on ${NNODE} node(s) x ${NGPU} process(es); master ${MASTER_ADDR}:${MASTER_PORT}" >&2
set -m  # torchrun in its own process group: one SIGTERM/SIGINT reaches it, forwarded by the traps below
torchrun \
  --nnodes "${NNODE}" --nproc_per_node "${NGPU}" --node_rank "${NODE_RANK}" \
  --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}" \
  --local-ranks-filter "${LOG_RANK}" --role rank --tee 3 \
  -m softpick.train.trainer "$@" &
pid=$!
trap 'kill -TERM "${pid}" 2>/dev/null || true' TERM
trap 'kill -INT "${pid}" 2>/dev/null || true' INT
set +e
wait "${pid}"
rc=$?
while kill -0 "${pid}" 2>/dev/null; do  # wait returned early for a trapped signal: wait for torchrun itself
  wait "${pid}"
  rc=$?
done
set -e
if [[ ${rc} -ne 0 && -s "${SOFTPICK_EXIT_FILE}" ]]; then
  { read -r code; read -r line; } < "${SOFTPICK_EXIT_FILE}"
  echo "${line}" >&2
  exit "${code}"
fi
exit "${rc}"

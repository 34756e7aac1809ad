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

if ! command -v python >/dev/null 2>&1 || ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('softpick') is None)" 2>/dev/null; then
  echo "train.sh: no python with softpick on PATH; activate the environment softpick is installed in (. .venv/bin/activate) or pip install -e . first." >&2
  exit 127
fi

echo "launching on ${NNODE} node(s) x ${NGPU} process(es); master ${MASTER_ADDR}:${MASTER_PORT}" >&2
# torchrun itself, in-process (softpick/train/launch.py): the workers' exit code (2, 3, 4, 75; torchrun
# alone exits 1) and their one-line error last, without torchrun's traceback
exec python -m softpick.train.launch \
  --nnodes "${NNODE}" --nproc_per_node "${NGPU}" --node_rank "${NODE_RANK}" \
  --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}" \
  --local-ranks-filter "${LOG_RANK}" --role rank --tee 3 \
  -m softpick.train.trainer "$@"

#!/usr/bin/env bash
# Everything a one-GPU device session should check and time, in time-boxed steps (each result written
# to $OUT as it finishes, so a cut-off run still returns what it did):
#
#   bash benchmarks/gpu_session.sh [STEP ...]     # on the GPU machine, from the repository root; OUT=dir
#
# A lent machine runs one command for at most 600 s: from a cold Triton cache give `tests` and
# `attention` a call each (about 5 minutes apiece).
#
# Steps (default: all, in this order; budgets in seconds from STEP_<NAME> variables):
#   tests       the kernel tests in bf16 on the GPU (tests/ops: training, KV-cache and sink kernels vs naive),
#               in 8 parallel pytest processes (benchmarks/gpu_tests.sh)
#   attention   benchmarks/attention.py --variants --kernels (softpick, softmax, softmax+1, sinks vs SDPA;
#               each kernel's time)
#   generate    benchmarks/generate.py (prefill/decode/generate tokens/s vs SDPA and HF Llama, KV-read bandwidth)
#   throughput  benchmarks/train_throughput.py: the 340M model with each attention variant, bf16, compile
#   check       benchmarks/gpu_check.py (bf16/fp16 against float64, compile)
#   cute        benchmarks/cute_model_check.py (the 340M model on the Hopper kernels vs Triton); the Hopper
#               kernels need the CuTe DSL staged first (shared/gpu/stage_cute_dsl.sh, two calls)
set -uo pipefail
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton-cache}" TRITON_CACHE_AUTOTUNING=1
export SOFTPICK_COMMIT="${SOFTPICK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
step() {  # step NAME SECONDS COMMAND...
  local name=$1 budget=$2; shift 2
  echo "== $name (at most ${budget}s)"
  timeout "$budget" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $?" | tee -a "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
}
declare -A RUN=(
  [tests]="bash benchmarks/gpu_tests.sh tests/ops"
  [attention]="python3 benchmarks/attention.py --variants --kernels --json $OUT/attention.json"
  [generate]="python3 benchmarks/generate.py --json $OUT/generate.json"
  [throughput]="python3 benchmarks/train_throughput.py --compile --peak-flops ${PEAK_FLOPS:-989e12} --steps 30 --batch-size 8 --seq-len 4096 --attn ${ATTN:-softpick,softmax,sink,softpick+gate,softpick+ssmax,softmax_plus_one} --json $OUT/throughput.json"
  [check]="python3 benchmarks/gpu_check.py --json $OUT/check.json"
  [cute]="python3 benchmarks/cute_model_check.py --json $OUT/cute_model.json"
)
declare -A BUDGET=([tests]=300 [attention]=300 [generate]=240 [throughput]=420 [check]=200 [cute]=200)
for name in "${@:-tests attention generate throughput check}"; do
  for one in $name; do
    [[ -n "${RUN[$one]:-}" ]] || { echo "unknown step $one (tests attention generate throughput check cute)"; exit 2; }
    var="STEP_${one^^}"
    # shellcheck disable=SC2086
    step "$one" "${!var:-${BUDGET[$one]}}" ${RUN[$one]}
  done
done

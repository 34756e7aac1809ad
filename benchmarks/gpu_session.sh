#!/usr/bin/env bash
# Everything a one-GPU device session should check and time, in one call (each step time-boxed, each
# result written to $OUT as it finishes, so a cut-off run still returns what it did):
#
#   bash benchmarks/gpu_session.sh            # on the GPU machine, from the repository root; OUT=dir
#
# 1. the kernel tests in bf16 on the GPU (tests/ops: training, KV-cache and sink kernels vs naive);
# 2. benchmarks/gpu_check.py (bf16/fp16 against float64, compile);
# 3. benchmarks/attention.py --variants (softpick, softmax, softmax+1, sinks vs SDPA);
# 4. benchmarks/generate.py (prefill/decode/generate tokens/s vs SDPA and HF Llama, KV-read bandwidth).
# Budgets in seconds: STEP_TESTS, STEP_CHECK, STEP_ATTN, STEP_GEN (defaults below).
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
step tests "${STEP_TESTS:-240}" python3 -m pytest -q -x -p no:cacheprovider tests/ops
step gpu_check "${STEP_CHECK:-200}" python3 benchmarks/gpu_check.py --json "$OUT/check.json"
step attention "${STEP_ATTN:-240}" python3 benchmarks/attention.py --variants --json "$OUT/attention.json"
step generate "${STEP_GEN:-300}" python3 benchmarks/generate.py --json "$OUT/generate.json"

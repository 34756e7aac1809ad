#!/usr/bin/env bash
# Issue 28's GPU session in one call: step profiles (benchmarks/train_profile.py) of the 340M dense
# (8 x 4,096) and varlen (1 x 65,536, context 4,096) recipes, softpick with the plain and the fused
# loss, softmax with the fused loss; then the 1.8B config in bf16 and float8 while time is left.
# Each run writes $OUT/<name>.json and .log; no run starts after BUDGET seconds.
#   OUT=/tmp/prof BUDGET=240 SOFTPICK_COMMIT=abc1234 bash benchmarks/train_profile_session.sh
# (float8 needs torchao on the GPU machine: carry a wheel that matches its torch.)
set -u
OUT=${OUT:-/tmp/train_profile}
BUDGET=${BUDGET:-240}
mkdir -p "$OUT"
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
echo "commit ${SOFTPICK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}"
run() {
    local name=$1 now
    shift
    now=$(( $(date +%s) - start ))
    if (( now > BUDGET )); then echo "SKIP $name (at ${now}s)"; return; fi
    echo "=== $name (at ${now}s): $*"
    timeout $(( BUDGET + 90 - now )) python3 benchmarks/train_profile.py --compile --json "$OUT/$name.json" "$@" \
        > "$OUT/$name.log" 2>&1
    echo "rc $? after $(( $(date +%s) - start ))s"
    grep -A20 "^| ms per step" "$OUT/$name.log" || { grep "^TIMED" "$OUT/$name.log"; tail -3 "$OUT/$name.log"; }
}
DENSE=(--batch-size 8 --seq-len 4096)
VARLEN=(--batch-size 1 --seq-len 65536 --context-len 4096 --varlen)
STEPS=(--warmup 3 --timed 4 --profiled 2)
run sp_varlen --attn softpick "${VARLEN[@]}" "${STEPS[@]}" --fused-loss true,false
run sp_dense --attn softpick "${DENSE[@]}" "${STEPS[@]}" --fused-loss true,false
run sm_varlen --attn softmax "${VARLEN[@]}" "${STEPS[@]}" --fused-loss true
run sm_dense --attn softmax "${DENSE[@]}" "${STEPS[@]}" --fused-loss true
B18=(--config configs/softpick_transformer_1B.json --batch-size 2 --seq-len 4096 --warmup 3 --timed 4 --profiled 2)
run b18_bf16 "${B18[@]}"
run b18_fp8 "${B18[@]}" --float8

#!/usr/bin/env bash
# The kernel tests on a GPU in SHARDS parallel pytest processes (default: one per CPU core, at most 16): on
# a fresh machine the autotuners' compiles dominate, and they run on the CPU, one process at a time each.
# Each shard's log ends with its 10 slowest tests. tests/ops/test_cute_compile.py is left out: it compiles
# every Hopper configuration on the CPU in each process that collects it (minutes, no GPU needed) and CI
# runs it; the GPU runs those kernels themselves in test_attention_cute.py. The repository root goes on
# PYTHONPATH for the subprocesses some tests start (benchmarks/sass.py).
#
#   bash benchmarks/gpu_tests.sh [PYTEST PATHS...]      # default tests/ops; all shards' logs in $OUT/tests_shards.log
set -uo pipefail
OUT="${OUT:-gpu-out}"
SHARDS="${SHARDS:-$(( $(nproc) < 16 ? $(nproc) : 16 ))}"
start=$SECONDS
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pytest -q --collect-only -p no:cacheprovider --ignore=tests/ops/test_cute_compile.py "${@:-tests/ops}" | grep '::' > "$OUT/test_ids.txt"
echo "$(wc -l < "$OUT/test_ids.txt") tests in $SHARDS shards"
pids=()
for ((i = 0; i < SHARDS; i++)); do
  mapfile -t ids < <(awk -v n="$SHARDS" -v i="$i" 'NR % n == i' "$OUT/test_ids.txt")
  python3 -m pytest -q -p no:cacheprovider --durations=10 "${ids[@]}" > "$OUT/tests_shard_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || status=1
  echo "shard $i: $(tail -n 1 "$OUT/tests_shard_$i.log")"
done
# one file back instead of SHARDS (the device tool returns at most 8 files from $OUT)
for i in "${!pids[@]}"; do echo "===== shard $i"; cat "$OUT/tests_shard_$i.log"; done > "$OUT/tests_shards.log"
rm -f "$OUT"/tests_shard_*.log "$OUT/test_ids.txt"
[[ $status == 0 ]] || grep -h -E "^(FAILED|ERROR|E  )" "$OUT/tests_shards.log" | head -n 60
echo "wall $((SECONDS - start)) s in $SHARDS shards"
exit $status

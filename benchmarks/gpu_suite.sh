#!/usr/bin/env bash
# Every GPU check of the README's Performance section in one run, within 8 minutes:
#   b0 and b4, bf16, eval and train step, against timm with AMP + channels_last, eager and
#   torch.compile; --depthwise-impl conv vs shift in training (XLA:GPU's grouped-conv backward
#   is slow, jax-ml/jax#13800); peak memory (JAX peak_bytes_in_use, torch max_memory_allocated);
#   EfficientDet D0's eval forward where flax_effnet registers it (tf_efficientdet_d0).
# Writes OUT/suite.json and OUT/suite.md (benchmarks/suite_table.py), plus each run's log.
#
#   bash benchmarks/gpu_suite.sh [OUT]          on a GPU machine (OUT: gpu_suite_out)
#   bash benchmarks/gpu_suite.sh --tiny [OUT]   on CPU: tiny sizes, proves the script works
#
# Each run has its own time limit (timeout); one that fails or times out is listed in the
# table as "no result" and the suite goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
if [ "${1:-}" = "--tiny" ]; then TINY=1; shift; fi
OUT=${1:-gpu_suite_out}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT"
BENCH=("$PY" benchmarks/bench_throughput.py --malloc keep --engines none)

if [ "$TINY" = 1 ]; then
  # CPU smoke mode: the same runs at 2 images of 64 px, one short repeat, no torch.compile,
  # and the peer comparisons in eval only (the train step is compiled in the depthwise runs).
  export JAX_PLATFORMS=cpu
  COMMON=(--device cpu --dtype bfloat16 --repeats 1 --warmup 1 --min-time 0.01 --size 64 --batch 2)
  PEER_OPTS=(--modes eval)
  B0_BATCH=(); B4_BATCH=()
  LIMIT=300
else
  COMMON=(--device gpu --dtype bfloat16 --repeats 5 --min-time 1.0 --channels-last on)
  PEER_OPTS=(--compile)
  B0_BATCH=(--batch 128); B4_BATCH=(--batch 32)
  LIMIT=120
fi

JSONS=()
run() {  # run NAME LIMIT_S ARGS...: one benchmark run, its JSON and log under $OUT
  local name=$1 limit=$2; shift 2
  echo "=== $name: ${BENCH[*]} $*" | tee "$OUT/$name.log"
  timeout "$limit" "${BENCH[@]}" "$@" --json "$OUT/$name.json" >>"$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || echo "$name: exit status $rc (124: timed out after ${limit}s); see $OUT/$name.log"
  JSONS+=("$OUT/$name.json")
}

START=$SECONDS
# timm eager and torch.compile, AMP bf16 + channels_last, against ours (depthwise 'auto').
run b0_bf16 "$((LIMIT + 30))" --variant b0 --peer timm "${B0_BATCH[@]}" "${COMMON[@]}" "${PEER_OPTS[@]}"
run b4_bf16 "$((LIMIT + 30))" --variant b4 --peer timm "${B4_BATCH[@]}" "${COMMON[@]}" "${PEER_OPTS[@]}"
# The depthwise implementations in training, ours only (which 'auto' should pick on GPU).
for impl in conv shift; do
  run "b0_train_${impl}" "$((LIMIT / 2))" --variant b0 --peer none --modes train \
    --depthwise-impl "$impl" "${B0_BATCH[@]}" "${COMMON[@]}"
done
# EfficientDet D0, once flax_effnet registers it: eval forward, ours only.
DET=$("$PY" -c "import flax_effnet; print(' '.join(flax_effnet.list_models('tf_efficientdet_d0*')))" 2>/dev/null)
if [ -n "$DET" ]; then
  run "${DET%% *}_eval" "$((LIMIT / 2))" --model "${DET%% *}" --peer none --modes eval "${COMMON[@]}"
else
  echo "EfficientDet D0: not registered in flax_effnet (list_models('tf_efficientdet_d0*') is empty); skipped"
fi
echo "suite took $((SECONDS - START)) s"

DEVICE=$("$PY" -c "import jax; d = jax.devices()[0]; print(d.platform, d.device_kind)" 2>/dev/null)
"$PY" benchmarks/suite_table.py "$OUT" "GPU suite on ${DEVICE:-unknown} ($( [ "$TINY" = 1 ] && echo 'tiny CPU smoke mode, figures meaningless' || echo bf16 ))" "${JSONS[@]}"

#!/usr/bin/env bash
# The README's CPU Performance figures in one command (about 10 minutes on a quiet 2-core
# machine): flax_effnet against timm eager (eval and train step) and, for eval, ONNX Runtime and
# OpenVINO on the timm model's ONNX export, all interleaved in one process; then the eval
# contestants each in its own process; b0 (batch 8 and 1), b4, bf16 (where the CPU has
# avx512_bf16 or AMX), mobilenetv2_100, rexnet_100. Writes OUT/suite.json and OUT/suite.md.
#
#   bash benchmarks/run_cpu_suite.sh [OUT]        (OUT: cpu_suite_out)
#   QUICK=1 bash benchmarks/run_cpu_suite.sh      fewer repeats (a smoke run, about half the time)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-cpu_suite_out}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
export JAX_PLATFORMS=cpu
R=${QUICK:+3}; R=${R:-7}
BENCH=("$PY" benchmarks/bench_throughput.py --malloc keep --repeats "$R")
JSONS=()
run() {  # run NAME ARGS...
  local name=$1; shift
  echo "=== $name: ${BENCH[*]} $* (load average $(cut -d' ' -f1-3 /proc/loadavg))" | tee "$OUT/$name.log"
  "${BENCH[@]}" "$@" --json "$OUT/$name.json" >>"$OUT/$name.log" 2>&1 \
    || echo "$name failed (exit $?); see $OUT/$name.log"
  grep -E "^(logits check|flax_effnet|timm|onnxruntime|openvino|==)" "$OUT/$name.log" | tail -n 12
  JSONS+=("$OUT/$name.json")
}
START=$SECONDS
run b0_f32 --variant b0 --batch 8
grep -q avx512_bf16 /proc/cpuinfo || grep -q amx_bf16 /proc/cpuinfo \
  && run b0_bf16_eval --variant b0 --batch 8 --dtype bfloat16 --modes eval
run b0_f32_isolated --variant b0 --batch 8 --modes eval --isolate 2
run b0_batch1 --variant b0 --batch 1
run b4_f32 --variant b4 --batch 8 --repeats 3 --min-time 1.0
run mobilenetv2_100 --model mobilenetv2_100 --batch 8
run rexnet_100 --model rexnet_100 --batch 8
echo "suite took $((SECONDS - START)) s"
"$PY" benchmarks/suite_table.py "$OUT" \
  "CPU suite: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, XLA_FLAGS as the console scripts set them" \
  "${JSONS[@]}"

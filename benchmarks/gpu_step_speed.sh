#!/usr/bin/env bash
# Issue 12's GPU checks in one call (time limits adding up to 565 s, under the 10 minutes of one
# device call): the CUDA-only tests, the step throughput (floor, mdist, the fast path with the fused
# encoder, with CUDA graphs, naive HF), the kernel timings with the vocabulary op's sweep and the
# in-place layer pairs, and profiled steps at batch 64 and 16. Each benchmark prints its table and
# appends it to benchmarks/RESULTS.md; a step that fails or runs out of time is reported and the
# next one still runs. Needs torch, triton and transformers only (no deepspeed, mlflow, webdataset).
#
#   bash benchmarks/gpu_step_speed.sh [LOG_DIR]     # LOG_DIR (default .) gets log.txt and a copy of RESULTS.md
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${1:-.}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}

step() {  # step SECONDS NAME COMMAND...: run with a time limit, keep going on failure
  local limit=$1 name=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  [ $rc -eq 0 ] || echo "=== $name: exit $rc"
  cp benchmarks/RESULTS.md "$LOG_DIR/RESULTS.md"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  $PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || true
  if ! $PY -c "import mdist.kernels" 2>/dev/null; then  # no install (the GPU machine's pip could not build it): link the package layout
    ln -sfn ../kernels mdist/kernels && ln -sfn ../ds_configs mdist/ds_configs
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    echo "mdist not installed; linked mdist/kernels and mdist/ds_configs, PYTHONPATH=$PYTHONPATH"
  fi
  step 45 "CUDA kernel tests" $PY -m pytest -q -p no:cacheprovider tests/test_kernels_bf16_cuda.py
  step 140 "throughput, batch 64" $PY benchmarks/throughput.py --batches 64 --students 1 2 --variants floor mdist "mdist + fused encoder"
  step 80 "throughput, batch 16" $PY benchmarks/throughput.py --batches 16 --students 1 --variants floor mdist "mdist + fused encoder" "naive HF"
  step 70 "throughput with CUDA graphs (own process: an error there stops no other row)" $PY benchmarks/throughput.py --batches 16 64 --students 1 --variants "mdist + fused encoder + CUDA graphs"
  step 45 "kernels: vocabulary op sweep" $PY benchmarks/loss_kernels.py --only vocab --sweep --skip compiled --iters 10 --profile "^fused, whole-vocab chunks$"
  step 40 "profile of the fast path" $PY benchmarks/throughput.py --batches 64 --students 1 --variants "mdist + fused encoder" --profile
  step 35 "profile at batch 16 (kernel time against step time: how launch-bound)" $PY benchmarks/throughput.py --batches 16 --students 1 --variants mdist --profile
  step 30 "kernels: attention" $PY benchmarks/loss_kernels.py --only attention --skip "compiled|eager" --iters 10 --profile "in place\)$"
  step 35 "kernels: hidden MSE sweep" $PY benchmarks/loss_kernels.py --only hidden --sweep --skip eager --iters 10
  step 45 "fused encoder tests on CUDA" $PY -m pytest -q -p no:cacheprovider tests/test_fused_encoder.py -k "not distill"
  echo "=== done $(date -u +%H:%M:%S)"
} 2>&1 | tee "$LOG_DIR/log.txt"

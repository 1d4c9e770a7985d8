#!/usr/bin/env bash
# The one GPU call: the production path and the speed tables on one lent GPU, in at most 9 minutes
# (the limits below add up to 545 s). Each step runs under its own time limit; a step that fails or
# runs out of time is reported and the next one still runs. Benchmarks print their tables and append
# them to benchmarks/RESULTS.md, copied to OUT_DIR after every step with the log.
#   1. the wheelhouse `make gpu-wheels` filled (.whl/: DeepSpeed, MLflow, webdataset, … which the GPU
#      machine lacks), installed with --no-index --no-deps into a private target, then checked;
#   2. the CUDA-only tests (bf16 kernels against float64, the fused encoder on CUDA);
#   3. benchmarks/production_path.py: `mdist distill` at XLM-R base shapes (SIGTERM at a checkpoint,
#      --resume, batch 16 and 64, two students sequential and joint), its loop's tokens/s beside the
#      benchmark step's;
#   4. the step throughput tables (floor, mdist, fused encoder, naive HF) and profiled steps at batch 64 and 16.
#
#   bash benchmarks/gpu_acceptance.sh OUT_DIR                       # on the GPU machine
#   MDIST_GPU_DRY_RUN=1 bash benchmarks/gpu_acceptance.sh OUT_DIR   # every step on the CPU at tiny shapes (CI)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: bash benchmarks/gpu_acceptance.sh OUT_DIR}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
DRY=${MDIST_GPU_DRY_RUN:-0}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MDIST_GPU_DRY_RUN=$DRY
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$OUT_DIR/torch_extensions}
PY=${PYTHON:-python3}
FAILED=0

step() {  # step SECONDS NAME COMMAND...: run with a time limit (on the GPU; LIMIT_SCALE times it in a dry run), keep going on failure
  local limit=$(($1 * LIMIT_SCALE)) name=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then echo "=== $name: exit $rc"; FAILED=$((FAILED + 1)); fi
  cp benchmarks/RESULTS.md "$OUT_DIR/RESULTS.md"
}

LIMIT_SCALE=1
if [ "$DRY" = 1 ]; then  # the same steps, CPU-sized; a CPU starts processes and interprets Triton slower
  export TRITON_INTERPRET=1 DS_ACCELERATOR=cpu
  LIMIT_SCALE=4
  THROUGHPUT_64=(--smoke --batches 4 --students 1 2 --variants floor mdist)
  THROUGHPUT_16=(--smoke --batches 2 --students 1 --variants floor mdist "naive HF")
  PROFILE=(--smoke --batches 2 --students 1 --variants mdist --profile)
  CUDA_TESTS=(--collect-only)  # they skip without CUDA: collecting them proves the imports
else
  THROUGHPUT_64=(--batches 64 --students 1 2 --variants floor mdist "mdist + fused encoder")
  THROUGHPUT_16=(--batches 16 --students 1 --variants floor mdist "mdist + fused encoder" "naive HF")
  PROFILE=(--batches 64 16 --students 1 --variants mdist --profile)
  CUDA_TESTS=(-k "not distill")
fi

{
  [ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if [ -d .whl ] && [ "$DRY" != 1 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mdist-site .whl/*.whl \
      && export PYTHONPATH=/tmp/mdist-site${PYTHONPATH:+:$PYTHONPATH} || echo "=== installing the wheelhouse failed"
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  if ! $PY -c "import mdist.kernels" 2>/dev/null; then  # not installed: the package layout setup.py would make, as links
    ln -sfn ../kernels mdist/kernels && ln -sfn ../ds_configs mdist/ds_configs
    echo "mdist not installed; linked mdist/kernels and mdist/ds_configs"
  fi
  $PY -c "import torch, triton, transformers, deepspeed, mlflow, webdataset; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, 'mlflow', mlflow.__version__)"
  [ -f benchmarks/gpu_wheels_check.py ] && step 25 "wheelhouse check" $PY benchmarks/gpu_wheels_check.py
  step 60 "CUDA-only tests" $PY -m pytest -q -p no:cacheprovider tests/test_kernels_bf16_cuda.py tests/test_fused_encoder.py "${CUDA_TESTS[@]}"
  step 230 "production path: mdist distill at XLM-R base shapes" $PY benchmarks/production_path.py "$OUT_DIR/production"
  step 115 "throughput, batch 64" $PY benchmarks/throughput.py "${THROUGHPUT_64[@]}"
  step 65 "throughput, batch 16" $PY benchmarks/throughput.py "${THROUGHPUT_16[@]}"
  step 50 "profiles at batch 64 and 16" $PY benchmarks/throughput.py "${PROFILE[@]}"
  echo "=== done $(date -u +%H:%M:%S), $FAILED step(s) failed"
} 2>&1 | tee "$OUT_DIR/log.txt"
grep -q ", 0 step(s) failed" "$OUT_DIR/log.txt"

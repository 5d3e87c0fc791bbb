#!/usr/bin/env bash
# The GPU path, checked in one command (under 5 minutes on one GPU):
#   1. the demo's uniform run at mixed_float16 (loss scaling) with XLA on: loss falls, no NaN;
#   2. train-step images/s, unet-small and efficientnetb4 at 384 px batch 16, float32 vs
#      mixed_float16, XLA off and on (bench_train.py);
#   3. input-pipeline images/s, augmentation in tf.data on the CPU and deferred to the train
#      step on the GPU (augment.device: accelerator; bench_pipeline.py's "deferred" row);
#   4. the train step under MirroredStrategy on every visible GPU.
# Each part is its own process with its own time limit; a part that fails is named at the end.
#
# Usage:  bash benchmarks/gpu_check.sh               # on a GPU machine
#         bash benchmarks/gpu_check.sh --cpu-smoke   # every part on the CPU at tiny sizes
#                                                    # (unet-small only), ~3 minutes
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
SMOKE=""
if [ "${1:-}" = "--cpu-smoke" ] || [ -n "${SEGBALANCE_CPU_SMOKE:-}" ]; then
    SMOKE="--cpu-smoke"
    export CUDA_VISIBLE_DEVICES=""
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/segbalance-gpu-check-XXXXXX")"
export TF_CPP_MIN_LOG_LEVEL=2
FAILED=()
START=$SECONDS

part() {  # part NAME SECONDS COMMAND...: run with a limit, keep going on failure
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit} s) ==="
    local began=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep --line-buffered -v -E "^(I0000|W0000|WARNING: All log)|oneDNN|cpu_feature_guard|To enable the following|triggered tf.function retracing"
    local rc=${PIPESTATUS[0]}
    echo "--- $name: exit $rc, $((SECONDS - began)) s"
    [ "$rc" -eq 0 ] || FAILED+=("$name")
}

"$PY" - <<'PYEOF' 2>/dev/null | tail -n 3
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print(f"TensorFlow {tf.__version__}; GPUs: {[g.name for g in gpus] or 'none'}")
for g in gpus:
    print(" ", tf.config.experimental.get_device_details(g))
PYEOF

if [ -n "$SMOKE" ]; then
    # efficientnet's XLA compile alone takes minutes on 2 CPU cores: unet-small only.
    TRAIN_ARGS=(--models unet-small --size 64 --batch 2 --warmup 1 --steps 1)
    PIPE_ARGS=(--scale 0.05 --size 64 --batch 4 --batches 4 --repeats 1)
else
    TRAIN_ARGS=(--models unet-small efficientnetb4 --size 384 --batch 16 --warmup 2 --steps 5)
    PIPE_ARGS=(--scale 0.15 --size 384 --batch 16 --batches 8 --repeats 1)
fi

part demo 120 "$PY" benchmarks/gpu_check.py demo $SMOKE --work "$WORK"
part train-step 200 "$PY" benchmarks/bench_train.py "${TRAIN_ARGS[@]}" \
    --precisions float32 mixed_float16 --jit off on --json "$WORK/train_step.json"
part pipeline 150 "$PY" benchmarks/bench_pipeline.py --data "$WORK/pipeline-data" "${PIPE_ARGS[@]}"
part mirrored 90 "$PY" benchmarks/gpu_check.py mirrored $SMOKE

echo
echo "gpu_check: $((SECONDS - START)) s in all; scratch files in $WORK"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}"
    exit 1
fi
echo "all parts passed"

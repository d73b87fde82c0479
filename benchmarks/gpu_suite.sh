#!/usr/bin/env bash
# The GPU comparison of docs/performance.md: resnext50_32x4d, batch 256, 224px, bf16, our model
# on Keras' JAX backend against torchvision (channels_last, autocast bf16) eager and compiled.
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
# Writes train.log and infer.log (each ends with compare.py's table) to OUT_DIR (default
# ./gpu_results). Environment: OURS (default "auto,grouped": auto is block_diagonal on a GPU),
# OURS_INFER (default the same), PEERS (default
# "compiled+cl,eager+cl"), STEPS, WINDOWS, WARMUP, REPEATS, MODES (default "train infer").
set -o pipefail
out=${1:-gpu_results}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
# The repository is not installed there, and the benchmarks never are: make resnext_tf and the
# benchmarks package importable from the checkout, wherever this runs from.
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,memory.total \
    --format=csv | tee "$out/gpu.txt"
"$python" -c "import jax, keras, torch, torchvision; print('jax', jax.__version__, jax.devices(), \
'keras', keras.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)" \
    | tee -a "$out/gpu.txt"
for mode in ${MODES:-train infer}; do
    ours=${OURS:-auto,grouped}
    [ "$mode" = infer ] && ours=${OURS_INFER:-$ours}
    "$python" -m benchmarks.compare --backend=jax --mode="$mode" --batch_size=256 --image_size=224 \
        --dtype=bfloat16 --steps="${STEPS:-20}" --windows="${WINDOWS:-3}" --warmup="${WARMUP:-3}" \
        --repeats="${REPEATS:-1}" --ours="$ours" --peers="${PEERS:-compiled+cl,eager+cl}" \
        2>&1 | tee "$out/$mode.log" || exit
done

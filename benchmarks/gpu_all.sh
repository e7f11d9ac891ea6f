#!/usr/bin/env bash
# Every speed check of issue 14 in one go, for a GPU session (H100-class), each beside its
# plain path from the same run. Writes one markdown table per check into DIR.
#
#   bash benchmarks/gpu_all.sh [DIR]          # DIR defaults to $OUT, else benchmarks/results/gpu
#   bash benchmarks/gpu_all.sh --smoke [DIR]  # on CPU at tiny sizes (the tests run this)
#
# Tables: encode-<dtype>.md (VAE encode images/s: plain, fold, fold+channels-last,
# +torch.compile; relative error against float32), infer-<dtype>.md (ms per image at batch
# 1 and 8: plain, fast, fast+compile with CUDA graphs at batch 1; max abs / rel error
# against float32), encode-pipeline-<dtype>.md (`delit encode` end to end, plain path beside
# the pipelined one, with the encoder's share and the limiting stage).
set -euo pipefail

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
    smoke=1
    shift
fi
dir="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$dir"
py="${PYTHON:-python}"

if [[ $smoke == 1 ]]; then
    common=(--device cpu --size 32 --warmup 0 --iters 1 --compile-backend eager --vae demo)
    enc=(--batch-size 2)
    inf=(--batch-sizes 1)
    pipe=(--device cpu --n 4 --size 32 --batch-size 2 --block-size 2 --repeats 1 --workers 2)
    dtypes=(float32)
else
    common=(--device cuda --size 512 --warmup 3 --iters 20)
    enc=(--batch-size 16)
    inf=(--batch-sizes 1 8)
    pipe=(--device cuda --vae random-full --n 512 --size 512 --batch-size 16 --block-size 64
        --repeats 2 --workers 12 --synth-workers 16)
    dtypes=(float32 bfloat16)
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$dir/gpu.txt" 2>&1 || true
for dtype in "${dtypes[@]}"; do
    "$py" benchmarks/gpu_speed.py encode "${common[@]}" "${enc[@]}" --dtype "$dtype" \
        --out "$dir/encode-$dtype.md"
    "$py" benchmarks/gpu_speed.py infer "${common[@]}" "${inf[@]}" --dtype "$dtype" \
        --out "$dir/infer-$dtype.md"
    "$py" benchmarks/encode_pipeline.py "${pipe[@]}" --dtype "$dtype" \
        --out "$dir/encode-pipeline-$dtype.md"
done
echo "tables in $dir"

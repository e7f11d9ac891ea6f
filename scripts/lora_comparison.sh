#!/usr/bin/env bash
# Issue 15's comparison: train-lora on the demo codec from the shipped demo heads, then
# delit eval on the leave-HDRI-out set with and without the adapters, the hair/eye crops
# and the results table. Usage: scripts/lora_comparison.sh WORKDIR [STEPS] [LIMIT]
# (LIMIT: evaluate the first LIMIT held-out portraits only; default all 96).
# WORKDIR holds scripts/make_training_data.sh's data (train_100..104, train.zarr,
# val_heldout); the run and the eval files go to WORKDIR/lora_run.
set -euo pipefail
work=${1:?usage: $0 WORKDIR [STEPS] [LIMIT]}
steps=${2:-30}
limit=()
[ -n "${3:-}" ] && limit=(--limit "$3")
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$work/lora_run"
mkdir -p "$out"
data=()
for s in 100 101 102 103 104; do data+=(--data "$work/train_$s"); done
start=$(date +%s)
set +e
delit train-lora --checkpoint demo --vae demo "${data[@]}" --cache "$work/train.zarr" \
    --out "$out/run" --steps "$steps" --batch-size 4 --lr 5e-4 --warmup-steps 0 \
    --device cpu --no-progress 2>&1 | tee "$out/train.log"
rc=${PIPESTATUS[0]}
set -e
echo "rc=$rc wall_s=$(( $(date +%s) - start ))" | tee -a "$out/train.log"
[ "$rc" = 0 ]
common=(--checkpoint demo --vae demo --data "$work/val_heldout" --device cpu "${limit[@]}")
delit eval "${common[@]}" --json "$out/eval_plain.json"
delit eval "${common[@]}" --lora "$out/run/lora.safetensors" --json "$out/eval_lora.json"
python "$here/benchmarks/lora_crops.py" --data "$work/val_heldout" \
    --lora "$out/run/lora.safetensors" --out "$here/docs/lora_crops.png" --n 4
python "$here/benchmarks/lora_table.py" --without "$out/eval_plain.json" \
    --with "$out/eval_lora.json" --train-script "$here/scripts/lora_comparison.sh" \
    --train-log "$out/train.log" --out "$here/benchmarks/results/cpu-lora.md" \
    --command "scripts/lora_comparison.sh $*"

#!/usr/bin/env bash
# How the packaged demo heads (delit_cache/assets/demo_heads.safetensors and
# demo_mean_env.exr) are made: scripts/make_training_data.sh's 5000 portraits (the held-out
# HDRIs left out); stage 1 configs/demo-heads.yaml from scratch, stage 2
# configs/demo-heads-finetune.yaml from stage 1. Usage: scripts/train_demo_heads.sh WORKDIR
# (WORKDIR may already hold the data; the recipe skips what exists and resumes the cache).
set -euo pipefail
work=${1:?usage: $0 WORKDIR}
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/make_training_data.sh" "$work"
delit train-heads --cache "$work/train.zarr" --out "$work/stage1" \
    --config "$here/configs/demo-heads.yaml"
delit train-heads --cache "$work/train.zarr" --out "$work/final" \
    --config "$here/configs/demo-heads-finetune.yaml" --init-from "$work/stage1"
cp "$work/final/heads.safetensors" "$here/delit_cache/assets/demo_heads.safetensors"
cp "$work/final/mean_env.exr" "$here/delit_cache/assets/demo_mean_env.exr"

#!/usr/bin/env bash
# How the packaged demo heads (delit_cache/assets/demo_heads.safetensors and
# demo_mean_env.exr) were made: the demo's own data and config, trained longer.
# About 30 minutes on 2 CPU cores. Usage: scripts/train_demo_heads.sh WORKDIR
set -euo pipefail
work=${1:?usage: $0 WORKDIR}
assets="$(cd "$(dirname "$0")/.." && pwd)/delit_cache/assets"
delit synth --out "$work/data/train" --n 320 --size 256 --seed 0 --workers 2
delit encode --vae demo --data "$work/data/train" --out "$work/cache.zarr" --size 256 --batch-size 8
delit train-heads --cache "$work/cache.zarr" --out "$work/run" --config demo --steps 1500
cp "$work/run/heads.safetensors" "$assets/demo_heads.safetensors"
cp "$work/run/mean_env.exr" "$assets/demo_mean_env.exr"

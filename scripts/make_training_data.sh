#!/usr/bin/env bash
# The training data of the shipped demo heads, and the leave-HDRI-out evaluation set.
#
#   scripts/make_training_data.sh WORKDIR [CHUNKS]
#
# Training: CHUNKS x 1000 synthetic portraits at 256 px (default 5 chunks, seeds 100..),
# lit by the wide lighting recipe (delit_cache.synth.environments: procedural sky, overcast,
# indoor, studio, neon and single-key lights, a second source mixed in, white-balance tints,
# HDRIs rotated and exposed) with the packaged HDRIs named in HELDOUT_HDRIS left out and 30 %
# of the samples lit by the other HDRIs. Held out: 96 portraits of another seed (7), lit only
# by the held-out HDRIs. Both are encoded with the demo codec (torch.compile'd encoder).
# Encoding runs chunk by chunk, appending to one cache, so a killed run continues where it
# stopped when started again.
set -euo pipefail
work=${1:?usage: $0 WORKDIR [CHUNKS]}
chunks=${2:-5}
heldout=courtyard,interior  # = delit_cache.synth.environments.HELDOUT_HDRIS
mkdir -p "$work"
cd "$work"
[ -f val_heldout/shard-000000.tar ] || delit synth --out val_heldout --n 96 --size 256 --seed 7 --workers 2 \
    --hdris "$heldout" --p-hdri 1
delit encode --vae demo --data val_heldout --out val_heldout.zarr --size 256 --batch-size 8 \
    --compile --no-progress
for ((i = 0; i < chunks; i++)); do
    s=$((100 + i))
    [ -f "train_$s/shard-000000.tar" ] || delit synth --out "train_$s" --n 1000 --size 256 --seed "$s" \
        --workers 2 --exclude-hdris "$heldout" --p-hdri 0.3
    delit encode --vae demo --data "train_$s" --out train.zarr --size 256 --batch-size 8 \
        --compile --no-progress
done

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
#
# Then train_bg.zarr, stages 6-7's data: train.zarr plus 2000 portraits (seeds 105, 106,
# the same lighting recipe) behind which another, independently drawn env map is shown
# (`--p-other-background 1`): for those, the face is the only view of the light. And
# train_bg4.zarr, stage 8's: train_bg.zarr plus 2000 more such portraits (seeds 107, 108).
# And train_new.zarr, stage 9's: 4000 portraits of new faces (seeds 110-113), half of them with
# another env map behind them (`--p-other-background 0.5`); train_more.zarr, stage 10's: those
# and 4000 more (seeds 114-117); train_plain.zarr, stage 11's: 4000 more new faces (seeds
# 118-121, the same options); train_fresh.zarr, stage 12's: 4000 more (seeds 122-125). (The same faces lit by `--p-hdri 0.5 --p-mirror 0.5 --max-tilt
# 20`, mirrored and tilted training HDRIs, were measured and not kept: cpu-leave-hdri-out.md,
# tenth session; so were 4000 more, seeds 126-129, `new_faces S train_s13.zarr --p-hdri 0.3`,
# and the same with `--indoor-layout one-source` into train_s13b.zarr: twelfth session.) Then
# train_pm.zarr, stage 13's, and train_pm14.zarr, stage 14's: 4000 more new faces (seeds
# 130-133) lit the same way (below); train_pm15.zarr, stage 15's: 8000 more (seeds 134-141).
# (4000 more, seeds 142-145, `pool_faces S train_pm16.zarr`, with and without `delit encode
# --augment 2`, were measured and not kept: cpu-leave-hdri-out.md, sixteenth session.)
# Stage 16's: 4000 more new faces (seeds 146-149) lit the same way: train_pm17.zarr; stage
# 17's: 4000 more (seeds 150-153): train_pm21.zarr. Last,
# 384 more held-out portraits (seed 8, val_heldout8) for the light direction
# (benchmarks/light_split.py).
set -euo pipefail
work=${1:?usage: $0 WORKDIR [CHUNKS]}
here="$(cd "$(dirname "$0")/.." && pwd)"
chunks=${2:-5}
[ "$chunks" -le 5 ] || { echo "$0: at most 5 chunks (seeds 105-108 belong to train_bg*)" >&2; exit 2; }
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
for s in 105 106 107 108; do
    [ -f "train_bg_$s/shard-000000.tar" ] || delit synth --out "train_bg_$s" --n 1000 --size 256 \
        --seed "$s" --workers 2 --exclude-hdris "$heldout" --p-hdri 0.3 --p-other-background 1
done
copy_cache() {  # a copy of a finished cache, made under a temp name
    if [ ! -d "$2" ]; then
        rm -rf "$2.partial"
        cp -r "$1" "$2.partial"
        mv "$2.partial" "$2"
    fi
}
copy_cache train.zarr train_bg.zarr
for s in 105 106; do
    delit encode --vae demo --data "train_bg_$s" --out train_bg.zarr --size 256 --batch-size 8 \
        --compile --no-progress
done
copy_cache train_bg.zarr train_bg4.zarr
for s in 107 108; do
    delit encode --vae demo --data "train_bg_$s" --out train_bg4.zarr --size 256 --batch-size 8 \
        --compile --no-progress
done
new_faces() {  # 1000 portraits of seed $1, half with another background, appended to cache $2
    # (further synth options: $3 ...)
    [ -f "train_$1/shard-000000.tar" ] || delit synth --out "train_$1" --n 1000 --size 256 \
        --seed "$1" --workers 2 --exclude-hdris "$heldout" --p-other-background 0.5 \
        "${@:3}"
    delit encode --vae demo --data "train_$1" --out "$2" --size 256 --batch-size 8 \
        --compile --no-progress
}
for s in 110 111 112 113; do new_faces "$s" train_new.zarr --p-hdri 0.3; done
copy_cache train_new.zarr train_more.zarr
for s in 114 115 116 117; do new_faces "$s" train_more.zarr --p-hdri 0.3; done
for s in 118 119 120 121; do new_faces "$s" train_plain.zarr --p-hdri 0.3; done
for s in 122 123 124 125; do new_faces "$s" train_fresh.zarr --p-hdri 0.3; done
# Stage 13's: the same seeds 126-129 (other folders), lit by a pool of 20 real training HDRIs,
# half of the portraits by one of them: the three packaged training HDRIs and 17 CC0 Poly Haven
# maps of the npm package @pmndrs/assets (scripts/extra_hdris.py, which checks that none looks
# like a held-out HDRI; needs npm): train_pm.zarr.
[ -f pmndrs-assets-1.7.0.tgz ] || npm pack --silent @pmndrs/assets@1.7.0
[ -d hdri_plus ] || "${PYTHON:-python}" "$here/scripts/extra_hdris.py" pmndrs-assets-1.7.0.tgz hdri_plus
pool_faces() {  # 1000 portraits of seed $1 lit by the pool hdri_plus, appended to cache $2
    [ -f "train_pm_$1/shard-000000.tar" ] || delit synth --out "train_pm_$1" --n 1000 --size 256 \
        --seed "$1" --workers 2 --hdri-dir hdri_plus --p-other-background 0.5 --p-hdri 0.5
    delit encode --vae demo --data "train_pm_$1" --out "$2" --size 256 --batch-size 8 \
        --compile --no-progress
}
for s in 126 127 128 129; do pool_faces "$s" train_pm.zarr; done
# Stage 14's: 4000 more new faces (seeds 130-133) lit the same way: train_pm14.zarr.
for s in 130 131 132 133; do pool_faces "$s" train_pm14.zarr; done
# Stage 15's: 8000 more new faces (seeds 134-141) lit the same way: train_pm15.zarr.
for s in 134 135 136 137 138 139 140 141; do pool_faces "$s" train_pm15.zarr; done
# Stage 16's: 4000 more new faces (seeds 146-149) lit the same way: train_pm17.zarr.
for s in 146 147 148 149; do pool_faces "$s" train_pm17.zarr; done
# Stage 17's (its light head alone): 4000 more new faces (seeds 150-153): train_pm21.zarr.
for s in 150 151 152 153; do pool_faces "$s" train_pm21.zarr; done
[ -f val_heldout8/shard-000000.tar ] || delit synth --out val_heldout8 --n 384 --size 256 --seed 8 \
    --workers 2 --hdris "$heldout" --p-hdri 1
delit encode --vae demo --data val_heldout8 --out val_heldout8.zarr --size 256 --batch-size 8 \
    --compile --no-progress

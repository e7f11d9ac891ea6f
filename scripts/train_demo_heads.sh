#!/usr/bin/env bash
# How the packaged demo heads (delit_cache/assets/demo_heads.safetensors and
# demo_mean_env.exr) are made: scripts/make_training_data.sh's 5000 portraits (the held-out
# HDRIs left out; train_bg.zarr: those plus 2000 portraits with another env map behind them;
# train_bg4.zarr: 2000 more of those; train_new.zarr: 4000 portraits of new faces, half of
# them with another env map behind them; train_more.zarr: 4000 more of those;
# train_plain.zarr and train_fresh.zarr: 4000 more new faces each, made the same way;
# train_pm.zarr and train_pm14.zarr: 4000 more each lit by a pool of 20 real HDRIs;
# train_pm15.zarr: 8000 more lit the same way; train_pm17.zarr and train_pm21.zarr: 4000
# more each), then eighteen training stages,
# each from the one before:
#   1. configs/demo-heads.yaml from scratch (3000 steps);
#   2. configs/demo-heads-finetune.yaml (500 steps, detail weight 6.0);
#   3. configs/demo-heads-finetune.yaml again for 1000 steps;
#   4. configs/demo-heads-detail.yaml (750 steps, detail weight 12.0);
#   5. configs/demo-heads-flat-blocks.yaml (1000 steps; the heads grown by two flat blocks);
#   6. and 7. configs/demo-heads-flat-blocks.yaml again, twice 1000 steps on train_bg.zarr;
#   8. configs/demo-heads-env-nrmse.yaml (1000 steps on train_bg4.zarr, the env nRMSE loss);
#   9. configs/demo-heads-light-sharp.yaml (1000 steps on train_new.zarr, light sharpness 16);
#  10. configs/demo-heads-light-sharp.yaml again for 2000 steps on train_more.zarr;
#  11. configs/demo-heads-light-sharp.yaml again for 2000 steps on train_plain.zarr;
#  12. configs/demo-heads-light-sharp.yaml again for 2000 steps on train_fresh.zarr;
#  13. configs/demo-heads-light-sharp.yaml again for 2000 steps on train_pm.zarr;
#  14. configs/demo-heads-light-sharp.yaml again for 1000 steps on train_pm14.zarr;
#  15. configs/demo-heads-light-sharp.yaml again for 2000 steps on train_pm15.zarr, then the
#      run's last four checkpoints averaged (delit average-heads --last 4);
#  16. configs/demo-heads-tone.yaml for 1000 steps on train_pm17.zarr, the run's last four
#      checkpoints averaged and that mean averaged half and half with stage 15's heads
#      (delit average-heads --last 4 --blend);
#  17. configs/demo-heads-light-head.yaml for 600 steps on train_pm21.zarr: a light head
#      added and trained alone (every other weight held), its last four checkpoints averaged;
#  18. configs/demo-heads-light-head-more.yaml for 1200 steps on train_pm17.zarr: the light
#      head alone again (its inputs computed once, in float32), last four checkpoints
#      averaged; the packaged mean env map stays stage 16's (its training data's).
# What each stage did on the leave-HDRI-out set: benchmarks/results/cpu-leave-hdri-out.md.
# Usage: scripts/train_demo_heads.sh WORKDIR (WORKDIR may already hold the data; the recipe
# skips what exists and resumes the cache).
set -euo pipefail
work=${1:?usage: $0 WORKDIR}
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/make_training_data.sh" "$work"
delit train-heads --cache "$work/train.zarr" --out "$work/stage1" \
    --config "$here/configs/demo-heads.yaml"
delit train-heads --cache "$work/train.zarr" --out "$work/stage2" \
    --config "$here/configs/demo-heads-finetune.yaml" --init-from "$work/stage1"
delit train-heads --cache "$work/train.zarr" --out "$work/stage3" \
    --config "$here/configs/demo-heads-finetune.yaml" --init-from "$work/stage2" --steps 1000
delit train-heads --cache "$work/train.zarr" --out "$work/stage4" \
    --config "$here/configs/demo-heads-detail.yaml" --init-from "$work/stage3"
delit train-heads --cache "$work/train.zarr" --out "$work/stage5" \
    --config "$here/configs/demo-heads-flat-blocks.yaml" --init-from "$work/stage4"
delit train-heads --cache "$work/train_bg.zarr" --out "$work/stage6" \
    --config "$here/configs/demo-heads-flat-blocks.yaml" --init-from "$work/stage5"
delit train-heads --cache "$work/train_bg.zarr" --out "$work/stage7" \
    --config "$here/configs/demo-heads-flat-blocks.yaml" --init-from "$work/stage6"
delit train-heads --cache "$work/train_bg4.zarr" --out "$work/stage8" \
    --config "$here/configs/demo-heads-env-nrmse.yaml" --init-from "$work/stage7"
delit train-heads --cache "$work/train_new.zarr" --out "$work/stage9" \
    --config "$here/configs/demo-heads-light-sharp.yaml" --init-from "$work/stage8"
delit train-heads --cache "$work/train_more.zarr" --out "$work/stage10" \
    --config "$here/configs/demo-heads-light-sharp.yaml" --init-from "$work/stage9" --steps 2000
delit train-heads --cache "$work/train_plain.zarr" --out "$work/stage11" \
    --config "$here/configs/demo-heads-light-sharp.yaml" --init-from "$work/stage10" --steps 2000
delit train-heads --cache "$work/train_fresh.zarr" --out "$work/stage12" \
    --config "$here/configs/demo-heads-light-sharp.yaml" --init-from "$work/stage11" --steps 2000
delit train-heads --cache "$work/train_pm.zarr" --out "$work/stage13" \
    --config "$here/configs/demo-heads-light-sharp.yaml" --init-from "$work/stage12" --steps 2000
delit train-heads --cache "$work/train_pm14.zarr" --out "$work/stage14" \
    --config "$here/configs/demo-heads-light-sharp.yaml" --init-from "$work/stage13" --steps 1000
delit train-heads --cache "$work/train_pm15.zarr" --out "$work/stage15" \
    --config "$here/configs/demo-heads-light-sharp.yaml" --init-from "$work/stage14" --steps 2000
delit average-heads "$work/stage15" --out "$work/stage15_avg" --last 4
delit train-heads --cache "$work/train_pm17.zarr" --out "$work/stage16" \
    --config "$here/configs/demo-heads-tone.yaml" --init-from "$work/stage15_avg" --steps 1000
delit average-heads "$work/stage16" --out "$work/stage16_avg" --last 4 --blend "$work/stage15_avg"
delit train-heads --cache "$work/train_pm21.zarr" --out "$work/stage17" \
    --config "$here/configs/demo-heads-light-head.yaml" --init-from "$work/stage16_avg"
delit average-heads "$work/stage17" --out "$work/stage17_avg" --last 4
delit train-heads --cache "$work/train_pm17.zarr" --out "$work/stage18" \
    --config "$here/configs/demo-heads-light-head-more.yaml" --init-from "$work/stage17_avg"
delit average-heads "$work/stage18" --out "$work/final" --last 4
cp "$work/final/heads.safetensors" "$here/delit_cache/assets/demo_heads.safetensors"
cp "$work/stage16_avg/mean_env.exr" "$here/delit_cache/assets/demo_mean_env.exr"

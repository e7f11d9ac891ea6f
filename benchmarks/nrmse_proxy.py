"""How well the training loss ``env_nrmse_loss`` tracks the mirror sphere's nRMSE metric.

The first ``--n`` env maps of a latent cache are each "predicted" three ways: by another
sample's map (the next one), by the mean map, and by a 9-pixel box blur of the map itself.
For each guess and each proxy size the table gives the proxy's mean (per-image
solid-angle-weighted RMSE of ``losses.nrmse_view``), the metric's mean (``sphere_errors``'
``mirror_nrmse``) and their per-image correlation. A last line gives the smallest ratio, over
the maps, of their 0.1-99.9 percentile span to their range at 64 x 128 (``nrmse_view`` floors
the span at 0.05 of the range).

    python benchmarks/nrmse_proxy.py --cache WORK/val_heldout.zarr [--n 48] [--out F.md]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from delit_cache.cache.store import first_samples
from delit_cache.lighting.envmap import resample_env
from delit_cache.lighting.sphere_metrics import sphere_errors
from delit_cache.train.losses import env_nrmse, nrmse_view, protocol_power
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import emit_report, run_header

SIZES = ((32, 64), (64, 128), (128, 256))


def guesses(env: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "another sample's map": env.roll(1, 0),
        "the mean map": env.mean(0, keepdim=True).expand_as(env),
        "a 9-px box blur": F.avg_pool2d(env, 9, 1, 4, count_include_pad=False),
    }


def smallest_span_ratio(env: torch.Tensor) -> float:
    """min over maps of (99.9th - 0.1st percentile) / (max - 0.1st percentile), as
    ``nrmse_view`` sees the maps before its normalisation."""
    power = protocol_power(resample_env(env, (64, 128))).flatten(1)
    q = torch.quantile(power, torch.tensor([0.001, 0.999]), dim=1)
    return float(((q[1] - q[0]) / (power.amax(1) - q[0]).clamp_min(1e-12)).min())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path, help="a latent cache (its env maps)")
    parser.add_argument("--n", type=int, default=48, help="env maps used (the first N)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    try:
        cache, index = first_samples(args.cache, args.n)
        env = torch.from_numpy(cache.read("env", index)).float()
        n = len(index)
    except DelitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for name, pred in guesses(env).items():
        metric = sphere_errors(pred, env)["mirror_nrmse"]
        for size in SIZES:
            value = env_nrmse(pred, nrmse_view(env, size))
            corr = np.corrcoef(value.numpy(), metric.numpy())[0, 1]
            rows.append(
                f"| {name} | {size[0]} x {size[1]} | {n} | {float(value.mean()):.3f} "
                f"| {float(metric.mean()):.3f} | {corr:.2f} |"
            )
    command = (
        f"python benchmarks/nrmse_proxy.py {shlex.join(sys.argv[1:] if argv is None else argv)}"
    )
    lines = [
        *run_header("The env nRMSE loss against the mirror sphere's nRMSE", command),
        "",
        "| guess | proxy size | n | proxy mean | metric mean | per-image correlation |",
        "|" + " --- |" * 6,
        *rows,
        "",
        f"- smallest percentile span / range over the {n} maps: {smallest_span_ratio(env):.3f}",
    ]
    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

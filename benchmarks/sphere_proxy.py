"""How well the sphere losses' renders track the sphere angular-error metrics, with and
without the evaluation protocol's tone curve.

The env maps of a latent cache (the first ``--n``) are "predicted" by another sample's map,
by the mean map and, with ``--checkpoint``, by those heads from the cached latents; the mean
map and the heads' maps also once more with the true map's overall colour (each channel
scaled so that its share of the energy is the true map's: what is left of the angle is the
colour's distribution over directions, not a white-balance error). For each
guess the table gives the mean per-pixel RGB angle between the guess's and the true map's
diffuse and matte spheres as the training loss renders them (``losses.render_loss_spheres``
at 32 px from 32 x 64 maps), once from linear radiance and once from ``x ** (1/2.4)`` of the
resampled maps (``losses.protocol_power``), beside
the metric (``sphere_errors``: the protocol's tone map, then 128 px spheres) and the
per-image correlation of each with it.

    python benchmarks/sphere_proxy.py --cache WORK/val_heldout.zarr [--checkpoint demo] [--out F.md]
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
from delit_cache.infer.delighter import resolve_checkpoint
from delit_cache.lighting.envmap import env_energy, resample_env
from delit_cache.lighting.sphere_metrics import sphere_errors
from delit_cache.train.losses import protocol_power, render_loss_spheres
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import emit_report, run_header

SPHERES = ("diffuse", "matte")  # render_loss_spheres' order
LOSS_ENV_SIZE = (32, 64)  # TrainConfig.sphere_env_size's default


def loss_angles(pred: torch.Tensor, gt: torch.Tensor, tonemap: bool) -> torch.Tensor:
    """Mean per-pixel RGB angle (degrees) between the loss renders of two batches of env
    maps -> ``[B,2]`` (diffuse, matte)."""

    def render(env):
        env = resample_env(env.float(), LOSS_ENV_SIZE)
        return render_loss_spheres(protocol_power(env) if tonemap else env, 32, LOSS_ENV_SIZE)

    rp, rg = render(pred), render(gt)
    cos = (F.normalize(rp, dim=1, eps=1e-12) * F.normalize(rg, dim=1, eps=1e-12)).sum(1)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0))).mean(-1)


def with_true_colour(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``pred`` with each channel scaled so that its share of the total energy is ``gt``'s
    (the three channel gains average 1)."""
    gain = env_energy(gt) / env_energy(pred).clamp_min(1e-12)
    gain = gain / gain.mean(1, keepdim=True)
    return pred * gain[:, :, None, None]


def predictions(checkpoint: str, relit: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    heads, _, _ = resolve_checkpoint(checkpoint)
    return heads.eval().env_maps(relit, batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path, help="a latent cache")
    parser.add_argument("--checkpoint", help="also score these heads' predictions")
    parser.add_argument("--n", type=int, default=96, help="samples used (the first N)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    try:
        cache, index = first_samples(args.cache, args.n)
        env = torch.from_numpy(cache.read("env", index)).float()
        n = len(index)
        guesses = {
            "another sample's map": env.roll(1, 0),
            "the mean map": env.mean(0, keepdim=True).expand_as(env).contiguous(),
        }
        if args.checkpoint:
            relit = torch.from_numpy(cache.read("relit_latent", index))
            guesses[f"heads {args.checkpoint}"] = predictions(args.checkpoint, relit)
        for name in list(guesses)[1:]:
            guesses[f"{name}, true overall colour"] = with_true_colour(guesses[name], env)
    except DelitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for name, pred in guesses.items():
        errs = sphere_errors(pred, env)
        linear, toned = loss_angles(pred, env, False), loss_angles(pred, env, True)
        for k, sphere in enumerate(SPHERES):
            metric = errs[f"{sphere}_angular_deg"].numpy()
            cells = [f"{float(metric.mean()):.2f}"]
            for proxy in (linear[:, k].numpy(), toned[:, k].numpy()):
                corr = np.corrcoef(proxy, metric)[0, 1]
                cells += [f"{proxy.mean():.2f}", f"{corr:.2f}"]
            rows.append(f"| {name} | {sphere} | {n} | " + " | ".join(cells) + " |")
    command = (
        f"python benchmarks/sphere_proxy.py {shlex.join(sys.argv[1:] if argv is None else argv)}"
    )
    lines = [
        *run_header("Sphere loss renders against the sphere angular-error metric", command),
        "",
        "| guess | sphere | n | metric mean (deg) | linear renders (deg) | correlation "
        "| x**(1/2.4) renders (deg) | correlation |",
        "|" + " --- |" * 8,
        *rows,
    ]
    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Brightest-light direction error per lighting source: where the heads find the light.

Usage (from the repository root)::

    python benchmarks/light_split.py --cache WORK/val_heldout.zarr --data WORK/val_heldout \\
        --eval "shipped=demo" --eval "run=WORK/run"

For each ``--eval NAME=CHECKPOINT`` it runs the heads on the cached latents (no VAE) and
measures, per env source of the samples (the shards' ``env_source``, e.g. one HDRI), the
angle between the brightest-light directions (``sphere_metrics.brightest_direction``) of
the predicted and the true env maps: mean (with its standard error: the errors of single
portraits spread from a few degrees to 180, so small sets give noisy means), median and the
share under 30 degrees, and the share of estimates that put the light within 15 degrees of
the zenith. Beside them: the checkpoint's mean env map (the free baseline), and
the true map's own first moment (its luminance-weighted mean direction), which says how far
the brightest light lies from where the light as a whole comes from (what the diffuse
shading of a face shows), and each prediction's first moment (where its light as a whole
lies, against where its brightest pixel lies). Bounds from the true maps alone: the
direction in which a surface seen through a clamped ``cos^n`` lobe is brightest. n = 1: a
white Lambertian surface, what the diffuse shading of a face can show, over every normal and
over the normals facing the camera (+z) only, as a face's are; 8 and 32: glossy lobes about
the mirror direction, what sheen and highlights can show (the mirror directions of a face's
camera-facing normals cover the whole sphere, so every direction counts). Beside the rows
per env source and for all samples, two more: the samples whose true brightest light lies on
the camera's side of the subject (z > 0, where it lights the face) and those whose light lies
behind it.
Prints a markdown table with the date, machine and command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from delit_cache.cache.store import LatentCache
from delit_cache.data.shards import env_sources
from delit_cache.infer.delighter import resolve_checkpoint
from delit_cache.lighting.envmap import direction_grid, resample_env, solid_angles
from delit_cache.lighting.render import LUMA
from delit_cache.lighting.sphere_metrics import angle_between_deg, brightest_direction
from delit_cache.train.losses import soft_light_direction
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import emit_report, run_header


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, help="latent cache of the evaluation samples")
    p.add_argument("--data", required=True, help="their shards (for each sample's env_source)")
    p.add_argument("--eval", action="append", required=True, help="NAME=CHECKPOINT, repeatable")
    p.add_argument("--batch-size", type=int, default=16, help="samples per forward pass")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    return p.parse_args(argv)


def first_moment(env: torch.Tensor) -> torch.Tensor:
    """Luminance- and solid-angle-weighted mean direction ``[B,3]`` of env maps ``[B,3,H,W]``:
    the soft light direction of the training loss at sharpness 1 (a softmax of log
    luminance is the luminance, normalised)."""
    return soft_light_direction(env, sharpness=1.0)


LOBE_SIZE = (64, 128)  # map size of the lobe bounds (an 8192 x 8192 kernel)
LOBE_EXPONENTS = (1, 8, 32)  # cos^n lobes: diffuse, then two glossy widths


def lobe_peaks(env: torch.Tensor, exponent: int, camera_side: bool) -> torch.Tensor:
    """Unit normal ``[B,3]`` at which a surface lit by env maps ``[B,3,H,W]`` and seen through
    a clamped ``cos^exponent`` lobe is brightest (luminance); with ``camera_side`` only
    normals facing the camera (z > 0) count."""
    x = resample_env(env.float(), LOBE_SIZE)
    dirs = direction_grid(*LOBE_SIZE).flatten(1)  # [3,P]
    kernel = (dirs.T @ dirs).clamp_min(0.0) ** exponent * solid_angles(*LOBE_SIZE).flatten()
    lum = torch.einsum("c,bcp->bp", torch.tensor(LUMA), x.flatten(2))
    response = lum @ kernel.T  # [B,P]: kernel rows are normals, columns light directions
    if camera_side:
        response = response.masked_fill(dirs[2] <= 0, -torch.inf)
    return dirs[:, response.argmax(1)].T


ZENITH_CONE_DEG = 15.0  # "near the zenith": elevation above 90 - this


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return angle_between_deg(a, b).numpy()


def predicted_envs(checkpoint: str, relit: torch.Tensor, batch_size: int):
    """(predicted env maps ``[N,3,H,W]``, the checkpoint's mean env map or None)."""
    heads, mean_env, _ = resolve_checkpoint(checkpoint)
    return heads.eval().env_maps(relit, batch_size), mean_env


def rows_for(
    name: str, estimate: torch.Tensor, truth: torch.Tensor, groups: dict[str, np.ndarray]
) -> list[list[str]]:
    """Table rows of one estimate's directions ``[N,3]`` against the true ones, per group."""
    errors = angle_deg(estimate, truth)
    zenith = (estimate[:, 1] > np.cos(np.radians(ZENITH_CONE_DEG))).numpy()
    rows = []
    for group, mask in groups.items():
        if not mask.any():
            continue
        e = errors[mask]
        se = e.std(ddof=1) / np.sqrt(len(e)) if len(e) > 1 else float("nan")
        stats = [f"{e.mean():.1f}", f"{se:.1f}", f"{np.median(e):.1f}", f"{(e < 30).mean():.2f}"]
        rows.append([name, group, str(int(mask.sum())), *stats, f"{zenith[mask].mean():.2f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return report(args, argv)
    except DelitError as exc:  # a bad cache, shard or checkpoint: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2


def report(args: argparse.Namespace, argv: list[str] | None) -> int:
    bad = [spec for spec in args.eval if not all(spec.partition("=")[::2])]
    if bad:
        raise DelitError(f"--eval {bad[0]!r}: expected NAME=CHECKPOINT")
    cache = LatentCache(args.cache)
    sources = env_sources(args.data)
    names = np.array([sources.get(k, "unknown") for k in cache.keys])
    groups = {s: names == s for s in sorted(set(names))} | {"all": np.ones(len(names), bool)}
    relit = torch.from_numpy(cache.read("relit_latent"))
    true_env = torch.from_numpy(cache.read("env"))
    true_dir = brightest_direction(true_env)
    camera_side = (true_dir[:, 2] > 0).numpy()  # the true light on the camera's side (+z)
    groups |= {"all, light on the camera side": camera_side, "all, light behind": ~camera_side}
    rows = rows_for("true map's brightest light", true_dir, true_dir, groups)
    rows += rows_for("true map's first moment", first_moment(true_env), true_dir, groups)
    lobes = [(1, False), (1, True), *((n, False) for n in LOBE_EXPONENTS[1:])]
    for n, camera_side in lobes:
        peak = lobe_peaks(true_env, n, camera_side)
        where = ", camera side" if camera_side else ""
        rows += rows_for(f"true map through cos^{n}{where}", peak, true_dir, groups)
    baseline_done = False
    for spec in args.eval:
        name, _, checkpoint = spec.partition("=")
        pred, mean_env = predicted_envs(checkpoint, relit, args.batch_size)
        rows += rows_for(name, brightest_direction(pred), true_dir, groups)
        rows += rows_for(f"{name}, first moment", first_moment(pred), true_dir, groups)
        if mean_env is not None and not baseline_done:
            mean_dir = brightest_direction(mean_env[None]).expand_as(true_dir)
            rows += rows_for(f"mean env map ({name})", mean_dir, true_dir, groups)
            baseline_done = True
    header = (
        "| estimate | env source | n | mean error (deg) | standard error | median "
        "| share < 30 deg | share near the zenith |"
    )
    command = (
        f"python benchmarks/light_split.py {shlex.join(sys.argv[1:] if argv is None else argv)}"
    )
    lines = [
        *run_header("Brightest-light direction error per env source", command),
        "",
        header,
        "|" + " --- |" * 8,
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

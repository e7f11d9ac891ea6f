"""How much of the diffuse sphere's angular error is one colour per image.

The diffuse-sphere angular error scores the RGB direction of every pixel of the sphere
rendered from the tone-mapped map (``sphere_metrics.sphere_errors``). Part of it is one colour
cast over the whole sphere (the light's white balance, which a face shows only through its
skin's unknown colour), the rest is the colour's distribution over directions (a warm sun
against a blue sky). For each guess (the mean of the evaluated true maps themselves, and heads
given as ``--eval NAME=CHECKPOINT``) the table gives the mean angle:

* as scored;
* with each image's own colour: each channel of the guess's diffuse render scaled so that
  its mean over the disc is the true render's (three gains per image; an oracle);
* with one colour for the whole set: the guess's renders scaled by the geometric mean of
  those gains over the set (a bias shared by every image, not per-image information);

and, per channel, the gains' geometric mean and the correlation between the guess's and the
truth's mean disc chromaticity over the images. With ``--data`` (the cache's shards) each
guess also gets one row per env source (``env_source`` of the samples' metadata).

    python benchmarks/colour_split.py --cache WORK/val_heldout.zarr --eval "stage 15=demo" \
        [--data WORK/val_heldout] [--n 96] [--out F.md]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from delit_cache.cache.store import first_samples
from delit_cache.data.shards import env_sources
from delit_cache.infer.delighter import resolve_checkpoint
from delit_cache.lighting.envmap import resample_env
from delit_cache.lighting.render import render_spheres
from delit_cache.lighting.sphere_metrics import (
    ENV_SIZE,
    SPHERE_SIZE,
    angular_error_deg,
    protocol_tonemap,
)
from delit_cache.utils.atomic import check_output_file
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import emit_report, run_header

COLUMNS = (
    "guess",
    "env source",
    "n",
    "diffuse angle (deg)",
    "with each image's own colour (deg)",
    "share that is colour",
    "with one colour for the set (deg)",
    "set gain R / G / B",
    "chromaticity correlation R / G / B",
)


def diffuse_renders(env: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The metric's diffuse spheres ``[B,3,S,S]`` of linear maps, and the disc mask ``[S,S]``."""
    spheres = render_spheres(protocol_tonemap(resample_env(env.float(), ENV_SIZE)), SPHERE_SIZE)
    return spheres["diffuse"], spheres["mask"]


def disc_means(render: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each channel over the disc -> ``[B,3]``."""
    m = mask.to(render.dtype)
    return (render * m).sum((2, 3)) / m.sum().clamp_min(1.0)


def colour_gains(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image, the channel gains ``[B,3]`` (geometric mean 1) that give the predicted
    render the true render's disc-mean colour."""
    ratio = disc_means(gt, mask).clamp_min(1e-12) / disc_means(pred, mask).clamp_min(1e-12)
    return ratio / ratio.log().mean(1, keepdim=True).exp()


def chroma(render: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    means = disc_means(render, mask)
    return means / means.sum(1, keepdim=True).clamp_min(1e-12)


def split_row(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, np.ndarray | float]:
    """The table's figures for one guess (linear maps ``[B,3,h,w]`` each)."""
    rp, mask = diffuse_renders(pred)
    rg, _ = diffuse_renders(gt)
    gains = colour_gains(rp, rg, mask)
    shared = gains.log().mean(0).exp()
    cp, cg = chroma(rp, mask).numpy(), chroma(rg, mask).numpy()
    corr = [
        float(np.corrcoef(cp[:, c], cg[:, c])[0, 1])
        if min(cp[:, c].std(), cg[:, c].std()) > 1e-6
        else float("nan")  # a constant guess (the mean map) has no correlation
        for c in range(3)
    ]
    return {
        "n": len(pred),
        "scored": float(angular_error_deg(rp, rg, mask).mean()),
        "own": float(angular_error_deg(rp * gains[:, :, None, None], rg, mask).mean()),
        "shared": float(angular_error_deg(rp * shared[None, :, None, None], rg, mask).mean()),
        "gain": shared.numpy(),
        "corr": np.array(corr),
    }


def table_row(name: str, group: str, r: dict) -> str:
    share = 1.0 - r["own"] / r["scored"] if r["scored"] > 0 else 0.0
    corr = " / ".join("-" if np.isnan(c) else f"{c:.2f}" for c in r["corr"])
    return (
        f"| {name} | {group} | {r['n']} | {r['scored']:.3f} | {r['own']:.3f} | {share:.2f} "
        f"| {r['shared']:.3f} | {' / '.join(f'{g:.3f}' for g in r['gain'])} | {corr} |"
    )


def predicted_envs(checkpoint: str, relit: torch.Tensor, batch_size: int) -> torch.Tensor:
    heads, _, _ = resolve_checkpoint(checkpoint)
    return heads.eval().env_maps(relit, batch_size)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, type=Path, help="latent cache of the samples")
    p.add_argument("--eval", action="append", default=[], help="NAME=CHECKPOINT, repeatable")
    p.add_argument("--data", help="the cache's shards: also one row per env source")
    p.add_argument("--n", type=int, default=96, help="samples used (the first N)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per forward pass")
    p.add_argument("--out", type=Path, help="also write the table here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.n < 2:
            raise DelitError(f"--n {args.n}: must be >= 2")
        if args.batch_size < 1:
            raise DelitError(f"--batch-size {args.batch_size}: must be >= 1")
        evals = []
        for item in args.eval:
            name, sep, checkpoint = item.partition("=")
            if not sep or not name or not checkpoint:
                raise DelitError(f"--eval {item!r}: expected NAME=CHECKPOINT")
            evals.append((name, checkpoint))
        if args.out is not None:
            check_output_file(args.out)  # a bad output path fails before the work
        cache, index = first_samples(args.cache, args.n)
        env = torch.from_numpy(cache.read("env", index)).float()
        groups = {"all": torch.ones(len(index), dtype=torch.bool)}
        if args.data:
            sources = env_sources(args.data)
            keys = [sources.get(cache.keys[int(i)], "unknown") for i in index]
            for source in sorted(set(keys)):
                groups[source] = torch.tensor([k == source for k in keys])
        guesses = {"the mean map": env.mean(0, keepdim=True).expand_as(env).contiguous()}
        if evals:
            relit = torch.from_numpy(cache.read("relit_latent", index))
        for name, checkpoint in evals:
            guesses[name] = predicted_envs(checkpoint, relit, args.batch_size)
    except DelitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out cannot be written
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    rows = []
    for name, pred in guesses.items():
        for group, sel in groups.items():
            if int(sel.sum()) < 2:
                continue  # a correlation needs two images
            rows.append(table_row(name, group, split_row(pred[sel], env[sel])))
    command = "python benchmarks/colour_split.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    title = "The diffuse sphere's angular error: one colour per image or its layout"
    header = "| " + " | ".join(COLUMNS) + " |"
    emit_report(
        [*run_header(title, command), "", header, "|" + " --- |" * len(COLUMNS), *rows], args.out
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-channel decoder gains of a codec, printed as the ``flat_channel_weights`` of a config.

Usage (from the repository root)::

    python benchmarks/channel_gains.py --vae demo --data WORK/train_100 --cache WORK/train.zarr

Encodes the flat-lit images of the first ``--limit`` samples of training shards (use training
data, not a held-out set: the weights become part of the recipe), then measures for each
latent channel how much the decoded image changes per unit of standardised latent error
(``delit_cache.vae.channel_gains``), in the units the flat loss uses: the training cache's
per-channel std of the relit latents (``--cache``; without it, the flat latents' own std). Prints a table with the machine and date, and the YAML
line to paste into a training config.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from pathlib import Path

import torch

from delit_cache.cache.store import LatentCache
from delit_cache.data.shards import iter_samples
from delit_cache.utils.machine import emit_report, run_header
from delit_cache.vae import load_wan_vae
from delit_cache.vae.channel_gains import decoder_channel_gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", default="demo", help="VAE path or 'demo'")
    parser.add_argument("--data", required=True, help="training shards (flat-lit images)")
    parser.add_argument("--cache", help="training latent cache: its latent std is the unit")
    parser.add_argument("--limit", type=int, default=32, help="samples to encode")
    parser.add_argument("--noise", type=float, default=0.1, help="noise, in channel stds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    vae = load_wan_vae(args.vae, device=args.device, dtype=torch.float32)
    flats = [s["flat"] for s in itertools.islice(iter_samples(args.data), args.limit)]
    if len(flats) < 2:
        raise SystemExit(f"{args.data}: need at least 2 samples, found {len(flats)}")
    latents = torch.cat([vae.encode(torch.stack(flats[i : i + 8]).to(args.device)).cpu()
                         for i in range(0, len(flats), 8)])  # fmt: skip
    std = LatentCache(args.cache).latent_stats()[1] if args.cache else None
    gains, std = decoder_channel_gains(vae, latents, std=std, noise=args.noise)
    unit = f"the relit latents' std of {args.cache}" if args.cache else "the flat latents' std"
    lines = [
        *run_header("Decoder gain per latent channel", shlex.join(["python", *sys.argv]), args.device),
        f"- vae {args.vae}; {len(flats)} flat-lit samples of {args.data}; noise {args.noise}; "
        f"unit: {unit}",
        "",
        "| channel | latent std | gain (mean 1) |",
        "| --- | --- | --- |",
        *(f"| {c} | {s:.3f} | {g:.3f} |" for c, (g, s) in enumerate(zip(gains.tolist(), std.tolist(), strict=True))),
        "",
        "flat_channel_weights: [" + ", ".join(f"{g:.3f}" for g in gains.tolist()) + "]",
    ]  # fmt: skip
    emit_report(lines, args.out)


if __name__ == "__main__":
    main()

"""Benchmark the Wan 2.1 VAE image codec: shipped DiffSynth path vs the single-frame fast path.

    python benchmarks/bench_vae.py --vae PATH_OR_demo --device cuda --dtype bfloat16 \
        --size 512 --batch 4 --iters 10
    python benchmarks/bench_vae.py --random-full --device cuda --dtype bfloat16   # no weights

Prints a markdown table: encode / decode ms per image, images/s (encode + decode), peak
CUDA memory, and the relative difference of the fast path's outputs from the shipped path.
``--random-full`` builds the full-width model (dim 96) with random weights: "random
weights, real architecture" (speed only; its images mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch

from delit_cache.utils.machine import device_name, synchronize
from delit_cache.vae import load_wan_vae, new_wan_vae
from delit_cache.vae.testimage import synthetic_test_image


def time_ms(fn, device: torch.device, iters: int) -> float:
    """Mean wall milliseconds of ``fn()`` over ``iters`` runs."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1000.0 / iters


def bench_mode(vae, images: torch.Tensor, fast: bool, iters: int, warmup: int) -> dict:
    """Time encode and decode of one batch with the fast path on or off."""
    vae.fast_single_frame = fast
    dev = vae.device
    with torch.inference_mode():
        for _ in range(warmup):
            vae.decode(vae.encode(images))
        latents = vae.encode(images)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        enc = time_ms(lambda: vae.encode(images), dev, iters)
        dec = time_ms(lambda: vae.decode(latents), dev, iters)
        out = vae.decode(latents)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return {"fast": fast, "enc": enc, "dec": dec, "peak": peak, "latents": latents, "out": out}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def format_table(results: list[dict], batch: int) -> list[str]:
    rows = [
        "| path | encode ms/img | decode ms/img | enc+dec ms/img | images/s | peak CUDA memory |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        enc, dec = r["enc"] / batch, r["dec"] / batch
        peak = f"{r['peak']:.2f} GiB" if r["peak"] is not None else "-"
        name = "fast single-frame (2-D fold)" if r["fast"] else "shipped DiffSynth (3-D conv)"
        rows.append(
            f"| {name} | {enc:.1f} | {dec:.1f} | {enc + dec:.1f} | {1000.0 / (enc + dec):.2f} | {peak} |"
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", help="VAE folder/file or 'demo' (or use --random-full)")
    parser.add_argument("--random-full", action="store_true", help="random weights, dim 96")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--size", type=int, default=512, help="square image side (pixels)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mode", choices=["both", "fast", "shipped"], default="both")
    args = parser.parse_args(argv)
    if not args.random_full and not args.vae:
        parser.error("give --vae PATH (or 'demo') or --random-full")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.random_full:
        vae = new_wan_vae(96, seed=0, device=args.device, dtype=args.dtype)
        label = "random weights, real architecture (dim 96)"
    else:
        vae = load_wan_vae(args.vae, device=args.device, dtype=args.dtype)
        label = f"{args.vae} (dim {vae.dim}, fingerprint {vae.fingerprint})"
    dev = vae.device
    base = synthetic_test_image(args.size, args.size)
    images = torch.stack([base.roll(17 * i, dims=-1) for i in range(args.batch)]).to(dev)
    modes = {"both": [False, True], "fast": [True], "shipped": [False]}[args.mode]
    results = [bench_mode(vae, images, fast, args.iters, args.warmup) for fast in modes]

    print(f"# Wan VAE codec benchmark: {label}")
    print(f"- device: {device_name(dev)}; torch {torch.__version__}; {datetime.date.today()}")
    print(
        f"- dtype {args.dtype}, {args.size}x{args.size}, batch {args.batch}, "
        f"{args.iters} timed iterations after {args.warmup} warm-up"
    )
    print(f"- parameters: {vae.num_params / 1e6:.1f} M")
    print()
    for row in format_table(results, args.batch):
        print(row)
    if len(results) == 2:
        shipped, fast = results
        print()
        print(
            f"fast vs shipped: speed-up {(shipped['enc'] + shipped['dec']) / (fast['enc'] + fast['dec']):.2f}x; "
            f"relative difference latents {_rel(fast['latents'], shipped['latents']):.1e}, "
            f"images {_rel(fast['out'], shipped['out']):.1e}"
        )


if __name__ == "__main__":
    main()

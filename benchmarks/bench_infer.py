"""End-to-end inference speed: images/s and per-stage milliseconds (encode, heads, decode).

Usage (from the repository root)::

    python benchmarks/bench_infer.py --vae /path/to/Wan2.1_VAE.pth --device cuda --dtype bfloat16
    python benchmarks/bench_infer.py --random-full --device cuda --dtype bfloat16   # no weights
    python benchmarks/bench_infer.py --vae demo --device cpu --size 128 --iters 2  # quick check

The heads are freshly created (speed does not depend on their weights) unless --checkpoint is
given. Each stage is timed separately over ``--iters`` runs after ``--warmup`` runs, with
``torch.cuda.synchronize()`` around every stage on CUDA; "end to end" times the three stages
back to back plus the env decoding (``DelitModel.infer``); "flip_average" is
``DelitModel.infer(..., flip_average=True)`` (each image and its mirror image in one batch).
Prints a table with the device name, torch version and date; ``--json FILE`` also writes the
numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from pathlib import Path

import torch

from delit_cache.infer.delighter import resolve_checkpoint
from delit_cache.models import DEFAULT_CONFIG, create_heads, create_model_and_transforms
from delit_cache.utils.device import resolve_device, resolve_dtype
from delit_cache.utils.machine import device_name, time_calls_ms


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vae", help="Wan 2.1 VAE weights (file or folder) or 'demo'")
    src.add_argument(
        "--random-full", action="store_true", help="full-width VideoVAE_ (dim 96), random weights"
    )
    p.add_argument("--checkpoint", help="heads (run folder, file or 'demo'); default: fresh heads")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--size", type=int, default=512, help="square image side (default 512)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    return p.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device):
    """VAE + heads -> DelitModel on ``device``."""
    from delit_cache.vae import load_wan_vae, new_wan_vae

    dtype = resolve_dtype(args.dtype)
    if args.random_full:
        vae = new_wan_vae(dim=96, seed=0, device=device, dtype=dtype)
    else:
        vae = load_wan_vae(args.vae, device=device, dtype=dtype)
    if args.checkpoint:
        heads = resolve_checkpoint(args.checkpoint)[0]
    else:
        heads = create_heads(DEFAULT_CONFIG, seed=0)
    model, _ = create_model_and_transforms(vae, heads, image_size=args.size, device=device)
    return model


@torch.no_grad()
def measure(model, args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    """Per-stage and end-to-end times in ms for one batch."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.size, args.size, generator=gen).to(device)
    latent = model.vae.encode(images)
    flat_latent = model.heads(latent)["flat_latent"]
    size = (args.size, args.size)
    w, n = args.warmup, args.iters
    return {
        "encode": time_calls_ms(lambda: model.vae.encode(images), device, w, n),
        "heads": time_calls_ms(lambda: model.heads(latent), device, w, n),
        "decode": time_calls_ms(lambda: model.vae.decode(flat_latent, size=size), device, w, n),
        "end_to_end": time_calls_ms(lambda: model.infer(images), device, w, n),
        "flip_average": time_calls_ms(lambda: model.infer(images, flip_average=True), device, w, n),
    }


def report(args: argparse.Namespace, device: torch.device, model, times: dict) -> dict:
    """Print the table; return the numbers."""
    b = args.batch_size
    source = "random full-width (dim 96)" if args.random_full else args.vae
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "vae": source,
        "vae_dim": getattr(model.vae, "dim", None),
        "dtype": args.dtype,
        "size": args.size,
        "batch_size": b,
        "iters": args.iters,
        "ms_per_batch_median": med,
        "ms_per_image": {k: v / b for k, v in med.items()},
        "images_per_s": 1000.0 * b / med["end_to_end"],
    }
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"delit inference benchmark  {result['date']}")
    print(f"device {result['device']}  torch {result['torch']}  dtype {args.dtype}")
    print(f"VAE {source}  image {args.size}x{args.size}  batch {b}  iters {args.iters}")
    print(f"{'stage':<12} {'ms/batch':>10} {'ms/image':>10} {'min ms':>10}")
    for k in ("encode", "heads", "decode", "end_to_end", "flip_average"):
        print(f"{k:<12} {med[k]:>10.2f} {med[k] / b:>10.2f} {min(times[k]):>10.2f}")
    print(f"end to end: {result['images_per_s']:.2f} images/s")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    model = build(args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = measure(model, args, device)
    result = report(args, device, model, times)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

"""VAE encode throughput and inference latency, each speed setting beside the plain path.

Usage (from the repository root)::

    python benchmarks/gpu_speed.py encode --device cuda --dtype float32 --batch-size 16
    python benchmarks/gpu_speed.py infer --device cuda --dtype bfloat16 --batch-sizes 1 8
    python benchmarks/gpu_speed.py infer --device cpu --size 32 --iters 1 --compile-backend eager

``--vae random-full`` (default) is the real architecture (width 96) with random weights;
``--vae demo`` or a path loads weights. Heads are freshly created (speed does not depend on
their weights). Rows:

- ``encode``: images/s of ``WanVAE.encode`` for: ``plain`` (DiffSynth's own 3-D path),
  ``fold`` (2-D convs for one frame), ``fold+cl`` (channels-last), ``fold+cl+compile``;
  each with its relative L2 error against the float32 plain path's latents (TF32 is on
  for float32 on CUDA, as in ``delit encode``).
- ``infer``: ms per image of ``DelitModel.infer`` (encode, heads, decode) at each batch size
  for: ``plain`` (float32 or the dtype, no speed settings), ``fast`` (cuDNN autotuning,
  channels-last), ``fast+compile`` (torch.compile; at batch 1 on CUDA with CUDA graphs);
  with the largest absolute and relative error of the flat image and env map against the
  float32 plain path on the same inputs.

Timing: ``--warmup`` untimed calls, then the median of ``--iters`` calls, synchronised on CUDA.
``--out FILE`` writes the table with date, machine, command and load average.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import torch

from delit_cache.utils.machine import time_calls_ms


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["encode", "infer"])
    p.add_argument("--vae", default="random-full", help="random-full, demo, or weights path")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16, help="encode: images per call")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="infer batches")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--compile-backend", default="inductor", help="eager: a quick smoke test")
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled rows")
    p.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    return p.parse_args(argv)


def median_seconds(fn, device: torch.device, warmup: int, iters: int) -> float:
    return statistics.median(time_calls_ms(fn, device, warmup, iters)) / 1000.0


def load_vae(source: str, device: torch.device, dtype: str, fast: bool = True):
    from delit_cache.vae import load_wan_vae, new_wan_vae

    if source == "random-full":
        return new_wan_vae(96, seed=0, device=device, dtype=dtype, fast_single_frame=fast)
    return load_wan_vae(source, device=device, dtype=dtype, fast_single_frame=fast)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


@torch.no_grad()
def encode_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.size, args.size, generator=gen).to(device)
    ref = load_vae(args.vae, device, "float32", fast=False).encode(images)
    configs = [("plain", False, False, False), ("fold", True, False, False)]
    configs.append(("fold+cl", True, True, False))
    if not args.no_compile:
        configs.append(("fold+cl+compile", True, True, True))
    rows = []
    for name, fast, cl, comp in configs:
        vae = load_vae(args.vae, device, args.dtype, fast=fast)
        if cl:
            vae.channels_last = True
        if comp:
            vae.compile_codec(args.batch_size, backend=args.compile_backend)
        seconds = median_seconds(lambda v=vae: v.encode(images), device, args.warmup, args.iters)
        rows.append(
            {
                "path": name,
                "dtype": args.dtype,
                "batch": args.batch_size,
                "img_per_s": args.batch_size / seconds,
                "ms_per_img": 1000 * seconds / args.batch_size,
                "rel_err_vs_fp32_plain": rel_err(vae.encode(images), ref),
            }
        )
        del vae
    return rows


@torch.no_grad()
def infer_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    from delit_cache.infer.fast import speed_up
    from delit_cache.models import DEFAULT_CONFIG, create_heads, create_model_and_transforms

    def model(dtype: str, batch: int, fast: bool, comp: bool):
        vae = load_vae(args.vae, device, dtype)
        heads = create_heads(DEFAULT_CONFIG, seed=0)
        m, _ = create_model_and_transforms(vae, heads, image_size=args.size, device=device)
        if fast:
            speed_up(
                m, device, batch, compile=comp, channels_last=True, backend=args.compile_backend
            )
        return m

    configs = [("plain", False, False), ("fast", True, False)]
    if not args.no_compile:
        configs.append(("fast+compile", True, True))
    rows = []
    for batch in args.batch_sizes:
        gen = torch.Generator().manual_seed(batch)
        images = torch.rand(batch, 3, args.size, args.size, generator=gen).to(device)
        ref = model("float32", batch, False, False).infer(images)
        for name, fast, comp in configs:
            m = model(args.dtype, batch, fast, comp)
            seconds = median_seconds(
                lambda m=m, x=images: m.infer(x), device, args.warmup, args.iters
            )
            out = m.infer(images)
            rows.append(
                {
                    "path": name
                    + (" (CUDA graphs)" if comp and batch == 1 and device.type == "cuda" else ""),
                    "dtype": args.dtype,
                    "batch": batch,
                    "ms_per_img": 1000 * seconds / batch,
                    "flat_max_abs": max_abs(out["flat"], ref["flat"]),
                    "flat_rel": rel_err(out["flat"], ref["flat"]),
                    "env_rel": rel_err(out["env"], ref["env"]),
                }
            )
            del m
    return rows


def format_table(rows: list[dict]) -> list[str]:
    cols = list(rows[0])
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                cells.append(f"{v:.2e}" if "err" in c or "rel" in c or "abs" in c else f"{v:.2f}")
            else:
                cells.append(str(v))
        lines.append(" | ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from delit_cache.utils.device import resolve_device
    from delit_cache.utils.machine import emit_report, load_average, run_header

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    command = "python benchmarks/gpu_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    title = f"{args.what} speed, VAE {args.vae}, {args.size} x {args.size}, {args.dtype}"
    header = run_header(title, command, device)
    rows = encode_rows(args, device) if args.what == "encode" else infer_rows(args, device)
    lines = [*header, f"- load average at the end: {load_average()}", "", *format_table(rows)]
    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

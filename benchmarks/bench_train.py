"""Throughput of ``delit train-heads`` steps on random latents (no cache, no VAE).

Runs the real training step (heads forward, all losses incl. rendered spheres, backward,
grad clipping, AdamW + scheduler) on random normalised latents and random HDR env maps, and
prints a table: device, config, batch, parameters, steps/s, samples/s, peak GPU memory.

    .venv/bin/python benchmarks/bench_train.py --config tiny --device cpu --batch-size 8
    .venv/bin/python benchmarks/bench_train.py --config default --device cuda \
        --batch-size 16 32 --mixed-precision no bf16 --latent-size 64
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from delit_cache.models.heads import create_heads
from delit_cache.train.config import load_config
from delit_cache.train.losses import compute_losses
from delit_cache.train.optim import make_optimizer
from delit_cache.utils.machine import device_name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(
    config: str,
    device: torch.device,
    batch: int,
    latent: int,
    precision: str,
    steps: int,
    warmup: int,
) -> dict:
    """Time ``steps`` training steps after ``warmup``; return one result row."""
    cfg = load_config(config, {"batch_size": batch, "mixed_precision": precision, "steps": 10**6})
    heads = create_heads(cfg.heads_config(), seed=0).to(device)
    opt, sched = make_optimizer(heads, cfg, 10**6)
    g = torch.Generator().manual_seed(0)
    relit = torch.randn(batch, 16, latent, latent, generator=g).to(device)
    flat = torch.randn(batch, 16, latent, latent, generator=g).to(device)
    env = (torch.rand(batch, 3, 128, 256, generator=g) ** 4 * 50).to(device)
    autocast = precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = heads(relit)
        loss = compute_losses(out, flat, env, cfg)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(heads.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )
    return {
        "config": config,
        "batch": batch,
        "latent": latent,
        "precision": precision,
        "params_M": heads.num_parameters() / 1e6,
        "steps_s": steps / seconds,
        "samples_s": steps * batch / seconds,
        "peak_GiB": peak,
    }


def print_table(device: torch.device, rows: list[dict]) -> None:
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    header = f"{'config':>10} {'batch':>5} {'latent':>6} {'prec':>5} {'params M':>8} "
    header += f"{'steps/s':>8} {'samples/s':>9} {'peak GiB':>8}"
    print(header)
    for r in rows:
        print(
            f"{r['config']:>10} {r['batch']:>5} {r['latent']:>6} {r['precision']:>5} "
            f"{r['params_M']:>8.2f} {r['steps_s']:>8.2f} {r['samples_s']:>9.1f} {r['peak_GiB']:>8.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", nargs="+", default=["default"], help="config names or paths")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, nargs="+", default=[16])
    p.add_argument("--latent-size", type=int, default=64, help="latent side (image size / 8)")
    p.add_argument("--mixed-precision", nargs="+", default=["no"], choices=["no", "bf16"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = [
        bench_one(c, device, b, args.latent_size, mp, args.steps, args.warmup)
        for c in args.config
        for b in args.batch_size
        for mp in args.mixed_precision
    ]
    print_table(device, rows)


if __name__ == "__main__":
    main()

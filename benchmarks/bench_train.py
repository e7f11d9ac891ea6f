"""Throughput of ``delit train-heads`` steps on random latents (no cache, no VAE).

Runs the real training step (heads forward, all losses incl. rendered spheres, backward,
grad clipping, AdamW + scheduler) on random normalised latents and random HDR env maps, and
prints a table: device, config, batch, parameters, path, precision, steps/s, samples/s, peak
GPU memory. Two paths, timed in the same run:

* ``plain``: the loss targets (env encoding, target spheres) computed from the env maps at
  every step, the env decoder's upsampling done the direct way (nearest x2, then the 3x3
  convolution), its panorama padding by ``F.pad`` and its coarse map upsampled by
  ``F.interpolate``, and its attention on PyTorch's default kernel;
* ``fast``: what ``delit train-heads`` does: targets computed once (at load), the
  folded upsampling (``env_decoder.UpBlock``: one transposed convolution), padding by
  concatenation, the coarse map upsampled by two matrix products
  (``layers.pano_upsample``) and, when training on the CPU, the math attention kernel.

``--out FILE`` also writes the table as markdown with the date, machine, load and command.

    .venv/bin/python benchmarks/bench_train.py --config demo --device cpu --batch-size 8 \
        --latent-size 32 --mixed-precision no bf16
    .venv/bin/python benchmarks/bench_train.py --config default --device cuda \
        --batch-size 64 --mixed-precision bf16 --latent-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from delit_cache.models import env_decoder, layers
from delit_cache.models.heads import create_heads
from delit_cache.train.config import load_config
from delit_cache.train.losses import compute_losses, loss_targets
from delit_cache.train.optim import make_optimizer
from delit_cache.utils.machine import device_name, synchronize, table_lines


def bench_one(
    config: str,
    device: torch.device,
    batch: int,
    latent: int,
    precision: str,
    steps: int,
    warmup: int,
    path: str = "fast",
) -> dict:
    """Time ``steps`` training steps after ``warmup``; return one result row."""
    with contextlib.ExitStack() as stack:
        if path == "plain":
            stack.enter_context(_direct_upsampling())
            stack.enter_context(_direct_panorama_ops())
            stack.enter_context(_default_attention())
        return _bench(config, device, batch, latent, precision, steps, warmup, path)


@contextlib.contextmanager
def _direct_upsampling():
    """Swap ``UpBlock.forward`` for the direct computation while timing the plain path."""
    fast = env_decoder.UpBlock.forward

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))

    env_decoder.UpBlock.forward = direct
    try:
        yield
    finally:
        env_decoder.UpBlock.forward = fast


@contextlib.contextmanager
def _direct_panorama_ops():
    """Swap the panorama padding and the coarse map's upsampling for their ``F.pad`` and
    ``F.interpolate`` forms (same values) while timing the plain path."""
    fast_pad, fast_upsample = layers.pano_pad, env_decoder.pano_upsample

    def pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(F.pad(x, (1, 1, 0, 0), mode="circular"), (0, 0, 1, 1), mode="replicate")

    def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        sy, sx = size[0] // x.shape[-2], size[1] // x.shape[-1]
        up = F.interpolate(pad(x), scale_factor=(sy, sx), mode="bilinear", align_corners=False)
        return up[..., sy : sy + size[0], sx : sx + size[1]]

    layers.pano_pad, env_decoder.pano_upsample = pad, upsample
    try:
        yield
    finally:
        layers.pano_pad, env_decoder.pano_upsample = fast_pad, fast_upsample


@contextlib.contextmanager
def _default_attention():
    """Let the env decoder's attention take PyTorch's default kernel (flash on the CPU) while
    timing the plain path."""
    chosen = env_decoder.attention_backend
    env_decoder.attention_backend = lambda x: contextlib.nullcontext()
    try:
        yield
    finally:
        env_decoder.attention_backend = chosen


def _bench(config, device, batch, latent, precision, steps, warmup, path) -> dict:
    cfg = load_config(config, {"batch_size": batch, "mixed_precision": precision, "steps": 10**6})
    heads = create_heads(cfg.heads_config(), seed=0).to(device)
    opt, sched = make_optimizer(heads, cfg, 10**6)
    g = torch.Generator().manual_seed(0)
    relit = torch.randn(batch, 16, latent, latent, generator=g).to(device)
    flat = torch.randn(batch, 16, latent, latent, generator=g).to(device)
    env = (torch.rand(batch, 3, 128, 256, generator=g) ** 4 * 50).to(device)
    autocast = precision == "bf16"
    batch_data = {"flat_latent": flat, "env": env}
    if path == "fast":
        batch_data = {"flat_latent": flat, **loss_targets(env, cfg)}

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = heads(relit)
        loss = compute_losses(out, batch_data, cfg)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(heads.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )
    return {
        "config": config,
        "batch": batch,
        "latent": latent,
        "precision": precision,
        "path": path,
        "params_M": heads.num_parameters() / 1e6,
        "steps_s": steps / seconds,
        "samples_s": steps * batch / seconds,
        "peak_GiB": peak,
    }


COLUMNS = (
    ("config", "{}"),
    ("batch", "{}"),
    ("latent", "{}"),
    ("path", "{}"),
    ("precision", "{}"),
    ("params_M", "{:.2f}"),
    ("steps_s", "{:.2f}"),
    ("samples_s", "{:.1f}"),
    ("peak_GiB", "{:.2f}"),
)


def table(device: torch.device, rows: list[dict]) -> str:
    """The results as a markdown table, headed by the machine, load and command."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {device_name(device)}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average {load}",
        f"command: python {' '.join(sys.argv)}",
        "",
        *table_lines(COLUMNS, rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", nargs="+", default=["default"], help="config names or paths")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, nargs="+", default=[16])
    p.add_argument("--latent-size", type=int, default=64, help="latent side (image size / 8)")
    p.add_argument("--mixed-precision", nargs="+", default=["no"], choices=["no", "bf16"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--paths", nargs="+", default=["plain", "fast"], choices=["plain", "fast"])
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = [
        bench_one(c, device, b, args.latent_size, mp, args.steps, args.warmup, t)
        for c in args.config
        for b in args.batch_size
        for mp in args.mixed_precision
        for t in args.paths
    ]
    text = table(device, rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

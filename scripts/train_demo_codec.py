"""Train delit's demo codec: DiffSynth's Wan 2.1 ``VideoVAE_`` at reduced width on synth data.

The demo codec is a stand-in for the real Wan 2.1 VAE so that ``delit demo`` and the tests
run on a machine without the Wan weights. It has the real architecture (z_dim 16, 8x
spatial compression, the original key layout) at width ``--dim`` instead of 96, trained as
a plain autoencoder (with a little latent noise, so that the decoder tolerates the small
errors of predicted latents) on portraits made by ``delit synth``. It is not meant for
real photos.

    delit synth --out data/codec --n 2000 --size 256 --workers 16
    python scripts/train_demo_codec.py --data data/codec --out delit_cache/assets/demo_codec.safetensors \
        --device cuda --minutes 5

It prints the held-out reconstruction PSNR it measured and stores it, with the training
settings and the device, in the file's metadata.
"""

from __future__ import annotations

import argparse
import datetime
import math
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from delit_cache.data.shards import expand_shards, iter_samples
from delit_cache.evaluate.image_metrics import psnr
from delit_cache.utils.machine import device_name
from delit_cache.vae import WanVAE, new_wan_vae, save_codec
from delit_cache.vae.diffsynth_wan import decode_one_frame, encode_one_frame


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="synth shards (dir, tar, glob or brace pattern)")
    p.add_argument("--out", required=True, type=Path, help="codec .safetensors to write")
    p.add_argument("--dim", type=int, default=16, help="VideoVAE_ width (96 = the real Wan VAE)")
    p.add_argument("--size", type=int, default=256, help="training image size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=20000, help="upper bound on optimiser steps")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget for training")
    p.add_argument("--latent-noise", type=float, default=0.05, help="noise std added to latents")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, help="continue from an existing codec file")
    return p.parse_args(argv)


def load_images(data: str, size: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """All relit and flat images of the shards as uint8 [N,3,S,S]: (train, held-out).

    A sample is held out by a hash of its key, so the split does not depend on shard order.
    """
    train, val = [], []
    for sample in iter_samples(expand_shards(data), size=size):
        pair = torch.stack([sample["relit"], sample["flat"]])
        pair = (pair.clamp(0, 1) * 255).round().to(torch.uint8)
        held_out = zlib.crc32(sample["key"].encode()) % 10_000 < val_fraction * 10_000
        (val if held_out else train).append(pair)
    if not train or not val:
        raise SystemExit(f"{data}: need samples for both training and validation")
    return torch.cat(train), torch.cat(val)


def to_model_range(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float [B,3,1,H,W] in [-1, 1] (an image is a one-frame video)."""
    return (batch.to(device).float() / 127.5 - 1.0).unsqueeze(2)


def lr_at(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train(model: torch.nn.Module, images: torch.Tensor, args: argparse.Namespace) -> int:
    """Train ``model`` in place until the step or time budget runs out; return the steps."""
    device = torch.device(args.device)
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    # The schedule assumes the time budget ends training: estimate steps after a warm-up.
    total, start, step = args.steps, time.time(), 0
    while step < total:
        idx = torch.randint(len(images), (args.batch_size,), generator=gen)
        x = to_model_range(images[idx], device)
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr)
        with autocast:
            mu = encode_one_frame(model, x)
            z = mu + args.latent_noise * mu.detach().std() * torch.randn_like(mu)
            rec = decode_one_frame(model, z).float()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * mu.float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed = time.time() - start
        if step == 50:  # fit the cosine schedule to the time budget
            total = min(args.steps, int(step * args.minutes * 60 / elapsed))
        if step % 100 == 0 or step == total:
            print(f"step {step}/{total}  loss {loss.item():.4f}  {elapsed:.0f}s", flush=True)
    model.eval().requires_grad_(False)
    return step


@torch.no_grad()
def latent_stats(model: torch.nn.Module, images: torch.Tensor, device: torch.device):
    """Per-channel mean and std of the posterior mean over ``images``."""
    mus = [
        encode_one_frame(model, to_model_range(images[i : i + 32], device)).float()
        for i in range(0, len(images), 32)
    ]
    mu = torch.cat(mus).transpose(0, 1).reshape(16, -1)
    return mu.mean(1).tolist(), mu.std(1).clamp_min(1e-3).tolist()


@torch.no_grad()
def heldout_psnr(vae: WanVAE, images: torch.Tensor) -> float:
    """Mean PSNR (dB, [0,1] pixel units) of decode(encode(x)) over the held-out images."""
    psnrs = []
    for i in range(0, len(images), 16):
        x = images[i : i + 16].to(vae.device).float() / 255.0
        psnrs.append(psnr(vae.roundtrip(x), x))
    return torch.cat(psnrs).mean().item()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train_images, val_images = load_images(args.data, args.size, args.val_fraction)
    print(f"{len(train_images)} training images, {len(val_images)} held out, {args.size}px")
    if args.init:
        from delit_cache.vae import load_wan_vae

        vae = load_wan_vae(args.init, device=device)
    else:
        vae = new_wan_vae(dim=args.dim, seed=args.seed, device=device)
    if device.type == "cuda":  # a few thousand 256px images fit on the GPU as uint8
        train_images = train_images.to(device)
    steps = train(vae.model, train_images, args)
    mean, std = latent_stats(vae.model, train_images, device)
    vae.mean.copy_(torch.tensor(mean))
    vae.std.copy_(torch.tensor(std))
    psnr = heldout_psnr(vae, val_images)
    meta = {
        "note": "delit demo codec: a stand-in for the Wan 2.1 VAE, trained on synthetic portraits; "
        "not for real photos",
        "trained_steps": steps,
        "image_size": args.size,
        "heldout_psnr_db": round(psnr, 3),
        "heldout_images": len(val_images),
        "device": device_name(device),
        "date": datetime.date.today().isoformat(),
    }
    save_codec(vae, args.out, extra_meta=meta, storage_dtype=torch.float16)
    print(f"held-out PSNR {psnr:.2f} dB over {len(val_images)} images; wrote {args.out}")


if __name__ == "__main__":
    main()

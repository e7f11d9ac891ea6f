"""Is the flat-lit head limited by training steps or by data? A learning curve of the flat path.

Usage (from the repository root)::

    python benchmarks/flat_learning_curve.py --train demo_out/cache.zarr more.zarr \\
        --val-data demo_out/data/val --samples 192 960 --steps 3000 --eval-every 500

For each training-set size N (the first N samples of the caches, in the order given) it
trains the flat path of fresh heads (feature extractor and flat projection, built from
``--config``, seed 0; the env path is not run) with the trainer's optimiser, schedule and flat
loss (``train.make_optimizer``, L1 on standardised latents), and every ``--eval-every`` steps
prints the mean training loss since the last row, the loss on the held-out shards' latents,
and their flat-lit PSNR after decoding with the codec (``metrics.flat_psnr_ssim``, the number
``delit eval`` reports). A training loss far below the held-out loss says the head is
limited by data, not steps. Prints a table with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import time

import numpy as np
import torch

from delit_cache.cache.store import LatentCache
from delit_cache.data.shards import iter_samples
from delit_cache.evaluate.image_metrics import flat_psnr_ssim
from delit_cache.models import create_heads
from delit_cache.train.config import load_config
from delit_cache.train.losses import standardised_flat_loss
from delit_cache.train.optim import make_optimizer
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import device_name
from delit_cache.vae import load_wan_vae


def load_latents(paths: list[str], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (relit, flat) latent pairs of the caches, in order."""
    relit, flat, left = [], [], n
    for path in paths:
        cache = LatentCache(path)
        idx = np.arange(min(left, len(cache)))
        relit.append(torch.from_numpy(cache.read("relit_latent", idx)))
        flat.append(torch.from_numpy(cache.read("flat_latent", idx)))
        left -= idx.size
        if left == 0:
            break
    if left:
        raise DelitError(f"{paths}: the caches hold only {n - left} samples, {n} asked for")
    return torch.cat(relit), torch.cat(flat)


def curve(args, cfg, train, val, vae) -> None:
    relit, flat = train
    n = relit.shape[0]
    heads = create_heads(cfg.heads_config(), seed=0)
    mean, std = relit.mean(dim=(0, 2, 3)), relit.std(dim=(0, 2, 3))
    heads.set_latent_stats(mean, std)
    opt, sched = make_optimizer(heads, cfg, args.steps)
    gen = torch.Generator().manual_seed(0)
    order, pos, running, t0 = torch.randperm(n, generator=gen), 0, [], time.perf_counter()
    for step in range(1, args.steps + 1):
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        heads.train()
        pred = heads.flat_latent(relit[idx])
        loss = standardised_flat_loss(pred, flat[idx], heads.latent_std, cfg.flat_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            seconds = time.perf_counter() - t0
            heads.eval()
            with torch.no_grad():
                pred = heads.flat_latent(val["relit_latent"])
                val_loss = float(
                    standardised_flat_loss(
                        pred, val["flat_latent"], heads.latent_std, cfg.flat_loss
                    )
                )
                images = vae.decode(pred, size=tuple(val["flat"].shape[-2:])).float()
            psnr, ssim = flat_psnr_ssim(images, val["flat"])
            print(
                f"{n:8d} {step:6d} {np.mean(running):10.4f} {val_loss:9.4f} {psnr:9.2f} "
                f"{ssim:7.4f} {seconds:8.0f}",
                flush=True,
            )
            running = []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", nargs="+", required=True, help="latent caches (delit encode)")
    p.add_argument("--val-data", required=True, help="held-out shards (relit, flat)")
    p.add_argument("--vae", default="demo", help="the codec the caches were encoded with")
    p.add_argument("--config", default="demo", help="training config (heads, lr, batch)")
    p.add_argument("--samples", type=int, nargs="+", default=[192], help="training-set sizes")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--val-limit", type=int, default=24)
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    relit, flat = load_latents(args.train, max(args.samples))  # read once, bad paths fail here
    vae = load_wan_vae(args.vae)
    samples = list(itertools.islice(iter_samples(args.val_data), args.val_limit))
    with torch.no_grad():
        val_relit = torch.stack([s["relit"] for s in samples])
        val_flat = torch.stack([s["flat"] for s in samples])
        val = {
            "relit_latent": vae.encode(val_relit),
            "flat_latent": vae.encode(val_flat),
            "flat": val_flat,
        }
    print(f"# flat-path learning curve: config {args.config}, vae {args.vae}, caches {args.train}")
    print(f"# held out: {len(samples)} samples of {args.val_data}; batch {cfg.batch_size}")
    print(f"# {device_name('cpu')}, torch {torch.__version__}, {datetime.date.today()}")
    print(
        f"{'samples':>8s} {'step':>6s} {'train loss':>10s} {'val loss':>9s} {'val PSNR':>9s} "
        f"{'SSIM':>7s} {'seconds':>8s}"
    )
    for n in args.samples:
        curve(args, cfg, (relit[:n], flat[:n]), val, vae)


if __name__ == "__main__":
    try:
        main()
    except DelitError as err:  # bad paths or data: one line, exit 1
        raise SystemExit(f"error: {err}") from None

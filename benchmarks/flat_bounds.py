"""How close can any delighter get to the codec ceiling? Oracle bounds for the flat-lit PSNR.

Usage (from the repository root)::

    python benchmarks/flat_bounds.py --vae demo --data demo_out/data/val --size 256

On synthetic shards (they carry the subject mask), for each sample it scores against the true
flat image, with the metric of ``delit eval`` (``metrics.flat_psnr_ssim``):

* ``codec ceiling``: decode(encode(true flat)), what ``delit eval`` reports as the ceiling;
* ``input as flat``: the photo itself (the eval baseline);
* ``oracle shading, exact``: the codec's reconstruction of the photo, decode(encode(relit)),
  divided in linear light by the *true* per-pixel shading ``relit / flat`` on the subject,
  white on the background. A delighter working from the relit latent cannot beat this by much:
  it has the codec's view of the photo, and here it is handed the exact answer for the rest;
* ``oracle shading, k px``: the same with the true shading averaged over k x k blocks (masked)
  and upsampled bilinearly: an oracle that knows the lighting only at that resolution
  (k = 8 is one latent pixel).

None of the oracles is re-encoded, so each is still an upper bound for a model whose output
goes through the decoder. Prints a table (means over samples) with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import itertools

import torch
import torch.nn.functional as F

from delit_cache.data.imageio import linear_to_srgb, srgb_to_linear
from delit_cache.data.shards import iter_samples
from delit_cache.evaluate.image_metrics import flat_psnr_ssim
from delit_cache.utils.machine import device_name
from delit_cache.vae import load_wan_vae


def blurred_ratio(ratio: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Masked k x k block mean of ``ratio`` [B,3,H,W], upsampled back bilinearly."""
    num = F.avg_pool2d(ratio * mask, k)
    den = F.avg_pool2d(mask, k).clamp_min(1e-6)
    return F.interpolate(num / den, scale_factor=k, mode="bilinear", align_corners=False)


def oracle(codec_relit: torch.Tensor, ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sRGB flat estimate: codec photo (linear) times the shading ratio; white background."""
    est = linear_to_srgb((srgb_to_linear(codec_relit) * ratio).clamp(0.0, 1.0))
    return torch.where(mask > 0.5, est, torch.ones(()))


@torch.no_grad()
def bounds(vae, samples: list[dict], blocks: tuple[int, ...]) -> dict[str, tuple[float, float]]:
    relit = torch.stack([s["relit"] for s in samples])
    flat = torch.stack([s["flat"] for s in samples])
    mask = (torch.stack([s["mask"] for s in samples]) > 0.5).float()
    size = tuple(relit.shape[-2:])
    codec_relit = vae.decode(vae.encode(relit), size=size).float().clamp(0, 1)
    codec_flat = vae.decode(vae.encode(flat), size=size).float().clamp(0, 1)
    ratio = srgb_to_linear(flat) / srgb_to_linear(relit).clamp_min(1.0 / 255.0)
    rows = {
        "codec ceiling": flat_psnr_ssim(codec_flat, flat),
        "input as flat": flat_psnr_ssim(relit, flat),
        "oracle shading, exact": flat_psnr_ssim(oracle(codec_relit, ratio, mask), flat),
    }
    for k in blocks:
        est = oracle(codec_relit, blurred_ratio(ratio, mask, k), mask)
        rows[f"oracle shading, {k} px"] = flat_psnr_ssim(est, flat)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", default="demo", help="VAE path or 'demo'")
    parser.add_argument("--data", required=True, help="synthetic shards (with masks)")
    parser.add_argument("--size", type=int, default=256, help="sample side (square samples)")
    parser.add_argument("--limit", type=int, default=64, help="samples to score")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    vae = load_wan_vae(args.vae)
    samples = list(itertools.islice(iter_samples(args.data, args.size), args.limit))
    totals: dict[str, list[float]] = {}
    for lo in range(0, len(samples), args.batch_size):
        batch = samples[lo : lo + args.batch_size]
        for name, (p, s) in bounds(vae, batch, (2, 4, 8, 16)).items():
            acc = totals.setdefault(name, [0.0, 0.0])
            acc[0] += p * len(batch)
            acc[1] += s * len(batch)
    n = len(samples)
    print(f"# flat-lit bounds: vae {args.vae}, {n} samples of {args.data} at {args.size} px")
    print(f"# {device_name('cpu')}, {datetime.date.today()}")
    print(f"{'estimate':28s} {'PSNR (dB)':>10s} {'SSIM':>8s}")
    for name, (p, s) in totals.items():
        print(f"{name:28s} {p / n:10.2f} {s / n:8.4f}")


if __name__ == "__main__":
    main()

"""What does bf16 encoding (or decoding) cost the heads? Accuracy of the whole chain per precision.

Usage (from the repository root)::

    python benchmarks/bf16_encode.py --vae demo --checkpoint demo --data demo_out/data/val
    python benchmarks/bf16_encode.py --vae /path/Wan2.2-I2V-A14B --checkpoint runs/x \\
        --data shards/val --device cuda --size 512

The heads were trained on a cache encoded in one precision (float32 for the demo heads). For
each (encoder dtype, decoder dtype) pair this runs ``delit eval`` on the same samples with the
same heads, so the rows differ only in the VAE's arithmetic, and prints:

* ``latent rel. err``: ``||z - z_fp32|| / ||z_fp32||`` of the encoded photos, against float32;
* the flat-lit PSNR and SSIM, the codec ceiling and the env metrics (diffuse angular error,
  diffuse si-RMSE, light direction) of ``delit_cache.evaluate.evaluate.evaluate``;
* seconds for the evaluation (encode + heads + decode, twice for the ceiling).

Prints a table with the device, torch version and date.
"""

from __future__ import annotations

import argparse
import datetime
import itertools

import torch
from torch import nn

from delit_cache.data.shards import iter_samples
from delit_cache.evaluate.evaluate import evaluate
from delit_cache.infer.delighter import resolve_checkpoint
from delit_cache.models import create_model_and_transforms
from delit_cache.utils.device import resolve_device
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import device_name
from delit_cache.vae import load_wan_vae

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PAIRS = (("fp32", "fp32"), ("bf16", "fp32"), ("fp32", "bf16"), ("bf16", "bf16"))


class SplitPrecisionVAE(nn.Module):
    """Encode with one loaded VAE, decode with another (the same weights in two dtypes)."""

    def __init__(self, encoder_vae: nn.Module, decoder_vae: nn.Module):
        super().__init__()
        self.enc, self.dec = encoder_vae, decoder_vae
        self.z_dim = encoder_vae.z_dim

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.enc.encode(images)

    def decode(self, latents: torch.Tensor, size=None) -> torch.Tensor:
        return self.dec.decode(latents, size=size)


def latent_error(vaes: dict, enc: str, samples: list[dict], device: torch.device) -> float:
    """Relative L2 distance of ``enc``-encoded latents from float32-encoded ones."""
    num = den = 0.0
    for lo in range(0, len(samples), 4):
        x = torch.stack([s["relit"] for s in samples[lo : lo + 4]]).to(device)
        ref = vaes["fp32"].encode(x)
        z = vaes[enc].encode(x)
        num += float((z - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return (num / den) ** 0.5


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--vae", default="demo", help="Wan 2.1 VAE weights (file or folder) or 'demo'")
    p.add_argument("--checkpoint", default="demo", help="heads: run folder, file or 'demo'")
    p.add_argument("--data", required=True, help="shards with relit, flat and env")
    p.add_argument("--size", type=int, default=256, help="model image size")
    p.add_argument("--limit", type=int, default=24, help="samples to evaluate")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    device = resolve_device(args.device)
    vaes = {k: load_wan_vae(args.vae, device=device, dtype=dt) for k, dt in DTYPES.items()}
    heads, mean_env, _ = resolve_checkpoint(args.checkpoint)
    samples = list(itertools.islice(iter_samples(args.data), args.limit))
    print(f"# bf16 vs fp32 VAE arithmetic: vae {args.vae}, heads {args.checkpoint}, ")
    print(f"# {len(samples)} samples of {args.data} at {args.size} px")
    print(f"# {device_name(device)}, torch {torch.__version__}, {datetime.date.today()}")
    head = (
        f"{'encode':>6s} {'decode':>6s} {'latent rel.err':>14s} {'flat PSNR':>9s} {'SSIM':>6s} "
        f"{'ceiling':>7s} {'diff.ang':>8s} {'diff.siRMSE':>11s} {'light dir':>9s} {'seconds':>7s}"
    )
    print(head)
    errors = {enc: latent_error(vaes, enc, samples, device) for enc in DTYPES}
    for enc, dec in PAIRS:
        vae = SplitPrecisionVAE(vaes[enc], vaes[dec])
        model, _ = create_model_and_transforms(vae, heads, image_size=args.size, device=device)
        r = evaluate(model, samples, mean_env, image_size=args.size, limit=args.limit)
        m = r["model"]
        print(
            f"{enc:>6s} {dec:>6s} {errors[enc]:14.2e} "
            f"{m['flat_psnr']:9.2f} {m['flat_ssim']:6.4f} {r['codec_ceiling']['flat_psnr']:7.2f} "
            f"{m['diffuse']['angular_deg']:8.3f} {m['diffuse']['si_rmse']:11.4f} "
            f"{m['light_dir_deg']:9.2f} {r['seconds']:7.1f}",
            flush=True,
        )


if __name__ == "__main__":
    try:
        main()
    except DelitError as err:  # bad paths, checkpoint or data: one line, exit 1
        raise SystemExit(f"error: {err}") from None

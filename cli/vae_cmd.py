"""``delit vae-check``: load the Wan VAE, round-trip one image, report size, speed and PSNR."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .options import DeviceOption, DtypeOption, VaeOption

DEMO_NOTE = (
    "note: 'demo' is a small stand-in codec trained on synthetic portraits for demos and "
    "tests; it is not the Wan VAE and is not meant for real photos."
)


def _read_rgb(path: Path):
    """An image file -> float32 tensor [1,3,H,W] in [0,1] (``read_ldr``: EXIF orientation
    applied, 16-bit PNGs at full depth)."""
    from delit_cache.data.imageio import image_to_tensor, read_ldr

    return image_to_tensor(read_ldr(path)).unsqueeze(0)


def _write_side_by_side(left, right, path: Path) -> None:
    """Write two [3,H,W] images in [0,1] side by side as a PNG (atomically)."""
    import torch

    from delit_cache.data.imageio import write_png

    write_png(path, torch.cat([left, right], dim=-1))


# With --vae demo and no --image: synthetic portraits from a seed that no shipped model
# was trained on (the demo codec trains on seed 1000, `delit demo` on seeds 0 and 1).
HOLDOUT_SEED = 9999
HOLDOUT_COUNT = 8
HOLDOUT_NAME = f"held-out synthetic portraits (seed {HOLDOUT_SEED}, 256x256)"


def demo_holdout_portraits(count: int, size: int = 256):
    """``count`` synthetic portraits [N,3,size,size] in [0,1], as `delit synth` stores them."""
    import torch

    from delit_cache.synth.compose import render_sample
    from delit_cache.synth.environments import list_hdris

    hdris = list_hdris(None)
    return torch.stack(
        [render_sample(HOLDOUT_SEED, i, size=size, hdris=hdris).display()[0] for i in range(count)]
    )


def _timed(fn, device):
    """Run ``fn()``; return (result, wall milliseconds), synchronising CUDA around it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, (time.perf_counter() - start) * 1000.0


def run_vae_check(
    vae_source: str,
    image: Path | None = None,
    out: Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> dict:
    """Load the VAE, encode+decode one image, optionally write ``input | reconstruction``.

    Returns the report dict (see ``vae_check``); prints nothing.
    """
    import torch

    from delit_cache.evaluate.image_metrics import psnr
    from delit_cache.vae import load_wan_vae
    from delit_cache.vae.testimage import synthetic_test_image

    vae = load_wan_vae(vae_source, device=device, dtype=dtype)
    if image is not None:
        x, name = _read_rgb(image), str(image)
    elif vae_source == "demo":
        x, name = demo_holdout_portraits(HOLDOUT_COUNT), HOLDOUT_NAME
    else:
        x, name = synthetic_test_image(256, 256).unsqueeze(0), "builtin"
    with torch.inference_mode():
        if vae.device.type == "cuda":  # warm-up (kernel selection) outside the timing
            vae.decode(vae.encode(x), size=x.shape[-2:])
        z, encode_ms = _timed(lambda: vae.encode(x), vae.device)
        y, decode_ms = _timed(lambda: vae.decode(z, size=tuple(x.shape[-2:])), vae.device)
    y = y.cpu()
    written = None
    if out is not None:
        stem = (
            image.stem if image is not None else ("holdout" if vae_source == "demo" else "builtin")
        )
        written = Path(out) / f"vae_check_{stem}.png"
        _write_side_by_side(x[0], y[0], written)
    return {
        "vae": str(vae_source),
        "fingerprint": vae.fingerprint,
        "dim": vae.dim,
        "params": vae.num_params,
        "dtype": str(vae.dtype).replace("torch.", ""),
        "device": str(vae.device),
        "image": name,
        "images": int(x.shape[0]),
        "image_size": [int(x.shape[-2]), int(x.shape[-1])],
        "latent_shape": list(z.shape),
        "psnr": round(psnr(y, x).mean().item(), 3),
        "encode_ms": round(encode_ms, 2),
        "decode_ms": round(decode_ms, 2),
        "fast_single_frame": vae.fast_single_frame,
        "out": str(written) if written is not None else None,
    }


def _summary(report: dict) -> list[str]:
    lines = [
        f"VAE: {report['vae']} (width {report['dim']}, {report['params'] / 1e6:.1f} M parameters, "
        f"fingerprint {report['fingerprint']})",
    ]
    if report["vae"] == "demo":
        lines.append(DEMO_NOTE)
    h, w = report["image_size"]
    name = "built-in test image" if report["image"] == "builtin" else report["image"]
    if report["images"] > 1:
        name = f"{report['images']} {name}"
    lines += [
        f"image: {name}, {h}x{w}; latent {report['latent_shape']}",
        f"encode {report['encode_ms']:.1f} ms, decode {report['decode_ms']:.1f} ms "
        f"for {report['images']} image(s) ({report['device']}, {report['dtype']})",
        f"reconstruction PSNR: {report['psnr']:.2f} dB"
        + (" (mean)" if report["images"] > 1 else ""),
    ]
    if report["out"]:
        lines.append(f"wrote input | reconstruction to {report['out']}")
    return lines


@app.command("vae-check")
def vae_check(
    vae: VaeOption,
    image: Annotated[
        Path | None,
        typer.Option(
            "--image",
            help="Image to round-trip (default: a built-in test image; with --vae demo, "
            "8 held-out synthetic portraits).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the input | reconstruction PNG.")
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
) -> None:
    """Load the VAE, encode and decode one image; print a summary, then one JSON line.

    The JSON holds vae, fingerprint, params, dtype, device, image_size, latent_shape,
    psnr (dB, pixels in [0,1]), encode_ms and decode_ms (wall time).
    """
    report = run_vae_check(vae, image=image, out=out, device=device, dtype=dtype)
    for line in _summary(report):
        typer.echo(line)
    typer.echo(json.dumps(report))

"""``delit eval`` (score a checkpoint on raw shards) and ``delit infer`` (delight photos)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cli.app import app
from delit_cache.utils.atomic import write_json

CHECKPOINT_HELP = "run folder (RUN/heads.safetensors), heads .safetensors file, or 'demo'"
VAE_HELP = "Wan 2.1 VAE weights (.pth / .safetensors), or 'demo'"
DEVICE_HELP = "cpu, cuda, cuda:1, ... or auto (cuda when available)"


@app.command("eval")
def eval_command(
    checkpoint: str = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    vae: str = typer.Option(..., "--vae", help=VAE_HELP),
    data: list[str] = typer.Option(
        ..., "--data", help="raw shards: folder, .tar, glob or brace pattern (repeatable)"
    ),
    json_path: Path | None = typer.Option(None, "--json", help="also write the result here"),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="VAE compute dtype: float32|bfloat16"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="evaluate the first N samples"),
    size: int | None = typer.Option(
        None, "--size", help="model size (default: the heads' training size, else 512)"
    ),
) -> int:
    """Score a checkpoint on raw samples: flat-lit PSNR/SSIM, codec ceiling, three-sphere env
    metrics and light direction, each beside a free baseline."""
    from delit_cache.data.shards import expand_shards, iter_samples
    from delit_cache.evaluate.evaluate import evaluate, format_table
    from delit_cache.infer.delighter import load_vae_and_model

    shards = expand_shards(data)  # bad --data fails before the VAE is loaded
    model, _, mean_env, info = load_vae_and_model(checkpoint, vae, device, dtype, size)
    size_used = info["model_size"]
    result = evaluate(
        model,
        iter_samples(shards),
        mean_env,
        image_size=size_used,
        batch_size=batch_size,
        limit=limit,
        progress=sys.stderr.isatty(),
    )
    result.update(
        checkpoint=info["checkpoint"],
        vae=getattr(model.vae, "source", vae) or vae,
        vae_fingerprint=info.get("vae_fingerprint_given"),
        device=str(next(model.heads.parameters()).device),
        image_size=size_used,
        mean_env_file=info["mean_env"],
        vae_warning=info.get("vae_warning"),
    )
    typer.echo(format_table(result))
    if json_path is not None:
        write_json(json_path, result)
    return 0


@app.command("infer")
def infer_command(
    inputs: list[Path] = typer.Argument(..., help="photos or folders of photos (recursive)"),
    checkpoint: str = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    vae: str = typer.Option(..., "--vae", help=VAE_HELP),
    out: Path = typer.Option(..., "--out", help="output folder"),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="VAE compute dtype: float32|bfloat16"),
    size: int | None = typer.Option(
        None, "--size", help="model size (default: the heads' training size, else 512)"
    ),
) -> int:
    """Delight photos: writes <stem>_flat.png (input size), <stem>_env.exr (128x256 linear
    HDR) and <stem>_env.png (panorama and three spheres) for each input. Photos are scaled so
    the longer side is the model size and padded to a square by replicating their borders."""
    from delit_cache.infer.delighter import Delighter

    delighter = Delighter.from_pretrained(checkpoint, vae, device, dtype, size, batch_size)
    summary = delighter.run(inputs, out, progress=True)
    typer.echo(summary.line(), err=not summary.ok)
    return 0 if summary.ok else 1

"""``delit encode`` (shards -> latent cache) and ``delit train-heads`` (cache -> heads)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.app import app


@app.command("encode")
def encode_cmd(
    vae: str = typer.Option(
        ..., "--vae", help="Wan 2.1 VAE: model folder, .pth/.safetensors, or 'demo'."
    ),
    data: list[str] = typer.Option(
        ..., "--data", help="Shards: folder, .tar file, glob or brace pattern (repeatable)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Latent cache to create, resume or append to (.zarr)."
    ),
    size: int = typer.Option(
        512, "--size", help="Square model input side in pixels (multiple of 8)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", "--batch_size", help="Samples per VAE call."),
    device: str = typer.Option(
        "cpu", "--device", help="cpu, cuda or cuda:N (cuda = this rank's GPU)."
    ),
    dtype: str = typer.Option("float32", "--dtype", help="Encoder precision: float32 or bf16."),
    augment: int = typer.Option(1, "--augment", help="Variants per sample (1 = originals only)."),
    seed: int = typer.Option(0, "--seed", help="Augmentation seed."),
    block_size: int = typer.Option(64, "--block-size", help="Rows per chunk (new stores only)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    compile: bool = typer.Option(
        False, "--compile", help="torch.compile the encoder (minutes to compile; for big caches)."
    ),
) -> None:
    """Encode relit and flat images of SHARDS with the frozen VAE into a Zarr latent cache.

    Resumable (rerun the same command) and appendable (new keys only). Multi-GPU: launch
    with torchrun --nproc_per_node N -m cli encode ... (ranks split the blocks).
    """
    from delit_cache.cache.encode import encode_shards
    from delit_cache.train.distributed import dist_info

    summary = encode_shards(
        vae, data, out, size=size, batch_size=batch_size, device=device, dtype=dtype,
        augment=augment, seed=seed, block_size=block_size, progress=progress, compile=compile,
    )  # fmt: skip
    if dist_info().is_main:
        typer.echo(
            f"{out}: {summary.rows} samples ({summary.planned} new, {summary.skipped} already "
            f"present; this process encoded {summary.encoded} in {summary.seconds:.1f} s)"
        )


@app.command("train-heads")
def train_heads_cmd(
    cache: Path = typer.Option(
        ..., "--cache", "--data_root", "--data-root", help="Latent cache written by delit encode."
    ),
    out: Path = typer.Option(..., "--out", "--output_dir", "--output-dir", help="Run folder."),
    config: str | None = typer.Option(
        None, "--config", help="Training YAML (path, or a name in configs/, e.g. tiny)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimiser steps (overrides epochs)."),
    epochs: int | None = typer.Option(None, "--epochs", "--num_epochs", "--num-epochs"),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "--batch_size", help="Samples per step and process."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    seed: int | None = typer.Option(None, "--seed", help="Init, data order and split seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoints/latest.pt."),
    mixed_precision: str | None = typer.Option(
        None, "--mixed-precision", "--mixed_precision", help="no or bf16."
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    stop_after_step: int | None = typer.Option(None, "--stop-after-step", hidden=True),
) -> None:
    """Train the delit heads on a latent cache (no VAE needed); DDP under torchrun."""
    from delit_cache.train.distributed import dist_info
    from delit_cache.train.trainer import RunOptions, train_heads

    overrides = {
        "steps": steps,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "mixed_precision": mixed_precision,
        "device": device,
    }
    opts = RunOptions(
        cache=cache,
        out=out,
        config=config,
        overrides=overrides,
        resume=resume,
        stop_after_step=stop_after_step,
        progress=progress,
    )
    trainer = train_heads(opts)
    if dist_info().is_main:
        val = ", ".join(f"{k} {v:.4g}" for k, v in sorted(trainer.last_val.items()))
        typer.echo(f"{out}: {trainer.step} steps done; val: {val or 'no val split'}")

"""``delit train-lora`` (decoder adapters on top of trained heads) and ``delit merge-lora``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .options import CheckpointOption, DataOption, ProgressOption, VaeOption


@app.command("train-lora")
def train_lora_cmd(
    checkpoint: CheckpointOption,
    vae: VaeOption,
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", help="Run folder of the adapters.")],
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Latent cache of the same shards and VAE (skips encoding)."),
    ] = None,
    lora_rank: Annotated[
        int | None, typer.Option("--lora-rank", help="Adapter rank (default 16).")
    ] = None,
    lora_alpha: Annotated[
        float | None, typer.Option("--lora-alpha", help="Adapter alpha (default 16).")
    ] = None,
    train_heads: Annotated[
        bool | None,
        typer.Option("--train-heads/--no-train-heads", help="Also train the flat projection."),
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimiser steps (300).")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Samples per step and process (4).")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adapter learning rate.")] = None,
    warmup_steps: Annotated[
        int | None, typer.Option("--warmup-steps", help="Linear warm-up steps (20).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Data order seed.")] = None,
    mixed_precision: Annotated[
        str | None, typer.Option("--mixed-precision", help="no or bf16.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps (auto: each rank's GPU)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from RUN/checkpoints/latest.pt.")
    ] = False,
    progress: ProgressOption = True,
) -> None:
    """Train LoRA adapters on the frozen Wan decoder with a pixel loss on the flat-lit image
    (heads from --checkpoint; activation checkpointing; DDP under torchrun)."""
    from delit_cache.data.shards import expand_shards
    from delit_cache.train.distributed import dist_info
    from delit_cache.train.lora_trainer import LoraRunOptions, train_lora

    expand_shards(data)  # bad --data fails before anything loads
    check_run_folder(out, checkpoint, cache)
    overrides = {
        "lora_rank": lora_rank,
        "lora_alpha": lora_alpha,
        "train_heads": train_heads,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "mixed_precision": mixed_precision,
        "device": device,
    }
    opts = LoraRunOptions(
        checkpoint=checkpoint, vae=vae, data=list(data), out=out, cache=cache,
        overrides=overrides, resume=resume, progress=progress,
    )  # fmt: skip
    trainer = train_lora(opts)
    if dist_info().is_main:
        typer.echo(
            f"{out}: {trainer.step} steps done; last pixel L1 {trainer.last_loss:.4g}; "
            f"adapters in {out / 'lora.safetensors'}"
        )


def check_run_folder(out: Path, checkpoint: str, cache: Path | None) -> None:
    """Refuse a run folder that is the heads it reads (or holds the heads file it would
    overwrite with its own), or is or lies in the cache it reads."""
    from delit_cache.utils.atomic import check_not_input

    heads = [Path(checkpoint)] if checkpoint != "demo" else []
    for path in (out, out / "heads.safetensors", out / "lora.safetensors"):
        check_not_input(path, heads, what="run folder" if path == out else "output")
    if cache is not None:
        check_not_input(out, (cache,), inside=True, what="run folder")


@app.command("merge-lora")
def merge_lora_cmd(
    vae: VaeOption,
    lora: Annotated[Path, typer.Option("--lora", help="Adapter file from delit train-lora.")],
    out: Annotated[Path, typer.Option("--out", help="Merged VAE file to write (.safetensors).")],
) -> None:
    """Fold the adapters into the decoder's weights: a plain VAE file for --vae."""
    from delit_cache.utils.atomic import check_not_input
    from delit_cache.utils.errors import DelitError
    from delit_cache.vae import load_wan_vae, save_codec
    from delit_cache.vae.lora import apply_lora_file, merge_lora

    if out.suffix != ".safetensors":
        raise DelitError(f"{out}: the merged VAE is written as .safetensors")
    check_not_input(out, (vae, lora))
    model = load_wan_vae(vae)
    base = model.fingerprint
    spec = apply_lora_file(model, lora)
    count = merge_lora(model)
    extra = {"merged_lora": str(lora), "base_fingerprint": base, "lora_rank": spec.rank}
    save_codec(model, out, extra)
    typer.echo(f"{out}: VAE with {count} adapters of rank {spec.rank} merged into its decoder")

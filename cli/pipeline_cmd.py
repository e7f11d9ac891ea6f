"""``delit encode`` (shards -> latent cache) and ``delit train-heads`` (cache -> heads)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .options import (
    BatchSizeOption,
    DataOption,
    DeviceOption,
    DtypeOption,
    ProgressOption,
    VaeOption,
    accepts_old_spellings,
)

ENCODE_OLD_SPELLINGS = {"--batch_size": "--batch-size"}
TRAIN_OLD_SPELLINGS = {
    "--data_root": "--cache",
    "--data-root": "--cache",
    "--output_dir": "--out",
    "--output-dir": "--out",
    "--num_epochs": "--epochs",
    "--num-epochs": "--epochs",
    "--batch_size": "--batch-size",
    "--mixed_precision": "--mixed-precision",
}


@app.command("encode", cls=accepts_old_spellings(ENCODE_OLD_SPELLINGS))
def encode_cmd(
    vae: VaeOption,
    data: DataOption,
    out: Annotated[
        Path, typer.Option("--out", help="Latent cache to create, resume or append to (.zarr).")
    ],
    size: Annotated[
        int, typer.Option("--size", help="Square model input side in pixels (multiple of 8).")
    ] = 512,
    batch_size: BatchSizeOption = 8,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
    augment: Annotated[
        int, typer.Option("--augment", help="Variants per sample (1 = originals only).")
    ] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Augmentation seed.")] = 0,
    block_size: Annotated[
        int, typer.Option("--block-size", help="Rows per chunk (new stores only).")
    ] = 64,
    progress: ProgressOption = True,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile", help="torch.compile the encoder (minutes to compile; big caches)."
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            help="Image-decoding threads; blocks are then written in the background "
            "(0: every stage in turn).",
        ),
    ] = 2,
) -> None:
    """Encode relit and flat images of SHARDS with the frozen VAE into a Zarr latent cache.

    Resumable (rerun the same command) and appendable (new keys only). Multi-GPU: launch
    with torchrun --nproc_per_node N -m delit_cli encode ... (ranks split the blocks; cuda and auto
    mean each rank's own GPU).
    """
    from delit_cache.cache.encode import encode_shards
    from delit_cache.train.distributed import dist_info

    summary = encode_shards(
        vae, data, out, size=size, batch_size=batch_size, device=device, dtype=dtype,
        augment=augment, seed=seed, block_size=block_size, progress=progress, compile=compile,
        workers=workers,
    )  # fmt: skip
    if dist_info().is_main:
        typer.echo(
            f"{out}: {summary.rows} samples ({summary.planned} new, {summary.skipped} already "
            f"present; this process encoded {summary.encoded} in {summary.seconds:.1f} s)"
        )


@app.command("train-heads", cls=accepts_old_spellings(TRAIN_OLD_SPELLINGS))
def train_heads_cmd(
    cache: Annotated[Path, typer.Option("--cache", help="Latent cache written by delit encode.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder.")],
    config: Annotated[
        str | None,
        typer.Option("--config", help="Training YAML (path, or a name in configs/, e.g. tiny)."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Optimiser steps (overrides epochs).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Passes over the training split.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Samples per step and process.")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Init, data order and split seed.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from RUN/checkpoints/latest.pt.")
    ] = False,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            help="Fine-tune: start from these heads (file, run folder or 'demo'; same "
            "architecture and VAE) instead of a seeded init.",
        ),
    ] = None,
    mixed_precision: Annotated[
        str | None,
        typer.Option(
            "--mixed-precision",
            help="no, bf16 or auto (bf16 where the GPU or CPU has fast bf16 units).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="auto, cpu, cuda, cuda:N or mps (default: the config's, auto unless it says "
            "otherwise; cuda and auto mean each rank's own GPU).",
        ),
    ] = None,
    progress: ProgressOption = True,
) -> None:
    """Train the delit heads on a latent cache (no VAE needed); DDP under torchrun."""
    from delit_cache.train.distributed import dist_info
    from delit_cache.train.trainer import RunOptions, train_heads
    from delit_cache.utils.atomic import check_not_input

    check_not_input(out, (cache,), inside=True, what="run folder")  # not into the Zarr store
    overrides = {
        "steps": steps,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "init_from": init_from,
        "mixed_precision": mixed_precision,
        "device": device,
    }
    opts = RunOptions(
        cache=cache, out=out, config=config, overrides=overrides, resume=resume, progress=progress
    )
    trainer = train_heads(opts)
    if dist_info().is_main:
        val = ", ".join(f"{k} {v:.4g}" for k, v in sorted(trainer.last_val.items()))
        typer.echo(f"{out}: {trainer.step} steps done; val: {val or 'no val split'}")


@app.command("average-heads")
def average_heads_cmd(
    run: Annotated[Path, typer.Argument(help="A finished run folder of delit train-heads.")],
    out: Annotated[Path, typer.Option("--out", help="New run folder for the averaged heads.")],
    steps: Annotated[
        str | None,
        typer.Option("--steps", help="Comma-separated steps of RUN/checkpoints to average."),
    ] = None,
    last: Annotated[
        int | None, typer.Option("--last", help="Average the N newest step checkpoints.")
    ] = None,
    blend: Annotated[
        Path | None,
        typer.Option(
            "--blend",
            help="Then average half and half with these heads (a run or heads folder or file, "
            "e.g. the heads RUN was fine-tuned from).",
        ),
    ] = None,
) -> None:
    """Average a run's heads over some of its saved steps (checkpoint averaging)."""
    from delit_cache.train.averaging import write_averaged_run
    from delit_cache.utils.errors import DelitError

    if (steps is None) == (last is None):
        raise DelitError("pass exactly one of --steps and --last")
    chosen = None
    if steps is not None:
        try:
            chosen = [int(s) for s in steps.split(",")]
        except ValueError:
            raise DelitError(f"--steps {steps!r}: not a comma-separated list of steps") from None
    folder = write_averaged_run(run, out, steps=chosen, last=last or 0, blend=blend)
    what = f"heads averaged over {len(chosen) if chosen else last} checkpoints"
    typer.echo(f"{folder}: {what}" + (f", then half and half with {blend}" if blend else ""))

"""``delit demo``: synth -> encode -> train-heads -> eval -> report, on the bundled demo codec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .options import DeviceOption


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo_out"),
    train_samples: Annotated[int, typer.Option(help="Synthetic training portraits.")] = 192,
    val_samples: Annotated[int, typer.Option(help="Held-out portraits (another seed).")] = 24,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: the config's).")
    ] = None,
    init_from: Annotated[
        str,
        typer.Option(
            help="Heads to fine-tune: 'demo' (the packaged heads, trained without the held-out "
            "HDRIs), a run folder or heads file, or 'none' (small heads from scratch).",
        ),
    ] = "demo",
    config: Annotated[
        str | None,
        typer.Option(
            help="Training config (default: demo-finetune, or demo with --init-from none)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Synth worker processes.")] = 2,
    seed: Annotated[int, typer.Option(help="Data seed.")] = 0,
    vae: Annotated[str, typer.Option(help="Codec: 'demo' or a Wan 2.1 VAE path.")] = "demo",
    device: DeviceOption = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="Codec precision for encode and eval: float32 (fp32), bfloat16 (bf16), or "
            "auto (bf16 for the demo codec where the hardware has fast bf16, else float32).",
        ),
    ] = "float32",
) -> None:
    """Run the whole job on synthetic portraits and write a report (report.html, report.png).

    Uses the bundled demo codec, a small stand-in for the Wan 2.1 VAE trained on synthetic
    portraits (not for real photos), and fine-tunes the packaged heads on the demo's own
    training portraits (--init-from none: small heads from scratch). About 5 minutes on 2 CPU
    cores.
    """
    from delit_cache.demo import DemoOptions, run_demo
    from delit_cache.evaluate.evaluate import format_table

    metrics = run_demo(
        DemoOptions(
            out=out,
            train_samples=train_samples,
            val_samples=val_samples,
            steps=steps,
            init_from=init_from,
            config=config,
            workers=workers,
            seed=seed,
            vae=vae,
            device=device,
            dtype=dtype,
        )
    )
    typer.echo(format_table(metrics))

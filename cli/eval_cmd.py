"""``delit eval`` (score a checkpoint on raw shards) and ``delit infer`` (delight photos)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from delit_cache.utils.atomic import (
    check_not_input,
    check_output_dir,
    check_output_file,
    write_json,
)

from .app import app
from .options import (
    BatchSizeOption,
    CheckpointOption,
    DataOption,
    DeviceOption,
    DtypeOption,
    FlipAverageOption,
    LoraOption,
    ModelSizeOption,
    VaeOption,
)

MAX_EXAMPLES = 64  # rows of the --report picture (each one a model run and a strip of images)


@app.command("eval")
def eval_command(
    checkpoint: CheckpointOption,
    vae: VaeOption,
    data: DataOption,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the result to this JSON file.")
    ] = None,
    batch_size: BatchSizeOption = 4,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Evaluate the first N samples only.")
    ] = None,
    size: ModelSizeOption = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", help="Also write report.html and report.png (the first examples) here."
        ),
    ] = None,
    examples: Annotated[
        int,
        typer.Option(
            "--examples", min=1, max=MAX_EXAMPLES, help="Samples shown in the --report picture."
        ),
    ] = 4,
    lora: LoraOption = None,
    flip_average: FlipAverageOption = False,
) -> int:
    """Score a checkpoint on raw samples: flat-lit PSNR/SSIM, codec ceiling, three-sphere env
    metrics and light direction, each beside a free baseline."""
    from delit_cache.data.shards import expand_shards, iter_samples
    from delit_cache.evaluate.evaluate import evaluate, format_table
    from delit_cache.infer.delighter import load_vae_and_model

    shards = expand_shards(data)  # bad --data or output paths fail before the VAE is loaded
    if json_path is not None:
        check_output_file(check_not_input(json_path, shards))
    if report is not None:
        check_output_dir(report)  # made when the report is written
        for name in ("report.html", "report.png"):
            check_not_input(report / name, shards)
    model, _, mean_env, info = load_vae_and_model(checkpoint, vae, device, dtype, size, lora=lora)
    size_used = info["model_size"]
    result = evaluate(
        model,
        iter_samples(shards),
        mean_env,
        image_size=size_used,
        batch_size=batch_size,
        limit=limit,
        progress=True,
        flip_average=flip_average,
    )
    result.update(
        checkpoint=info["checkpoint"],
        vae=getattr(model.vae, "source", vae) or vae,
        vae_fingerprint=info.get("vae_fingerprint_given"),
        device=str(next(model.heads.parameters()).device),
        image_size=size_used,
        mean_env_file=info["mean_env"],
        vae_warning=info.get("vae_warning"),
        lora=info.get("lora"),
    )
    typer.echo(format_table(result))
    if json_path is not None:
        write_json(json_path, result)
    if report is not None:
        from delit_cache.evaluate.report import model_examples, write_report

        shown = [s for _, s in zip(range(examples), iter_samples(shards), strict=False)]
        notes = [f"Checkpoint: {info['checkpoint']}.", f"Data: {', '.join(map(str, data))}."]
        paths = write_report(
            report, model_examples(model, shown, size_used, flip_average), result, notes
        )
        typer.echo(f"wrote {paths['html']} and {paths['png']}")
    return 0


@app.command("infer")
def infer_command(
    inputs: Annotated[
        list[Path], typer.Argument(help="Photos, or folders of photos (searched recursively).")
    ],
    checkpoint: CheckpointOption,
    vae: VaeOption,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    batch_size: BatchSizeOption = 4,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "float32",
    size: ModelSizeOption = None,
    lora: LoraOption = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the VAE and heads (slow first batch; CUDA graphs at batch 1 "
            "on CUDA). Pays off over many photos.",
        ),
    ] = False,
    flip_average: FlipAverageOption = False,
) -> int:
    """Delight photos: writes <stem>_flat.png (input size), <stem>_env.exr (128x256 linear
    HDR) and <stem>_env.png (panorama and three spheres) for each input. Photos are scaled so
    the longer side is the model size and padded to a square by replicating their borders.
    Folders are searched skipping the PNGs delit infer itself wrote (marked in their
    metadata), photos named on the command line are always delighted, and a run whose
    outputs would overwrite one of its inputs is refused."""
    from delit_cache.infer.delighter import Delighter, plan_inputs

    check_output_dir(out)  # a regular file in the way fails before the model loads
    plan = plan_inputs(inputs, out)  # and so does an output that would overwrite an input
    delighter = Delighter.from_pretrained(
        checkpoint,
        vae,
        device,
        dtype,
        size,
        batch_size,
        lora=lora,
        compile=compile,
        flip_average=flip_average,
    )
    summary = delighter.run(plan, out, progress=True)
    if summary.all_failed:  # each input had its own error line: exit 2, as for one bad file
        return 2
    typer.echo(summary.line(), err=not summary.ok)
    return 0 if summary.ok else 1

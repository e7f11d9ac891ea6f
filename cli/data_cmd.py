"""Data commands: ``delit pack``, ``delit synth`` and the ``delit data`` group (check, sheet)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app

data_app = typer.Typer(
    help="Inspect training data (shards or a folder layout).", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@app.command("pack")
def pack_cmd(
    folder: Path = typer.Argument(
        ..., help="folder with relit/, flat/, env/ (+ mask/, normal/, meta/)"
    ),
    out: Path = typer.Option(..., "--out", help="output folder for shard-XXXXXX.tar"),
    shard_size: int = typer.Option(1000, "--shard-size", help="samples per shard"),
) -> None:
    """Pack a folder layout into webdataset shards (checks every sample first)."""
    from delit_cache.data.pack import pack_folder

    shards = pack_folder(folder, out, shard_size=shard_size)
    typer.echo(f"wrote {len(shards)} shards to {out}")


@app.command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", help="output folder for shard-XXXXXX.tar"),
    n: int = typer.Option(..., "--n", help="number of samples"),
    size: int = typer.Option(512, "--size", help="image side in pixels"),
    hdri_dir: Path | None = typer.Option(None, "--hdri-dir", help="HDRIs (.exr/.hdr) to mix in"),
    seed: int = typer.Option(0, "--seed", help="dataset seed (sample i uses (seed, i))"),
    workers: int = typer.Option(1, "--workers", help="worker processes (1 torch thread each)"),
    shard_size: int = typer.Option(1000, "--shard-size", help="samples per shard"),
    hdris: str | None = typer.Option(
        None, "--hdris", help="comma-separated HDRI stems to use (default: all in the folder)"
    ),
    exclude_hdris: str | None = typer.Option(
        None, "--exclude-hdris", help="comma-separated HDRI stems to leave out (a held-out split)"
    ),
    p_hdri: float = typer.Option(
        0.5, "--p-hdri", help="probability of HDRI lighting per sample (1: HDRIs only)"
    ),
    p_other_background: float = typer.Option(
        0.0,
        "--p-other-background",
        help="probability that the background shows another env map than the light's",
    ),
    p_mirror: float = typer.Option(
        0.0, "--p-mirror", help="probability of mirroring an HDRI left-right"
    ),
    max_tilt: float = typer.Option(
        0.0, "--max-tilt", help="tilt HDRIs up or down by up to this many degrees (0-45)"
    ),
    indoor_layout: str = typer.Option(
        "ceiling",
        "--indoor-layout",
        help="procedural rooms: 'ceiling' (equal ceiling lamps 45-80 deg up) or 'one-source'"
        " (one dominant lamp or window at any height)",
    ),
) -> None:
    """Render synthetic portraits under HDRI and procedural lighting into shards."""
    from delit_cache.synth.writer import synth

    def names(value: str | None) -> list[str]:
        return [s.strip() for s in (value or "").split(",") if s.strip()]

    shards = synth(
        out,
        n,
        size,
        hdri_dir,
        seed,
        workers,
        shard_size,
        hdris=names(hdris) if hdris is not None else None,
        exclude_hdris=names(exclude_hdris),
        p_hdri=p_hdri,
        p_other_background=p_other_background,
        p_mirror=p_mirror,
        max_tilt_deg=max_tilt,
        indoor_layout=indoor_layout,
    )
    typer.echo(f"wrote {n} samples in {len(shards)} shards to {out}")


@data_app.command("check")
def check_cmd(
    path: str = typer.Argument(..., help="shards (dir, tar, glob, brace pattern) or a data folder"),
) -> None:
    """Read every sample and list every problem; exit code 1 if there is any."""
    from delit_cache.data.check import check

    report = check(path)
    for line in report.problems:
        typer.echo(line)
    typer.echo(report.summary())
    if report.problems:
        raise typer.Exit(code=1)


@data_app.command("sheet")
def sheet_cmd(
    shards: str = typer.Argument(
        ..., help="shards (dir, tar, glob, brace pattern) or a data folder"
    ),
    out: Path = typer.Option(..., "--out", help="output PNG"),
    n: int = typer.Option(8, "--n", min=1, help="number of samples (rows)"),
    height: int = typer.Option(256, "--height", min=1, help="row height in pixels"),
) -> None:
    """Write a contact sheet: relit | flat | env (tone-mapped) | normals, one row per sample."""
    from delit_cache.data.check import FOLDER_KINDS, is_folder_layout, iter_folder
    from delit_cache.data.shards import expand_shards, iter_samples
    from delit_cache.data.sheet import contact_sheet
    from delit_cache.utils.atomic import check_not_input, check_output_file

    if is_folder_layout(shards):  # a sample's own file must not become the sheet
        check_not_input(out, [Path(shards) / kind for kind in FOLDER_KINDS], inside=True)
        samples = iter_folder(shards, [])
    else:
        shard_list = expand_shards(shards)
        check_not_input(out, shard_list)
        samples = iter_samples(shard_list)
    check_output_file(out, suffixes=(".png",))
    rows = contact_sheet(samples, out, n=n, height=height)
    typer.echo(f"wrote {out} ({rows} samples)")

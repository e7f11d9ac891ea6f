"""``delit envmetrics`` and ``delit envshow``: score and look at HDR environment maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from delit_cache.utils.atomic import check_not_input, check_output_file, write_json

from .app import app

SPHERE_NAMES = ("diffuse", "matte", "mirror")
REFERENCE_SPHERES = ("diffuse", "matte_silver", "mirror")
PROTOCOLS = ("delit", "diffusionlight")


def _format_table(scores: dict, names: tuple[str, ...] = SPHERE_NAMES) -> str:
    lines = [f"{'sphere':<12} {'si-RMSE':>9} {'angular':>9} {'nRMSE':>9}"]
    for name in names:
        s = scores[name]
        lines.append(
            f"{name:<12} {s['si_rmse']:>9.4f} {s['angular_deg']:>8.2f}° {s['nrmse']:>9.4f}"
        )
    if "light_pairs" in scores:
        lines.append(f"dominant-light error (EnvMapNet, up to 15 lights): {_light(scores)}")
    else:
        lines.append(f"light direction error: {scores['light_dir_deg']:.2f}°")
    return "\n".join(lines)


def _light(scores: dict) -> str:
    if scores["light_pairs"] == 0:
        return "no score (a map has no detected light)"
    return f"{scores['light_dir_deg']:.2f}°"


@app.command("envmetrics")
def envmetrics(
    pred: Annotated[Path, typer.Argument(help="predicted env map (.exr or .hdr)")],
    gt: Annotated[Path, typer.Argument(help="ground-truth env map (.exr or .hdr)")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the scores to this JSON file")
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="delit: delit's own sphere metrics; diffusionlight: the published protocol "
            "(DiffusionLight/StyleLight's renderer and scores, EnvMapNet's light error)",
        ),
    ] = "delit",
) -> None:
    """Score PRED against GT with the three-sphere protocol (both resampled to 128x256)."""
    from delit_cache.lighting.envmap import ENV_SIZE, load_env, require_light
    from delit_cache.utils.errors import DelitError

    if protocol not in PROTOCOLS:
        raise DelitError(f"--protocol {protocol}: must be one of {', '.join(PROTOCOLS)}")
    if json_out is not None:
        check_not_input(json_out, (pred, gt))
    size = ENV_SIZE if protocol == "delit" else None  # diffusionlight box-resizes itself
    # a black map leaves every score undefined (0/0): refused rather than scored as NaN
    pred_env, gt_env = (require_light(load_env(p, size=size), p) for p in (pred, gt))
    if protocol == "delit":
        from delit_cache.lighting.sphere_metrics import sphere_metrics

        scores = sphere_metrics(pred_env, gt_env)
        typer.echo(_format_table(scores))
    else:
        from delit_cache.lighting.protocol import diffusionlight_metrics

        scores = diffusionlight_metrics(pred_env, gt_env)
        typer.echo(_format_table(scores, REFERENCE_SPHERES))
    if json_out is not None:
        write_json(json_out, scores)
        typer.echo(f"wrote {json_out}")


@app.command("envshow")
def envshow(
    env: Annotated[Path, typer.Argument(help="env map (.exr or .hdr)")],
    out: Annotated[
        Path | None, typer.Option("--out", help="output PNG (default: <stem>_show.png beside ENV)")
    ] = None,
) -> None:
    """Write a PNG with the tone-mapped panorama beside the diffuse, matte and mirror spheres."""
    from delit_cache.data.imageio import write_png
    from delit_cache.lighting.envmap import load_env
    from delit_cache.lighting.envshow import env_figure

    target = out if out is not None else env.with_name(f"{env.stem}_show.png")
    check_output_file(check_not_input(target, (env,)), suffixes=(".png",))
    write_png(target, env_figure(load_env(env)))
    typer.echo(f"wrote {target}")

"""``delit cache verify``: check every block of a latent cache against its digests, and count
the blocks not encoded yet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app

cache_app = typer.Typer(
    name="cache", help="Inspect a latent cache written by delit encode.", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")


@cache_app.command("verify")
def verify_cmd(
    cache: Annotated[Path, typer.Argument(help="Latent cache (.zarr) written by delit encode.")],
) -> int:
    """Report every damaged block (deleted, truncated or altered chunk) and how many blocks
    are not encoded yet (an interrupted or failed encode); exit 1 if any."""
    from delit_cache.cache.store import damage_report, pending_report

    damage, blocks, checked = damage_report(cache)
    pending, planned = pending_report(cache)
    for d in damage:
        typer.echo(f"{cache}: {d}")
    how = "against their digests" if checked else "for readable chunks only (no digests)"
    bad = len({d.block for d in damage})
    typer.echo(f"{cache}: {blocks} block(s) checked {how}; {bad} damaged")
    if pending:
        typer.echo(f"{cache}: {pending} of {planned} blocks not encoded yet (rerun delit encode)")
    if bad:
        typer.echo(f"rerun delit encode on {cache} to re-encode the damaged blocks", err=True)
    return 1 if bad or pending else 0

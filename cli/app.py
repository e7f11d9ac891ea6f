"""The ``delit`` typer app and its entry point.

Each command group lives in its own module and registers itself on ``app`` when
imported; ``main`` imports them all, runs the app and turns a ``DelitError`` into
one ``error: ...`` line on stderr with exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import click
import typer

from delit_cache.utils.errors import DelitError
from delit_cache.utils.logs import NORMAL, QUIET, VERBOSE, configure_logging

app = typer.Typer(
    name="delit",
    help="Delight portraits: a flat-lit image and an HDR environment map in one forward pass.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def log_level(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also log debugging details.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")
    ] = False,
) -> None:
    """Delight portraits: a flat-lit image and an HDR environment map in one forward pass."""
    if verbose and quiet:
        raise DelitError("-v/--verbose and -q/--quiet exclude each other")
    configure_logging(VERBOSE if verbose else QUIET if quiet else NORMAL)


# Modules that add commands to ``app`` (each one calls ``@app.command`` at import).
COMMAND_MODULES = (
    "cli.vae_cmd",
    "cli.lighting_cmd",
    "cli.data_cmd",
    "cli.pipeline_cmd",
    "cli.eval_cmd",
    "cli.demo_cmd",
    "cli.cache_cmd",
)


def load_commands() -> typer.Typer:
    """Import every command module so that its commands are registered; return the app."""
    for name in COMMAND_MODULES:
        importlib.import_module(name)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run ``delit`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    load_commands()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = app(args=args, prog_name="delit", standalone_mode=False)
    except DelitError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 2
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    else:
        code = result if isinstance(result, int) else 0
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()

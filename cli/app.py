"""The ``delit`` typer app and its entry point.

Each command group lives in its own module and registers itself on ``app`` when
imported; ``main`` imports them all, runs the app and turns a ``DelitError`` or a
usage error (missing option, bad value, unknown command) into one ``error: ...`` line on
stderr with exit code 2. Exit codes: 0 done, 1 some inputs failed, 2 usage or input error,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

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


# Modules that add commands to ``app`` (each one calls ``@app.command`` at import), relative
# to this package (``cli`` in the source tree, ``delit_cli`` once installed).
COMMAND_MODULES = (
    ".vae_cmd",
    ".lighting_cmd",
    ".data_cmd",
    ".pipeline_cmd",
    ".eval_cmd",
    ".demo_cmd",
    ".cache_cmd",
    ".lora_cmd",
)


def load_commands() -> typer.Typer:
    """Import every command module so that its commands are registered; return the app."""
    for name in COMMAND_MODULES:
        importlib.import_module(name, __package__)
    return app


def _report_click_error(exc: typer.TyperException) -> int:
    """One ``error:`` line for a click error (exit 2); bare ``delit`` prints the help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        typer.echo(exc.format_message(), err=True)
        return 2
    message = " ".join(exc.format_message().split())
    typer.echo(f"error: {message} (see --help)", err=True)
    return 2


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failure: Python's MemoryError, torch's (CUDA) OutOfMemoryError, or the
    CPU allocator's RuntimeError."""
    text = str(exc)
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in text
        or "out of memory" in text.lower()
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``delit`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code. Ctrl-C,
    from start-up on, is one ``interrupted`` line and exit code 130."""
    try:
        load_commands()
        code = _run(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        code = 130
    if argv is None:
        sys.exit(code)
    return code


def _run(args: list[str]) -> int:
    """The app on ``args``; the exit code, with a ``DelitError``, a usage error, an OS error
    or running out of memory reported in one ``error:`` line."""
    try:
        result = app(args=args, prog_name="delit", standalone_mode=False)
    except DelitError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except OSError as exc:  # an output that cannot be created, a full disk, no permission
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        first = " ".join(str(exc).split())[:160]
        typer.echo(f"error: out of memory ({first}); lower --batch-size or --size", err=True)
        return 2
    except typer.Abort:  # click's form of a Ctrl-C while a command runs
        typer.echo("interrupted", err=True)
        return 130
    except typer.TyperException as exc:  # typer's bundled click: ClickException, UsageError
        return _report_click_error(exc)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    main()

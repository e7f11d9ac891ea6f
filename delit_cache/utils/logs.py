"""Logging and progress bars of the library.

Every module logs to a child of the ``delit`` logger (``get_logger(__name__)``); the
library adds no handler, the CLI sets one up (``configure_logging``). Progress bars go to
stderr and stay off when stderr is not a terminal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

LOGGER_NAME = "delit"
QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG


def get_logger(module: str) -> logging.Logger:
    """The ``delit`` child logger of a module (``delit_cache.demo`` -> ``delit.demo``)."""
    return logging.getLogger(LOGGER_NAME + module.removeprefix("delit_cache"))


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (progress bars are drawn only then)."""
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(total: int | None, unit: str, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr; off unless ``enabled`` and stderr is a terminal."""
    return tqdm(
        total=total,
        unit=unit,
        file=sys.stderr,
        disable=not (enabled and stderr_is_terminal()),
        dynamic_ncols=True,
        **kwargs,
    )


@contextmanager
def logging_beside_bars() -> Iterator[None]:
    """Within this block ``delit`` log lines are printed above any progress bar, not into it."""
    with logging_redirect_tqdm(loggers=[logging.getLogger(LOGGER_NAME)]):
        yield


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: int = NORMAL) -> None:
    """Send ``delit`` log records of ``level`` and above to stderr as plain lines (CLI only)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)

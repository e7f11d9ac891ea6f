"""Capture what a C library prints (file descriptors 1 and 2) while it runs.

OpenEXR's C core prints its own lines on stderr before it fails on a damaged file, and its
Python binding one more on stdout; the CLI promises one ``error:`` line and a clean stdout.
``captured_output`` points fds 1 and 2 (and ``sys.stdout``/``sys.stderr``) at temporary
buffers for the block and hands back the text: the caller folds it into its ``DelitError``
when the call failed, and ``replay`` writes it to stderr when the call worked, so nothing is
lost. Blocks are serialised by a lock (the descriptors belong to the whole process).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

_FD_LOCK = threading.Lock()


@dataclass
class Captured:
    """Text printed inside a ``captured_output`` block (set when the block ends)."""

    text: str = ""

    def lines(self) -> list[str]:
        """The non-empty lines, stripped."""
        return [ln.strip() for ln in self.text.splitlines() if ln.strip()]

    def replay(self) -> None:
        """Write the captured text to the real stderr."""
        if self.text:
            sys.stderr.write(self.text)
            sys.stderr.flush()


@contextlib.contextmanager
def _fd_to_file(fd: int, sink) -> Iterator[None]:
    """Point ``fd`` at ``sink`` (a real file) for the block; no-op if ``fd`` is not open."""
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    try:
        os.dup2(sink.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Capture fds 1 and 2 and ``sys.stdout``/``sys.stderr`` for the block (see the module)."""
    captured = Captured()
    with _FD_LOCK, tempfile.TemporaryFile() as sink:
        py = io.StringIO()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.flush()
        try:
            with (
                _fd_to_file(1, sink),
                _fd_to_file(2, sink),
                contextlib.redirect_stdout(py),
                contextlib.redirect_stderr(py),
            ):
                yield captured
        finally:
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace") + py.getvalue()

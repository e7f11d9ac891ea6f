"""Atomic file writes: write to a temp file in the target folder, then rename into place.

A reader never sees a half-written file, and an interrupted write leaves only the old file
(or nothing) behind. The file gets the permissions a plain write would give it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from delit_cache.utils.errors import DelitError


def _new_file_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would give: the existing file's, else 0666 less the umask
    (``mkstemp`` makes 0600 files)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def make_dir(path: str | Path) -> Path:
    """``mkdir -p path``; a regular file on the way is ``NotADirectoryError`` naming ``path``
    (``mkdir`` itself says "File exists")."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
    return path


def writable_dir(path: str | Path) -> Path:
    """``make_dir(path)``, then ``OSError`` naming ``path`` unless a file can be made in it
    (read-only mounts, permissions, a full disk): before a run's first output, not after."""
    path = make_dir(path)
    os.unlink(_temp_file(path, ".write-probe.", ""))
    return path


def _temp_file(folder: Path, prefix: str, suffix: str) -> Path:
    """A new empty file in ``folder``; ``OSError`` naming the folder when none can be made."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    except OSError as exc:  # not writable, gone, full
        raise OSError(
            exc.errno, f"cannot write into this folder ({exc.strerror})", str(folder)
        ) from None
    os.close(fd)
    return Path(tmp)


def check_output_dir(path: str | Path) -> Path:
    """Refuse (``NotADirectoryError`` naming ``path``) an output folder that is a file or lies
    under one, without creating anything: commands call it before their work."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
            break
    return path


def check_output_file(path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse (``OSError`` naming it) an output file that is a folder or lies under a file,
    without creating anything: commands call it before their work, so a bad path fails
    first and a failed run leaves no empty folder behind. With ``suffixes`` (the formats
    the command writes), another extension is a ``DelitError``."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise DelitError(
            f"{path}: this output is written as {' or '.join(suffixes)}; use that extension"
        )
    check_output_dir(path.parent)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    return path


def _is_or_under(path: Path, other: Path) -> tuple[bool, bool]:
    """(``path`` is ``other``, ``path`` lies inside ``other``), by any spelling or link."""
    if path.exists() and other.exists() and os.path.samefile(path, other):
        return True, False
    p, o = path.resolve(), other.resolve()
    return p == o, o in p.parents


def check_not_input(
    out: str | Path, inputs: Iterable[str | Path], inside: bool = False, what: str = "output"
) -> Path:
    """Refuse (``DelitError`` naming both paths) an output that is one of ``inputs`` (any
    spelling, symlink or hard link) or, with ``inside``, lies inside one of them: commands
    call it before their work, so an output never overwrites or lands in what they read."""
    out = Path(out)
    for item in map(Path, inputs):
        same, under = _is_or_under(out, item)
        if same:
            raise DelitError(f"{out}: this {what} is the input {item}; choose another path")
        if under and inside:
            raise DelitError(
                f"{out}: this {what} lies inside the input {item}; choose a path outside it"
            )
    return out


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temp name keeps the suffix of ``path`` so that writers that choose a format by
    extension (PIL, OpenEXR) still work.
    """
    path = check_output_file(path)
    make_dir(path.parent)
    tmp_path = _temp_file(path.parent, f".{path.stem}.", f".tmp{path.suffix}")
    mode = _new_file_mode(path)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # after the writer: some (safetensors) make a new 0600 file
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename == str(tmp_path):  # name the file itself
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield ``path.partial``, a fresh empty folder beside ``path`` (one a killed writer left
    is removed first); on success it is renamed to ``path``, on error removed. A folder that
    cannot be made is ``OSError`` naming ``path``, not the temp name."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        yield partial
        partial.rename(path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_json(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; return the path. NaN and
    Infinity are not JSON: a value that holds one raises ``ValueError`` (write None)."""
    path = Path(path)
    text = json.dumps(data, indent=2, allow_nan=False)  # before the file is made
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path

"""``delit data check``: read every sample of shards or of a folder layout and list problems.

Folder layout (the input of ``delit pack``)::

    DIR/relit/<stem>.png|.jpg|.jpeg    the photo (required)
    DIR/flat/<stem>.png|.jpg|.jpeg     flat-lit target (required)
    DIR/env/<stem>.exr|.hdr            linear HDR env map, 2:1 (required)
    DIR/mask/<stem>.png                subject mask (optional)
    DIR/normal/<stem>.exr              normals (optional)
    DIR/meta/<stem>.json               metadata (optional)

Files are matched by stem. A problem is one line ``<key or file>: <what is wrong>``: an
unreadable file, a missing partner, a size mismatch between relit/flat/mask/normal,
non-finite or negative HDR values, an env map with no light (all 0) or that is not 2:1, or a
duplicate key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from delit_cache.data.shards import (
    REQUIRED_FIELDS,
    decode_png,
    decode_sample,
    expand_shards,
    raw_samples,
)
from delit_cache.data.tarscan import DamagedShard
from delit_cache.utils.errors import DelitError

LDR_EXTS = (".png", ".jpg", ".jpeg")
FOLDER_KINDS: dict[str, tuple[str, ...]] = {
    "relit": LDR_EXTS,
    "flat": LDR_EXTS,
    "env": (".exr", ".hdr"),
    "mask": (".png",),
    "normal": (".exr",),
    "meta": (".json",),
}
REQUIRED_KINDS = ("relit", "flat", "env")


@dataclass
class CheckReport:
    """Result of a check: number of samples read and one line per problem."""

    n_samples: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.n_samples} samples, {len(self.problems)} problems"


def sample_problems(sample: dict[str, Any]) -> list[str]:
    """Problems of one decoded sample (see ``shards.decode_sample``), without the key prefix."""
    out: list[str] = []
    hw = tuple(sample["relit"].shape[-2:])
    for name in ("flat", "mask", "normal"):
        x = sample.get(name)
        if x is not None and tuple(x.shape[-2:]) != hw:
            out.append(
                f"size mismatch: relit is {hw[0]}x{hw[1]}, {name} is {x.shape[-2]}x{x.shape[-1]}"
            )
    env = sample["env"]
    if not torch.isfinite(env).all():
        out.append(f"env has {int((~torch.isfinite(env)).sum())} non-finite values")
    elif (env < 0).any():
        out.append(f"env has {int((env < 0).sum())} negative values (min {float(env.min()):.3g})")
    elif not (env > 0).any():
        out.append("env holds no light (every value is 0)")
    h, w = env.shape[-2:]
    if w != 2 * h:
        out.append(f"env is {h}x{w}, not 2:1 equirectangular")
    normal = sample.get("normal")
    if normal is not None and not torch.isfinite(normal).all():
        out.append("normal map has non-finite values")
    return out


# ----------------------------------------------------------------------------------------------
# Shards


def check_shards(shards: str | Path | list[str | Path]) -> CheckReport:
    """Read and check every sample of the shards named by ``shards`` (dir, tar, glob, braces)."""
    report = CheckReport()
    seen: set[str] = set()
    for shard in expand_shards(shards):
        try:
            for raw in raw_samples([shard]):
                report.n_samples += 1
                _check_raw(raw, shard, seen, report.problems)
        except DamagedShard as exc:  # a broken tar: report and go on with the next shard
            report.problems.append(str(exc))
    return report


def _check_raw(raw: dict[str, Any], shard: Path, seen: set[str], problems: list[str]) -> None:
    key = raw.get("__key__", "?")
    where = f"{shard.name}:{key}"
    if key in seen:
        problems.append(f"{where}: duplicate key")
    seen.add(key)
    missing = [f"{key}.{f}" for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        problems.append(f"{where}: missing partner {', '.join(missing)}")
        return
    try:
        sample = decode_sample(raw)
    except DelitError as exc:
        problems.append(f"{where}: unreadable ({_short(exc.__cause__ or exc)})")
        return
    problems.extend(f"{where}: {p}" for p in sample_problems(sample))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


# ----------------------------------------------------------------------------------------------
# Folder layout


def is_folder_layout(path: str | Path) -> bool:
    """True if ``path`` is a directory with ``relit/``, ``flat/`` and ``env/`` sub-folders."""
    p = Path(path)
    return p.is_dir() and all((p / k).is_dir() for k in REQUIRED_KINDS)


def scan_folder(root: str | Path) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """Match the files of a folder layout by stem.

    Returns ``(samples, problems)``: ``samples[stem][kind] = path`` for every stem that has all
    required kinds, and the problems found from names alone (missing partner, two files with
    one stem). Raises ``DelitError`` if ``root`` is not a folder layout.
    """
    root = Path(root)
    if not is_folder_layout(root):
        raise DelitError(f"{root}: not a data folder (needs relit/, flat/ and env/ sub-folders)")
    files: dict[str, dict[str, Path]] = {}
    problems: list[str] = []
    for kind, exts in FOLDER_KINDS.items():
        folder = root / kind
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in exts or f.name.startswith("."):
                continue
            entry = files.setdefault(f.stem, {})
            if kind in entry:
                problems.append(f"{f}: two {kind} files with stem {f.stem!r} ({entry[kind].name})")
                continue
            entry[kind] = f
    complete: dict[str, dict[str, Path]] = {}
    for stem in sorted(files):
        entry = files[stem]
        missing = [k for k in REQUIRED_KINDS if k not in entry]
        if missing:
            have = ", ".join(str(p.relative_to(root)) for p in entry.values())
            problems.append(f"{have}: missing partner {'/'.join(missing)}/{stem}.*")
        else:
            complete[stem] = entry
    return complete, problems


def load_folder_sample(stem: str, paths: dict[str, Path]) -> dict[str, Any]:
    """Decode the files of one folder sample to the ``decode_sample`` dict.

    Raises ``DelitError("<file>: unreadable (...)")`` for the first file that cannot be read.
    """
    from delit_cache.data.imageio import image_to_tensor, read_hdr, read_ldr

    loaders = {
        "relit": lambda p: image_to_tensor(read_ldr(p)),
        "flat": lambda p: image_to_tensor(read_ldr(p)),
        "env": lambda p: image_to_tensor(read_hdr(p, check=False)),
        "mask": lambda p: decode_png(p.read_bytes(), 1),
        "normal": lambda p: image_to_tensor(read_hdr(p, check=False)),
        "meta": _read_json,
    }
    out: dict[str, Any] = {"key": stem, "mask": None, "normal": None, "meta": {}, "source": ""}
    for kind, path in paths.items():
        try:
            out[kind] = loaders[kind](path)
        except DelitError:
            raise
        except Exception as exc:
            raise DelitError(f"{path}: unreadable ({_short(exc)})") from exc
    out["source"] = str(paths["relit"].parent.parent)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return meta


def iter_folder(root: str | Path, problems: list[str]) -> Iterator[dict[str, Any]]:
    """Yield the decodable, problem-free samples of a folder layout; append problems found."""
    samples, scan_problems = scan_folder(root)
    problems.extend(scan_problems)
    for stem, paths in samples.items():
        try:
            sample = load_folder_sample(stem, paths)
        except DelitError as exc:
            problems.append(str(exc))
            continue
        found = sample_problems(sample)
        if found:
            problems.extend(f"{paths['relit'].name} ({stem}): {p}" for p in found)
            continue
        yield sample


def check_folder(root: str | Path) -> CheckReport:
    """Read and check every sample of a folder layout (``DelitError`` when it holds none)."""
    report = CheckReport()
    samples, _ = scan_folder(root)
    for _ in iter_folder(root, report.problems):
        pass
    report.n_samples = len(samples)
    if not samples and not report.problems:  # as for a shard folder without shards
        raise DelitError(f"{root}: no samples (relit/, flat/ and env/ hold no image files)")
    return report


def check(path: str | Path) -> CheckReport:
    """Check a folder layout or shards (a dir of tars, a tar, a glob or a brace pattern)."""
    if is_folder_layout(path):
        return check_folder(path)
    return check_shards(path)

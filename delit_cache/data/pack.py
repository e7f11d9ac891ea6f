"""``delit pack``: turn a folder layout (see ``delit_cache.data.check``) into webdataset shards.

Every sample is decoded, checked and re-encoded in the shard format of ``delit_cache.data.shards``
(relit/flat as 8-bit sRGB PNG, env and normals as half EXR). Shards are written into a hidden
temporary folder inside ``out`` and moved into place only when every sample was good, so a
failed pack leaves no shards behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from delit_cache.data.check import iter_folder, scan_folder
from delit_cache.data.shards import ShardWriter, encode_sample
from delit_cache.utils.errors import DelitError


def ensure_no_shards(out: Path) -> None:
    """Raise ``DelitError`` if ``out`` already holds ``shard-*.tar`` files (never mix datasets)."""
    if out.is_dir() and any(out.glob("shard-*.tar")):
        raise DelitError(f"{out}: already holds shard-*.tar files; choose an empty folder")


def key_for_stem(stem: str) -> str:
    """A webdataset key for a file stem: dots and slashes become underscores."""
    return stem.replace(".", "_").replace("/", "_")


def pack_folder(
    src: str | Path,
    out: str | Path,
    shard_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Pack the folder layout ``src`` into ``out/shard-XXXXXX.tar``; return the shard paths.

    Raises ``DelitError`` naming the first problem (and the count) if any sample is bad; then
    nothing is written. ``progress(n)`` is called after each sample.
    """
    src, out = Path(src), Path(out)
    if shard_size < 1:  # before ``out`` is made
        raise DelitError(f"--shard-size {shard_size}: must be >= 1")
    ensure_no_shards(out)
    stems, _ = scan_folder(src)
    if not stems:
        raise DelitError(f"{src}: no complete samples (relit/, flat/ and env/ matched by stem)")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pack-", dir=out))
    try:
        problems: list[str] = []
        keys: dict[str, str] = {}  # key -> the stem that took it
        with ShardWriter(tmp, shard_size=shard_size) as writer:
            for sample in iter_folder(src, problems):
                key = key_for_stem(sample["key"])
                if key in keys:
                    problems.append(
                        f"stems {keys[key]!r} and {sample['key']!r} both become the key "
                        f"{key!r} (dots and slashes turn into '_'); rename one"
                    )
                    continue
                keys[key] = sample["key"]
                meta = {"source": "pack", "stem": sample["key"], **sample["meta"]}
                writer.write(
                    encode_sample(
                        key, sample["relit"], sample["flat"], sample["env"],
                        sample["mask"], sample["normal"], meta,
                    )
                )  # fmt: skip
                if progress is not None:
                    progress(1)
        if problems:
            hint = "" if problems[0].startswith("stems ") else "; see delit data check"
            raise DelitError(f"{problems[0]} ({len(problems)} problems in {src}{hint})")
        final = []
        for shard in writer.written:
            os.replace(shard, out / shard.name)
            final.append(out / shard.name)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

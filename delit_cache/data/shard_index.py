"""Random access to webdataset shards by sample key (train-lora reads samples in any order).

``ShardIndex(shards)`` reads every tar header once (no image is decoded) and remembers
where each field of each sample lies; ``sample(key, size)`` then reads just those bytes
and decodes them with ``shards.decode_sample``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from delit_cache.data.shards import REQUIRED_FIELDS, decode_sample, expand_shards
from delit_cache.utils.errors import DelitError


def _split(name: str) -> tuple[str, str]:
    """``dir/key.relit.png`` -> (``dir/key``, ``relit.png``) as webdataset splits names."""
    folder, _, base = name.rpartition("/")
    stem, _, field = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), field


class ShardIndex:
    """Where each sample's fields are: key -> (shard, {field: (offset, size)})."""

    def __init__(self, shards: str | Path | Sequence[str | Path]):
        self.entries: dict[str, tuple[Path, dict[str, tuple[int, int]]]] = {}
        for shard in expand_shards(shards):
            try:
                with tarfile.open(shard) as tar:
                    members = [m for m in tar if m.isfile()]
            except (tarfile.TarError, OSError) as exc:
                raise DelitError(f"{shard}: unreadable shard ({exc})") from None
            for m in members:
                key, field = _split(m.name)
                entry = self.entries.setdefault(key, (shard, {}))
                if entry[0] != shard:
                    raise DelitError(f"{shard}: sample {key} is also in {entry[0]}")
                entry[1][field] = (m.offset_data, m.size)
        for key, (shard, fields) in self.entries.items():
            missing = sorted(set(REQUIRED_FIELDS) - set(fields))
            if missing:
                raise DelitError(f"{shard}: sample {key} lacks {', '.join(missing)}")
        if not self.entries:
            raise DelitError(f"{shards}: no samples")
        self.keys = sorted(self.entries)

    def __len__(self) -> int:
        return len(self.keys)

    def sample(self, key: str, size: int | None = None) -> dict[str, Any]:
        """The decoded sample ``key`` (``decode_sample``'s dict), images resized to ``size``."""
        shard, fields = self.entries[key]
        raw: dict[str, Any] = {"__key__": key, "__url__": str(shard)}
        with open(shard, "rb") as f:
            for field, (offset, nbytes) in fields.items():
                f.seek(offset)
                raw[field] = f.read(nbytes)
        return decode_sample(raw, size)

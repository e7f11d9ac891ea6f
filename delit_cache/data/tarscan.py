"""Find where a tar shard is damaged, from its headers alone.

A shard cut in the middle of a member (a copy that stopped, a full disk) or with garbage in
place of a header is reported as one ``DamagedShard`` line that names the shard, the member
where reading stopped, how many samples before it are intact and the last of them. The scan
seeks from header to header, so it costs one 512-byte read per member, not a pass over the
data. Python's ``tarfile`` takes a bad header after the first one for the end of the archive;
the scan does not: an uncompressed shard must end with the zero blocks of a tar trailer.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from delit_cache.utils.errors import DelitError

MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]+)$")  # <key>.<field>, key without a dot
BLOCK = 512


class DamagedShard(DelitError):
    """A shard that cannot be read to its end (truncated or corrupt tar)."""


@dataclass
class ShardScan:
    """What the headers of one shard say (see :func:`scan_shard`)."""

    path: Path
    keys: list[str] = field(default_factory=list)  # sample keys in order (intact ones only)
    damage: str | None = None  # why reading stopped early; None: the shard reads to its end

    def error(self, read: int | None = None) -> DamagedShard:
        """The one-line error for a damaged shard (``read``: samples a reader got before)."""
        count = len(self.keys) if read is None else read
        if count:
            before = f"{count} intact sample{'s' if count > 1 else ''} before it, the last is "
            before += repr(self.keys[count - 1])
        else:
            before = "no intact sample before it"
        return DamagedShard(
            f"{self.path}: truncated or damaged tar shard ({self.damage}); {before}"
        )


def scan_shard(path: str | Path, required: tuple[str, ...] = ()) -> ShardScan:
    """Sample keys of a tar shard from its headers, and the damage that stopped the scan.

    When the shard is damaged, the sample that was being read is not among ``keys``; after a
    cut at a member boundary, the last sample counts as intact if it has every ``required``
    field.
    """
    scan = ShardScan(Path(path))
    fields: dict[str, set[str]] = {}
    member = None
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                match = MEMBER.match(member.name) if member.isfile() else None
                if match:
                    fields.setdefault(match.group(1), set()).add(match.group(2).lower())
            scan.damage = _trailer_problem(tar)
    except (tarfile.TarError, OSError, EOFError) as exc:
        where = f"after member {member.name!r}" if member is not None else "at its start"
        scan.damage = f"{_one_line(exc)} {where}"
        if fields:
            fields.pop(next(reversed(fields)))
    else:
        if scan.damage and fields:
            last = next(reversed(fields))
            if not set(required) <= fields[last]:
                fields.pop(last)
    scan.keys = list(fields)
    return scan


def _one_line(exc: BaseException) -> str:
    """``tarfile``'s reason on one line (of its per-compression list, the plain tar's entry)."""
    text = str(exc)
    if "- method tar:" in text:
        text = text.split("- method tar:", 1)[1]
    quoted = re.fullmatch(r"\s*\w+\('(.*)'\)\s*", text, re.DOTALL)  # "ReadError('empty file')"
    text = quoted.group(1) if quoted else text
    return " ".join(text.split()) or type(exc).__name__


def _trailer_problem(tar: tarfile.TarFile) -> str | None:
    """Why an uncompressed tar does not end in a zero block where its members end (or None)."""
    raw = tar.fileobj
    if not isinstance(raw, io.BufferedReader) or tar.offset == 0:
        return None
    raw.seek(tar.offset)
    block = raw.read(BLOCK)
    if not block:
        return f"no end-of-archive blocks: cut at byte {tar.offset}, a member boundary"
    if block.count(0) != len(block):
        return f"unreadable member header at byte {tar.offset}"
    return None

"""Damage detection for the latent cache: per-block sha256 digests of every array.

When ``write_block`` finishes a block it records, in the ``block_sha256`` array (one string
per block, its own chunk), the sha256 of the block's decoded values of every checked array
(latents, env, key, source, variant) as JSON, then sets the block's done flag. A deleted
chunk reads back as the fill value, a truncated or altered one fails to decode or decodes to
other values: either way the digest no longer matches, and the block is reported by name.

Caches written before digests existed have no ``block_sha256`` array; they still load (with
a warning that they cannot be verified), and a scan of them only checks that chunks decode.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import zarr

SHA_ARRAY = "block_sha256"
META_ARRAYS = ("key", "source", "variant")


@dataclass(frozen=True)
class Damage:
    """One damaged block: ``array`` of ``block`` is ``why`` (unreadable, or digest mismatch)."""

    block: int
    array: str
    why: str

    def __str__(self) -> str:
        return f"block {self.block}, array {self.array}: {self.why}"


def has_digests(group: zarr.Group) -> bool:
    """Whether the store records per-block digests (caches written since they exist)."""
    return SHA_ARRAY in group


def digest(values: np.ndarray) -> str:
    """sha256 hex of an array's decoded values (strings joined by NUL, numbers as bytes)."""
    values = np.asarray(values)
    if values.dtype.kind in "OUT":
        data = "\0".join(str(v) for v in values.ravel()).encode()
    else:
        data = np.ascontiguousarray(values).tobytes()
    return hashlib.sha256(data).hexdigest()


def block_slice(group: zarr.Group, block: int) -> slice:
    size = int(group.attrs["block_size"])
    return slice(block * size, (block + 1) * size)


def read_block(group: zarr.Group, name: str, block: int) -> np.ndarray:
    """Array ``name`` over the rows of ``block`` (raises ``ValueError`` when it cannot decode)."""
    try:
        return group[name][block_slice(group, block)]
    except Exception as exc:  # zarr/numcodecs raise many kinds on a damaged chunk
        raise ValueError(f"chunk cannot be read ({type(exc).__name__}: {exc})") from None


def recorded(group: zarr.Group, block: int) -> dict[str, str] | None:
    """The digests recorded for ``block`` (None when none are, or they cannot be read)."""
    try:
        text = str(group[SHA_ARRAY][block])
        return json.loads(text) if text else None
    except Exception:
        return None


def check_values(block: int, name: str, values: np.ndarray, want: dict[str, str]) -> list[Damage]:
    """A mismatch of ``values`` (array ``name`` of ``block``) against the digests ``want``."""
    if digest(values) != want.get(name):
        return [Damage(block, name, "digest mismatch (chunk deleted, truncated or altered)")]
    return []


def check_block(group: zarr.Group, block: int, names: tuple[str, ...]) -> list[Damage]:
    """Damage in arrays ``names`` of a done ``block``."""
    want = recorded(group, block) if has_digests(group) else {}
    if want is None:
        return [Damage(block, SHA_ARRAY, "digest record missing or unreadable")]
    found: list[Damage] = []
    for name in names:
        try:
            values = read_block(group, name, block)
        except ValueError as exc:
            found.append(Damage(block, name, str(exc)))
            continue
        if want:
            found += check_values(block, name, values, want)
    return found


def done_flags(group: zarr.Group) -> np.ndarray:
    """The done flag of every planned block (a flag chunk that cannot be read counts as 0)."""
    n_blocks = int(group.attrs["num_rows"]) // int(group.attrs["block_size"])
    flags = np.zeros(n_blocks, dtype=np.uint8)
    arr = group["block_done"]
    for b in range(n_blocks):
        try:
            flags[b] = arr[b]
        except Exception:
            flags[b] = 0
    return flags


def scan(group: zarr.Group, names: tuple[str, ...]) -> list[Damage]:
    """Every damaged array of every done block; plus undecodable plan rows of pending blocks."""
    found: list[Damage] = []
    for block, done in enumerate(done_flags(group)):
        if done:
            found += check_block(group, block, names)
            continue
        for name in META_ARRAYS:
            try:
                read_block(group, name, block)
            except ValueError as exc:
                found.append(Damage(block, name, str(exc)))
    return found


def repair(group: zarr.Group, damage: list[Damage]) -> None:
    """Make the damaged blocks pending again; blocks whose plan rows (key, source, variant)
    are damaged are emptied, so that their samples are planned anew."""
    sl_of = {d.block: block_slice(group, d.block) for d in damage}
    for block, sl in sl_of.items():
        if any(d.block == block and d.array in META_ARRAYS for d in damage):
            n = sl.stop - sl.start
            group["key"][sl] = np.full(n, "", dtype=str)
            group["source"][sl] = np.full(n, "", dtype=str)
            group["variant"][sl] = np.zeros(n, dtype="int16")
        group["block_done"][block] = 0
        if has_digests(group):
            group[SHA_ARRAY][block] = ""

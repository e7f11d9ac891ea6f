"""The latent cache: a Zarr v3 store of frozen-VAE latents and env targets for stage two.

``delit encode`` writes it (see ``delit_cache.cache.encode``); ``delit train-heads`` and
``delit eval`` read it through :class:`LatentCache`. Layout of ``CACHE.zarr`` (one group)::

    relit_latent  float32 [R,16,h,w]      normalised Wan latent of the photo (h = size/8)
    flat_latent   float32 [R,16,h,w]      normalised Wan latent of the flat-lit image
    env           float32 [R,3,128,256]   env target, LINEAR HDR radiance (equirectangular,
                                          area-resampled with envmap.resample_env; the
                                          four-channel encoding is computed at train time)
    key           str     [R]             sample key ("" = unused row); augmented variants
                                          are "<key>#<k>", variant 0 is "<key>" itself
    source        str     [R]             absolute path of the shard the sample came from
    variant       int16   [R]             augmentation variant (0 = original)
    block_sha256  str     [R/S]           JSON {array: sha256 of block b's values}, written
                                          just before the done flag (see cache.integrity)
    block_done    uint8   [R/S]           1 once every array of block b is written

Rows come in blocks of ``S = block_size`` rows; every data array is chunked one block per
chunk (Blosc/zstd), so a block is written by one process in whole-chunk writes (zarr's
local store writes each chunk to a temp file and renames it). A row is *valid* when its key
is non-empty and its block's ``block_done`` flag is 1; the flag is written only after the
block's arrays and digests, so an interrupted encode never counts a half-written block, and a
block damaged later (a chunk deleted, truncated or altered) is found by its digests. Appends start at
the next block boundary (a partly filled last block keeps empty rows).

Group attributes: ``format`` ("delit-latent-cache"), ``format_version``, ``vae_fingerprint``,
``vae_dim``, ``z_dim``, ``image_size``, ``latent_size``, ``encode_dtype`` ("float32" or
"bfloat16": inference must encode in the same precision), ``env_size``, ``env_format``
("linear-hdr"), ``block_size``, ``augment`` (variants per sample), ``augment_seed``,
``num_rows``, ``delit_version``, ``created``, ``updated`` (ISO 8601 UTC). A new store is
built under ``CACHE.zarr.partial`` and renamed into place, so a crash while creating it
leaves no half-made store. Stores written before ``block_sha256`` existed still load, with a
warning that they cannot be verified.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec

from delit_cache import __version__
from delit_cache.cache import integrity
from delit_cache.utils.errors import DelitError
from delit_cache.utils.logs import get_logger

FORMAT = "delit-latent-cache"
FORMAT_VERSION = 1
ENV_SIZE = (128, 256)
DATA_ARRAYS = ("relit_latent", "flat_latent", "env")
VARIANT_SEP = "#"
CHECKED_ARRAYS = (*DATA_ARRAYS, *integrity.META_ARRAYS)
STRUCTURE_ARRAYS = (*CHECKED_ARRAYS, "block_done")  # every cache has these (digests: newer ones)
log = get_logger(__name__)


def _compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def now_iso() -> str:
    """The current UTC time as ISO 8601 (seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def base_key(key: str) -> str:
    """The source sample's key of a (possibly augmented) cache key: ``"a#2" -> "a"``."""
    return key.split(VARIANT_SEP, 1)[0]


def variant_key(key: str, variant: int) -> str:
    """Cache key of augmentation ``variant`` of sample ``key`` (variant 0 is ``key``)."""
    return key if variant == 0 else f"{key}{VARIANT_SEP}{variant}"


@dataclass(frozen=True)
class CacheSpec:
    """What must agree between every block of one cache (checked when a store is reopened)."""

    vae_fingerprint: str  # hex fingerprint of the VAE weights (WanVAE.fingerprint)
    vae_dim: int  # VAE width (96 for the real Wan 2.1 VAE)
    image_size: int  # square model input side in pixels (multiple of 8)
    encode_dtype: str  # "float32" or "bfloat16": precision of the encoder
    augment: int = 1  # variants per sample (1 = no augmentation)
    augment_seed: int = 0  # seed of the augmentation draws
    z_dim: int = 16  # latent channels

    @property
    def latent_size(self) -> int:
        return self.image_size // 8


# ----------------------------------------------------------------------------------------------
# Writing side (used by delit_cache.cache.encode)


def open_store(path: str | Path, spec: CacheSpec, block_size: int) -> zarr.Group:
    """Open the store at ``path`` for appending (creating it if needed), checking ``spec``.

    Raises ``DelitError`` when the store was made with another VAE, image size, encode
    precision or augmentation setting, or is not a delit cache.
    """
    path = Path(path)
    if path.exists():
        group = _open_group(path, mode="r+")
        check_spec(path, dict(group.attrs), spec)
        return group
    if block_size < 1:
        raise DelitError(f"{path}: block size must be >= 1, got {block_size}")
    partial = path.with_name(path.name + ".partial")
    if partial.exists():  # left by an encode killed while creating the store
        shutil.rmtree(partial)
    _create_store(partial, spec, block_size)
    partial.rename(path)
    return _open_group(path, mode="r+")


def check_cache_path(path: str | Path) -> Path:
    """Refuse (``DelitError``) an existing ``path`` that is not a Zarr store: a file, or a
    folder of other files (shards, say), is never taken for or turned into a cache."""
    path = Path(path)
    if not path.exists() or (path / "zarr.json").is_file():
        return path
    if path.is_dir():
        what = "a folder of other files" if any(path.iterdir()) else "an empty folder"
    else:
        what = "a file"
    raise DelitError(
        f"{path}: not a delit latent cache ({what}); pass a new path or an existing cache"
    )


def _open_group(path: Path, mode: str) -> zarr.Group:
    check_cache_path(path)
    try:
        group = zarr.open_group(str(path), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise DelitError(f"{path}: no latent cache here (run delit encode first)") from None
    except Exception as exc:
        raise DelitError(f"{path}: not a readable Zarr store ({exc})") from None
    if group.attrs.get("format") != FORMAT:
        raise DelitError(
            f"{path}: not a delit latent cache (format {group.attrs.get('format')!r}; if it "
            "is left from an encode that crashed in an older delit, delete it and rerun)"
        )
    if group.attrs.get("format_version") != FORMAT_VERSION:
        raise DelitError(
            f"{path}: cache format version {group.attrs.get('format_version')} is not "
            f"supported (expected {FORMAT_VERSION})"
        )
    for name in STRUCTURE_ARRAYS:
        try:
            group[name]
        except Exception as exc:
            reason = "missing" if isinstance(exc, KeyError) else f"unreadable ({exc})"
            raise DelitError(
                f"{path}: array {name!r} is {reason}; the store cannot be repaired in place "
                "(delete it and rerun delit encode)"
            ) from None
    problem = _layout_problem(dict(group.attrs), group["key"].shape[0])
    if problem:
        raise DelitError(
            f"{path}: damaged store attributes ({problem}); delete it and rerun delit encode"
        )
    return group


def _layout_problem(attrs: dict[str, Any], key_rows: int) -> str | None:
    """What is wrong with the attributes that every read relies on (row count, block size,
    sizes), or None: ``zarr.json`` edited by hand or damaged must not end in a traceback."""
    for name in ("block_size", "image_size", "latent_size", "z_dim"):
        value = attrs.get(name)
        if type(value) is not int or value < 1:
            return f"{name} is {value!r}, not a positive integer"
    rows, size = attrs.get("num_rows"), attrs["block_size"]
    if type(rows) is not int or rows < 0 or rows % size:
        return f"num_rows is {rows!r}, not a whole number of blocks of {size} rows"
    if rows > key_rows:
        return f"num_rows {rows} but the arrays hold {key_rows} rows"
    return None


def check_spec(path: Path, attrs: dict[str, Any], spec: CacheSpec) -> None:
    """Raise ``DelitError`` naming the first attribute where the store and ``spec`` differ."""
    checks = (
        ("vae_fingerprint", "VAE (fingerprint)", "use the VAE the cache was made with"),
        ("image_size", "image size", "pass the same --size"),
        ("encode_dtype", "encode precision", "pass the same --dtype"),
        ("augment", "augmentation count", "pass the same --augment"),
        ("augment_seed", "augmentation seed", "pass the same --seed"),
        ("z_dim", "latent channels", "use a Wan 2.1 VAE"),
    )
    for name, what, hint in checks:
        have, want = attrs.get(name), getattr(spec, name)
        if have != want:
            raise DelitError(
                f"{path}: refusing to mix caches: the store holds {what} {have!r}, this run "
                f"has {want!r} ({hint}, or write a new store)"
            )


def _create_store(path: Path, spec: CacheSpec, block_size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(str(path), mode="w-")
    h = spec.latent_size
    shapes = {
        "relit_latent": (spec.z_dim, h, h),
        "flat_latent": (spec.z_dim, h, h),
        "env": (3, *ENV_SIZE),
    }
    for name, tail in shapes.items():
        group.create_array(
            name,
            shape=(0, *tail),
            chunks=(block_size, *tail),
            dtype="float32",
            compressors=_compressor(),
            fill_value=0.0,
        )
    group.create_array("key", shape=(0,), chunks=(block_size,), dtype=str, fill_value="")
    group.create_array("source", shape=(0,), chunks=(block_size,), dtype=str, fill_value="")
    group.create_array("variant", shape=(0,), chunks=(block_size,), dtype="int16", fill_value=0)
    group.create_array(integrity.SHA_ARRAY, shape=(0,), chunks=(1,), dtype=str, fill_value="")
    group.create_array("block_done", shape=(0,), chunks=(1,), dtype="uint8", fill_value=0)
    stamp = now_iso()
    group.attrs.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vae_fingerprint": spec.vae_fingerprint,
            "vae_dim": spec.vae_dim,
            "z_dim": spec.z_dim,
            "image_size": spec.image_size,
            "latent_size": spec.latent_size,
            "encode_dtype": spec.encode_dtype,
            "env_size": list(ENV_SIZE),
            "env_format": "linear-hdr",
            "block_size": block_size,
            "augment": spec.augment,
            "augment_seed": spec.augment_seed,
            "num_rows": 0,
            "delit_version": __version__,
            "created": stamp,
            "updated": stamp,
        }
    )


@dataclass(frozen=True)
class Entry:
    """One planned cache row: ``variant`` of sample ``key`` read from shard ``source``."""

    key: str  # the sample's key in its shard (no variant suffix)
    source: str  # absolute shard path
    variant: int  # 0 = original


def planned_keys(group: zarr.Group) -> set[str]:
    """Every key planned in the store (written or still pending)."""
    n = int(group.attrs["num_rows"])
    keys = group["key"][:n] if n else np.array([], dtype=str)
    return {str(k) for k in keys if k}


def plan_append(group: zarr.Group, entries: Sequence[Entry]) -> range:
    """Give ``entries`` rows at the end of the store (from a block boundary); return the blocks.

    Grows every array, writes the rows' key/source/variant, then records the new row count
    (last, so an interrupted plan is simply redone).
    """
    size = int(group.attrs["block_size"])
    start = int(group.attrs["num_rows"])
    n_blocks = math.ceil(len(entries) / size)
    total = start + n_blocks * size
    if not entries:
        return range(start // size, start // size)
    for name in (*DATA_ARRAYS, "key", "source", "variant"):
        arr = group[name]
        arr.resize((total, *arr.shape[1:]))
    keys = np.full(n_blocks * size, "", dtype=object)
    sources = np.full(n_blocks * size, "", dtype=object)
    variants = np.zeros(n_blocks * size, dtype="int16")
    for i, e in enumerate(entries):
        keys[i] = variant_key(e.key, e.variant)
        sources[i], variants[i] = e.source, e.variant
    group["key"][start:total] = keys.astype(str)
    group["source"][start:total] = sources.astype(str)
    group["variant"][start:total] = variants
    done = group["block_done"]
    done.resize((total // size,))
    done[start // size :] = 0
    if integrity.has_digests(group):
        group[integrity.SHA_ARRAY].resize((total // size,))
        group[integrity.SHA_ARRAY][start // size :] = np.full(n_blocks, "", dtype=str)
    group.attrs["num_rows"] = total
    return range(start // size, total // size)


def pending_blocks(group: zarr.Group) -> list[int]:
    """Blocks planned but not yet written (in order)."""
    size, n = int(group.attrs["block_size"]), int(group.attrs["num_rows"])
    if n == 0:
        return []
    done = group["block_done"][: n // size]
    return [int(b) for b in np.flatnonzero(done == 0)]


def block_rows(group: zarr.Group, block: int) -> list[tuple[int, str, str, int]]:
    """``(row, key, source, variant)`` of the non-empty rows of ``block``."""
    size = int(group.attrs["block_size"])
    lo, hi = block * size, (block + 1) * size
    keys, sources = group["key"][lo:hi], group["source"][lo:hi]
    variants = group["variant"][lo:hi]
    return [
        (lo + i, str(k), str(s), int(v))
        for i, (k, s, v) in enumerate(zip(keys, sources, variants, strict=True))
        if k
    ]


def write_block(group: zarr.Group, block: int, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` (``relit_latent``, ``flat_latent``, ``env``; first dim = rows of the
    block, padded here to whole chunks), then mark the block done."""
    size = int(group.attrs["block_size"])
    lo = block * size
    digests = {}
    for name in DATA_ARRAYS:
        data = np.asarray(arrays[name], dtype=np.float32).reshape(-1, *group[name].shape[1:])
        if data.shape[0] < size:
            pad = np.zeros((size - data.shape[0], *data.shape[1:]), dtype=np.float32)
            data = np.concatenate([data, pad])
        group[name][lo : lo + size] = data
        digests[name] = integrity.digest(data)
    if integrity.has_digests(group):
        for name in integrity.META_ARRAYS:
            digests[name] = integrity.digest(group[name][lo : lo + size])
        group[integrity.SHA_ARRAY][block] = json.dumps(digests)
    group["block_done"][block] = 1


def damage_report(path: str | Path) -> tuple[list[integrity.Damage], int, bool]:
    """(every damaged block's arrays, blocks checked, whether digests were there) of a cache."""
    path = Path(path)
    group = _open_group(path, mode="r")
    damage = integrity.scan(group, CHECKED_ARRAYS)
    return damage, int(integrity.done_flags(group).sum()), integrity.has_digests(group)


def pending_report(path: str | Path) -> tuple[int, int]:
    """(blocks planned but not encoded yet, blocks planned) of the cache at ``path``; a done
    flag that cannot be read counts as not encoded."""
    flags = integrity.done_flags(_open_group(Path(path), mode="r"))
    return int((flags == 0).sum()), len(flags)


def touch(group: zarr.Group) -> None:
    """Record the update time and the current delit version."""
    group.attrs.update({"updated": now_iso(), "delit_version": __version__})


# ----------------------------------------------------------------------------------------------
# Reading side


def _key_hash(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class LatentCache:
    """Read access to a cache written by ``delit encode`` (only fully written rows).

    ``cache[i]`` -> dict(key, relit_latent [16,h,w], flat_latent [16,h,w], env [3,128,256]
    linear HDR) as float32 tensors; ``read(name, indices)`` -> numpy ``[len(indices), ...]``.
    Indices run over the valid rows in store order, ``0 .. len(cache) - 1``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.group = _open_group(self.path, mode="r")
        self.metadata: dict[str, Any] = dict(self.group.attrs)
        self.block_size = int(self.metadata["block_size"])
        self._checked: set[tuple[str, int]] = set()  # (array, block) verified so far
        if not integrity.has_digests(self.group):
            log.warning(
                "%s: written before delit recorded checksums: damage cannot be detected "
                "(re-encode into a new store to get them)",
                self.path,
            )
        done = integrity.done_flags(self.group)
        keys = self._read_keys(done)
        valid = np.flatnonzero((keys != "") & (np.repeat(done, self.block_size) == 1))
        self.rows = valid.astype(np.int64)
        self.keys: list[str] = [str(k) for k in keys[self.rows]]
        pending = int((done == 0).sum())
        if pending:
            log.warning("%s: %d block(s) not encoded yet (rerun delit encode)", self.path, pending)

    def _read_keys(self, done: np.ndarray) -> np.ndarray:
        """Keys of every row, checking the plan rows (key, source, variant) of done blocks."""
        parts = []
        for block, flag in enumerate(done):
            if flag:
                self._verify(integrity.META_ARRAYS, block)
            try:
                keys = integrity.read_block(self.group, "key", block)
                parts.append(np.array([str(k) for k in keys], dtype=object))
            except ValueError:  # a pending block's plan: encode repairs it
                parts.append(np.full(self.block_size, "", dtype=object))
        return np.concatenate(parts) if parts else np.array([], dtype=object)

    def _verify(self, names: Sequence[str], block: int) -> None:
        """Raise ``DelitError`` if arrays ``names`` of done ``block`` are damaged (once each)."""
        todo = tuple(n for n in names if (n, block) not in self._checked)
        if not todo:
            return
        damage = integrity.check_block(self.group, block, todo)
        if damage:
            raise DelitError(
                f"{self.path}: damaged cache: {damage[0]} (delit cache verify {self.path} lists "
                "every damaged block; delit encode re-encodes them)"
            )
        self._checked.update((n, block) for n in todo)

    def verify(self) -> None:
        """Check every array of every valid block now (``DelitError`` at the first damage)."""
        for block in np.unique(self.rows // self.block_size):
            self._verify(DATA_ARRAYS, int(block))

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"LatentCache({str(self.path)!r}, samples={len(self)})"

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.group["relit_latent"].shape[1:])

    def read(self, name: str, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Array ``name`` at cache ``indices`` (all when None) -> float32 numpy, sorted reads."""
        if name not in DATA_ARRAYS:
            raise KeyError(f"unknown cache array {name!r} (have {DATA_ARRAYS})")
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        arr = self.group[name]
        if idx.size == 0:
            return np.zeros((0, *arr.shape[1:]), dtype=np.float32)
        rows = self.rows[idx]
        for block in np.unique(rows // self.block_size):
            self._verify((name,), int(block))
        order = np.argsort(rows, kind="stable")
        out = np.empty((idx.size, *arr.shape[1:]), dtype=np.float32)
        out[order] = arr.oindex[rows[order]]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"cache index {i} out of range for {len(self)} samples")
        i = i % len(self)
        out: dict[str, Any] = {"key": self.keys[i]}
        for name in DATA_ARRAYS:
            out[name] = torch.from_numpy(self.read(name, [i])[0])
        return out

    def split(self, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """Deterministic (train, val) index lists, by a hash of each sample's base key.

        A sample's side depends only on (seed, key), so it stays put when the cache grows;
        augmented variants of one sample share a side. With ``0 < val_fraction < 1`` and at
        least two distinct samples, both sides are non-empty.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise DelitError(f"{self.path}: val fraction must be in [0, 1), got {val_fraction}")
        bases = sorted({base_key(k) for k in self.keys})
        score = {b: _key_hash(seed, b) for b in bases}
        val_bases = {b for b in bases if score[b] < val_fraction}
        if val_fraction > 0 and len(bases) >= 2:
            ranked = sorted(bases, key=score.__getitem__)
            if not val_bases:
                val_bases = {ranked[0]}
            elif len(val_bases) == len(bases):
                val_bases.discard(ranked[-1])
        train = [i for i, k in enumerate(self.keys) if base_key(k) not in val_bases]
        val = [i for i, k in enumerate(self.keys) if base_key(k) in val_bases]
        return train, val

    def mean_env(self, indices: Sequence[int] | None = None, chunk: int = 256) -> torch.Tensor:
        """Mean linear HDR env map ``[3,128,256]`` over ``indices`` (all when None)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise DelitError(f"{self.path}: no samples to average the env map over")
        total = np.zeros((3, *ENV_SIZE), dtype=np.float64)
        for lo in range(0, idx.size, chunk):
            total += self.read("env", idx[lo : lo + chunk]).sum(axis=0, dtype=np.float64)
        return torch.from_numpy((total / idx.size).astype(np.float32))

    def latent_stats(
        self, indices: Sequence[int] | None = None, limit: int = 1024, chunk: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std ``[C]`` of ``relit_latent`` over ``indices`` (all when None;
        the first ``limit`` of them, evenly spaced, for large caches)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise DelitError(f"{self.path}: no samples to take latent statistics over")
        if idx.size > limit:
            idx = idx[np.linspace(0, idx.size - 1, limit).round().astype(np.int64)]
        c = self.latent_shape[0]
        s1, s2, count = np.zeros(c), np.zeros(c), 0
        for lo in range(0, idx.size, chunk):
            x = self.read("relit_latent", idx[lo : lo + chunk]).astype(np.float64)
            s1 += x.sum(axis=(0, 2, 3))
            s2 += (x * x).sum(axis=(0, 2, 3))
            count += x.shape[0] * x.shape[2] * x.shape[3]
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
        std = np.maximum(std, 1e-4 * max(1.0, float(np.abs(mean).max())))
        return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))


def first_samples(path: str | Path, n: int, minimum: int = 2) -> tuple[LatentCache, np.ndarray]:
    """A benchmark's samples: the cache at ``path`` and the indices of its first ``n`` rows;
    ``DelitError`` when ``n`` or the cache gives fewer than ``minimum``."""
    if n < minimum:
        raise DelitError(f"--n {n}: must be >= {minimum}")
    cache = LatentCache(path)
    n = min(n, len(cache))
    if n < minimum:
        raise DelitError(f"{path}: holds {n} samples, {minimum} or more needed")
    return cache, np.arange(n)

"""The raw training data format: webdataset ``*.tar`` shards of (relit, flat, env) samples.

Shard files are named ``shard-000000.tar``, ``shard-000001.tar``, ... and are plain POSIX tar
archives (readable by ``tar tf``) that follow the webdataset convention: every member is named
``<key>.<field>`` and the members of one sample are stored next to each other. A key holds no
dot. The fields of a sample are

=================  ========  ===================================================================
member             required  content
=================  ========  ===================================================================
``<key>.relit.png``   yes    the photo: 8-bit sRGB PNG, RGB, H x W.
``<key>.flat.png``    yes    the same subject under uniform white light of radiance 1, stored
                             sRGB-encoded like a photo (8-bit PNG, RGB, H x W).
``<key>.env.exr``     yes    the lighting: equirectangular map (see ``delit_cache.lighting.envmap``),
                             linear radiance in the photo's units, half-float RGB OpenEXR,
                             normally 128 x 256.
``<key>.mask.png``    no     subject mask: 8-bit grey PNG, 255 = subject, H x W.
``<key>.normal.exr``  no     world-space unit normals (y up, camera on +z), half-float RGB
                             OpenEXR, H x W, 0 outside the subject.
``<key>.json``        no     metadata (UTF-8 JSON object): source HDRI or procedural type,
                             rotation, exposure scale, seed, ...
=================  ========  ===================================================================

Reading: :func:`iter_samples` decodes every sample to a dict (see :func:`decode_sample`);
:func:`make_pipeline` builds the same decoding as a ``webdataset.DataPipeline`` that splits
shards between ``DataLoader`` workers. Writing: :class:`ShardWriter` writes each shard as
``<name>.tmp`` and renames it when complete, so a reader never sees a half-written shard; its
tar headers carry no time stamps, so equal samples give byte-identical shards.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import OpenEXR
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from delit_cache.data.imageio import HALF_MAX, read_exr_channels
from delit_cache.data.tarscan import scan_shard
from delit_cache.utils.errors import DelitError

REQUIRED_FIELDS = ("relit.png", "flat.png", "env.exr")
OPTIONAL_FIELDS = ("mask.png", "normal.exr", "json")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
SHARD_PATTERN = "shard-{:06d}.tar"

# ----------------------------------------------------------------------------------------------
# Shard lists


def expand_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand a SHARDS argument to a sorted list of existing ``.tar`` files.

    ``spec`` may be a directory (all ``*.tar`` in it), a single tar file, a glob
    (``data/*.tar``), a brace pattern (``data/shard-{000000..000003}.tar``) or a list of any of
    these. A shard named twice (``data`` and ``data/../data/shard-000000.tar``, or a link to
    it) is listed once. Raises ``DelitError`` when a named file is missing or nothing matches.
    """
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    found: dict[Path, Path] = {}  # resolved path -> the first spelling found
    for item in specs:
        for path in _expand_one(str(item)):
            found.setdefault(path.resolve(), path)
    if not found:
        named = ", ".join(map(str, specs)) or "(nothing)"
        raise DelitError(f"{named}: no .tar shards found")
    return sorted(found.values())


def _expand_one(item: str) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        return sorted(path.glob("*.tar"))
    out: list[Path] = []
    for name in braceexpand.braceexpand(item):
        if glob.has_magic(name):
            out.extend(Path(p) for p in glob.glob(name) if p.endswith(".tar"))
        elif Path(name).is_file():
            out.append(Path(name))
        else:
            raise DelitError(f"{name}: no such shard file")
    return out


# ----------------------------------------------------------------------------------------------
# Encoding single fields (bytes <-> tensors)


def encode_png(image: torch.Tensor) -> bytes:
    """Encode a display-referred image [3,H,W] or mask [1,H,W]/[H,W] in [0,1] as 8-bit PNG."""
    arr = image.detach().float().cpu()
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    arr = (arr.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    if arr.ndim == 3:
        arr = arr.permute(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr.contiguous().numpy()).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, channels: int = 3) -> torch.Tensor:
    """Decode PNG/JPEG bytes to float32 [channels,H,W] in [0,1] (channels 3 = RGB, 1 = grey)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float32) / 65535.0
            arr = np.repeat(arr[..., None], 3, axis=-1) if channels == 3 else arr[..., None]
        else:
            arr = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def encode_exr(image: torch.Tensor) -> bytes:
    """Encode a linear float image [3,H,W] as RGB OpenEXR (ZIP) bytes: half float, or full
    float where a value lies beyond half float's range (a sun can: half would store Inf)."""
    arr = image.detach().float().cpu().numpy()
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"expected [3,H,W], got {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("image has NaN or Inf values")
    dtype = np.float16 if np.abs(arr).max(initial=0.0) <= HALF_MAX else np.float32
    chans = {c: np.ascontiguousarray(arr[i]).astype(dtype) for i, c in enumerate("RGB")}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    buf = io.BytesIO()
    with OpenEXR.File(header, chans) as f:
        f.write(buf)
    return buf.getvalue()


def decode_exr(data: bytes, name: str = "OpenEXR data") -> torch.Tensor:
    """Decode OpenEXR bytes to float32 [3,H,W] (a grey single-channel file is repeated)."""
    ch = read_exr_channels(io.BytesIO(data), name)
    if all(c in ch for c in "RGB"):
        planes = [ch[c] for c in "RGB"]
    elif ch:
        planes = [next(iter(ch.values()))] * 3
    else:
        raise DelitError(f"{name}: no channels")
    arr = np.stack([np.asarray(p, dtype=np.float32) for p in planes])
    return torch.from_numpy(arr)


# ----------------------------------------------------------------------------------------------
# Samples


def encode_sample(
    key: str,
    relit: torch.Tensor,
    flat: torch.Tensor,
    env: torch.Tensor,
    mask: torch.Tensor | None = None,
    normal: torch.Tensor | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode one sample to the ``{"__key__": key, field: bytes}`` dict that ShardWriter writes.

    relit, flat: [3,H,W] sRGB-encoded values in [0,1]; env: [3,h,w] linear radiance;
    mask: [1,H,W] or [H,W] in [0,1]; normal: [3,H,W] unit vectors (0 outside the subject).
    """
    sample: dict[str, Any] = {
        "__key__": key,
        "relit.png": encode_png(relit),
        "flat.png": encode_png(flat),
        "env.exr": encode_exr(env),
    }
    if mask is not None:
        sample["mask.png"] = encode_png(mask)
    if normal is not None:
        sample["normal.exr"] = encode_exr(normal)
    if meta is not None:
        sample["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    return sample


def decode_sample(raw: dict[str, Any], size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """Decode a raw webdataset sample (``__key__``, ``__url__`` and field bytes).

    Returns ``dict(key, relit [3,H,W] float32 in [0,1] sRGB-encoded, flat [3,H,W] likewise,
    env [3,h,w] float32 linear HDR, mask [1,H,W] in [0,1] or None, normal [3,H,W] or None,
    meta dict, source str)``. With ``size`` (int or (H, W)) the images, mask and normals are
    resized (bilinear, antialiased; normals renormalised); the env map is never resized.
    Raises ``DelitError("<source>:<key>: <problem>")`` for a missing field or undecodable data.
    """
    key = raw.get("__key__", "?")
    where = f"{raw.get('__url__', '?')}:{key}"
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        raise DelitError(f"{where}: missing {', '.join(missing)}")
    try:
        out = {
            "key": key,
            "relit": decode_png(raw["relit.png"]),
            "flat": decode_png(raw["flat.png"]),
            "env": decode_exr(raw["env.exr"], "env.exr"),
            "mask": decode_png(raw["mask.png"], 1) if "mask.png" in raw else None,
            "normal": decode_exr(raw["normal.exr"], "normal.exr") if "normal.exr" in raw else None,
            "meta": json.loads(raw["json"]) if "json" in raw else {},
            "source": str(raw.get("__url__", "")),
        }
    except Exception as exc:  # any decoder failure is a data problem
        raise DelitError(f"{where}: undecodable sample ({exc})") from exc
    if size is not None:
        _resize_images(out, (size, size) if isinstance(size, int) else tuple(size))
    return out


def _resize_images(sample: dict[str, Any], hw: tuple[int, int]) -> None:
    """Resize relit/flat/mask/normal of a decoded sample in place to ``hw``."""
    for name in ("relit", "flat", "mask", "normal"):
        x = sample[name]
        if x is None or tuple(x.shape[-2:]) == hw:
            continue
        y = F.interpolate(x[None], size=hw, mode="bilinear", antialias=True, align_corners=False)[0]
        if name == "normal":
            y = F.normalize(y, dim=0) * (y.norm(dim=0, keepdim=True) > 0.5)
        sample[name] = y.clamp(0, 1) if name != "normal" else y


def raw_samples(shards: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Yield raw samples (``__key__``, ``__url__``, field -> bytes) of ``shards`` in order.

    Every shard's headers are scanned first: a truncated or damaged shard raises one
    ``DamagedShard`` (naming it, the last intact sample and how many precede the damage)
    before any sample is read.
    """
    shards = list(shards)
    for shard in shards:
        scan = scan_shard(shard, REQUIRED_FIELDS)
        if scan.damage:
            raise scan.error()
    for shard in shards:
        yield from _shard_samples(Path(shard))


def env_sources(shards: str | Path | Sequence[str | Path]) -> dict[str, str]:
    """Sample key -> the ``env_source`` of its JSON metadata ("unknown" where it has none)."""
    out = {}
    for raw in raw_samples(expand_shards(shards)):
        meta = json.loads(raw["json"]) if "json" in raw else {}
        out[raw["__key__"]] = str(meta.get("env_source", "unknown"))
    return out


def _shard_samples(shard: Path) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard; a read error becomes a ``DamagedShard`` line."""
    read = 0
    try:
        for raw in wds.tarfile_to_samples()(iter([{"url": str(shard)}])):
            yield raw
            read += 1
    except DelitError:
        raise
    except Exception as exc:  # the shard changed or holds something the scan cannot see
        scan = scan_shard(shard, REQUIRED_FIELDS)
        scan.damage = scan.damage or " ".join(str(exc.args[0] if exc.args else exc).split())
        raise scan.error(min(read, len(scan.keys))) from None


def _tar_samples(urls: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Pipeline stage: ``{"url": ...}`` items -> raw samples (see :func:`_shard_samples`)."""
    for item in urls:
        yield from _shard_samples(Path(item["url"]))


def iter_samples(
    shards: str | Path | Sequence[str | Path], size: int | tuple[int, int] | None = None
) -> Iterator[dict[str, Any]]:
    """Iterate decoded samples (see :func:`decode_sample`) of the shards named by ``shards``.

    ``shards``: a directory, tar file, glob, brace pattern or a list of them.
    """
    for raw in raw_samples(expand_shards(shards)):
        yield decode_sample(raw, size)


def make_pipeline(
    shards: str | Path | Sequence[str | Path],
    size: int | tuple[int, int] | None = None,
    shuffle: int = 0,
    seed: int = 0,
) -> wds.DataPipeline:
    """A ``webdataset.DataPipeline`` of decoded samples for a ``torch.utils.data.DataLoader``.

    Shards are split between DataLoader workers (and, with ``shuffle > 0``, shuffled per epoch
    with ``seed`` and samples shuffled in a buffer of that size). Use ``batch_size=None`` or a
    collate function that handles the ``None`` mask/normal fields.
    """
    urls = [str(p) for p in expand_shards(shards)]
    stages: list[Any] = [wds.SimpleShardList(urls)]
    if shuffle > 0:
        stages.append(wds.detshuffle(bufsize=len(urls), seed=seed))
    stages += [wds.split_by_worker, _tar_samples]
    if shuffle > 0:
        stages.append(wds.shuffle(shuffle))
    stages.append(wds.map(functools.partial(decode_sample, size=size)))
    return wds.DataPipeline(*stages)


# ----------------------------------------------------------------------------------------------
# Writing


class ShardWriter:
    """Write samples into ``out_dir/shard-000000.tar``, ``shard-000001.tar``, ... atomically.

    Each shard is written as ``shard-XXXXXX.tar.tmp`` and renamed when it holds ``shard_size``
    samples or on ``close()``. Use as a context manager; on an exception the unfinished ``.tmp``
    file is deleted (finished shards stay). ``written`` lists the finished shard paths.
    Samples are dicts ``{"__key__": key, "<field>": bytes}`` (see :func:`encode_sample`).
    """

    def __init__(self, out_dir: str | Path, shard_size: int = 1000, start_shard: int = 0):
        if shard_size < 1:
            raise DelitError(f"shard size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.shard = start_shard
        self.count = 0
        self.total = 0
        self.written: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, sample: dict[str, Any]) -> None:
        """Append one sample; starts a new shard when the current one is full."""
        key = sample.get("__key__")
        if not key or "." in key or "/" in key:
            raise DelitError(f"{key!r}: a sample key must be non-empty without '.' or '/'")
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for field in sorted(k for k in sample if not k.startswith("__")):
            data = sample[field]
            if not isinstance(data, bytes):
                raise TypeError(f"{key}.{field}: expected bytes, got {type(data).__name__}")
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.total += 1
        if self.count >= self.shard_size:
            self._finish()

    def _open(self) -> None:
        final = self.out_dir / SHARD_PATTERN.format(self.shard)
        self._tmp = final.with_name(final.name + ".tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115 (closed in _finish/abort)
        self.count = 0

    def _finish(self) -> None:
        if self._tar is None or self._tmp is None:
            return
        self._tar.close()
        final = self._tmp.with_name(self._tmp.name[: -len(".tmp")])
        os.replace(self._tmp, final)
        self.written.append(final)
        self._tar, self._tmp = None, None
        self.shard += 1

    def close(self) -> None:
        """Finish the current shard (if it holds any sample)."""
        self._finish()

    def abort(self) -> None:
        """Drop the unfinished shard's ``.tmp`` file."""
        if self._tar is not None:
            self._tar.close()
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tar, self._tmp = None, None

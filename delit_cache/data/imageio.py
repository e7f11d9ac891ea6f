"""Reading and writing HDR (.exr, .hdr) and LDR (.png, .jpg) images, and sRGB transfer.

Arrays are numpy ``float32 [H,W,3]`` (channels last) on disk-facing functions; torch helpers
convert to and from channel-first ``[3,H,W]`` tensors.

Policies:

- HDR (``read_hdr``): linear radiance as stored. OpenEXR via the ``OpenEXR`` package (first
  part; channels R, G, B, or Y replicated to RGB; alpha ignored). Radiance .hdr via the small
  RGBE codec here (flat and new-style RLE scanlines, ``-Y H +X W`` orientation only). With
  ``check=True`` (default) NaN, Inf or negative values are an error, except tiny negatives
  (down to -1 % of the mean absolute radiance) that lossy EXR codecs (DWA) leave around
  black; those are clamped to 0 with a warning.
- LDR (``read_ldr``): sRGB-encoded values scaled to [0, 1] (8-bit / 255, 16-bit / 65535),
  NOT linearised. EXIF orientation is applied. Grayscale is replicated to three channels.
  Palette and CMYK images are converted to RGB; 32-bit float grey (TIFF) is read as stored
  and must lie in [0, 1]. Alpha is never composited: the colour is returned as stored and the
  alpha channel ([H,W] in [0, 1]) is returned separately when ``with_alpha=True`` (``None``
  when the file has none). 16-bit colour PNGs are decoded here, because Pillow truncates them
  to 8 bits. Pillow's decompression-bomb warning (above 89 Mpx) is silenced; its error (above
  twice that) makes the file unreadable.
- Writing is atomic: a temporary file in the target folder, then ``os.replace``.
  ``write_exr`` stores half floats by default (values above 65504 are clipped to it);
  ``write_png`` clips to [0, 1] and rounds to 8 or 16 bits.
- Bad files raise ``DelitError("<path>: <problem>")``.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from delit_cache.utils.atomic import atomic_path
from delit_cache.utils.cstderr import captured_output
from delit_cache.utils.errors import DelitError
from delit_cache.utils.logs import get_logger

HDR_EXTS = (".exr", ".hdr", ".rgbe", ".pic")
LDR_EXTS = (".png", ".jpg", ".jpeg")
HALF_MAX = 65504.0
log = get_logger(__name__)

# ----------------------------------------------------------------------------- sRGB


def srgb_to_linear(x):
    """IEC 61966-2-1 sRGB decoding (numpy array or torch tensor, any shape, values in [0, 1]).

    ``x / 12.92`` for ``x <= 0.04045``, else ``((x + 0.055) / 1.055) ** 2.4``.
    """
    if isinstance(x, torch.Tensor):
        hi = ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
        return torch.where(x <= 0.04045, x / 12.92, hi)
    x = np.asarray(x, dtype=np.float32)
    hi = ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4
    return np.where(x <= 0.04045, x / 12.92, hi).astype(np.float32)


def linear_to_srgb(x):
    """IEC 61966-2-1 sRGB encoding (numpy array or torch tensor, any shape).

    ``12.92 * x`` for ``x <= 0.0031308``, else ``1.055 * x ** (1/2.4) - 0.055``. Values above 1
    follow the same curve (clip afterwards for display).
    """
    if isinstance(x, torch.Tensor):
        hi = 1.055 * x.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055
        return torch.where(x <= 0.0031308, 12.92 * x, hi)
    x = np.asarray(x, dtype=np.float32)
    hi = 1.055 * np.maximum(x, 0.0031308) ** (1.0 / 2.4) - 0.055
    return np.where(x <= 0.0031308, 12.92 * x, hi).astype(np.float32)


# ----------------------------------------------------------------------------- torch helpers


def image_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``[H,W,C]`` (or ``[H,W]``) numpy -> float32 ``[C,H,W]`` tensor (``[1,H,W]`` for 2-D)."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected [H,W,C] array, got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """``[C,H,W]`` or ``[1,C,H,W]`` tensor -> float32 ``[H,W,C]`` numpy (detached, on CPU)."""
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"expected [C,H,W] tensor, got shape {tuple(t.shape)}")
    return np.ascontiguousarray(t.detach().cpu().float().numpy().transpose(1, 2, 0))


def _hwc3(arr, path) -> np.ndarray:
    """Accept numpy ``[H,W,3]`` or torch ``[3,H,W]``; return float32 ``[H,W,3]``."""
    if isinstance(arr, torch.Tensor):
        arr = tensor_to_image(arr)
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim != 3 or a.shape[2] != 3:
        raise DelitError(f"{path}: image to write must be [H,W,3], got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------- atomic writes


# ----------------------------------------------------------------------------- HDR


NEG_TOLERANCE = 0.01  # negatives down to -1 % of the mean |radiance| are lossy-codec noise


def _require_file(path: Path) -> None:
    """``DelitError`` unless ``path`` is a file (a folder named ``x.png`` is not one)."""
    if path.is_dir():
        raise DelitError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise DelitError(f"{path}: file not found")


def _check_radiance(arr: np.ndarray, path) -> np.ndarray:
    """Raise on NaN/Inf or real negative radiance; clamp codec-noise negatives to 0."""
    if not np.isfinite(arr).all():
        raise DelitError(f"{path}: contains NaN or Inf radiance")
    low = float(arr.min()) if arr.size else 0.0
    if low < 0:
        tol = NEG_TOLERANCE * float(np.abs(arr).mean()) + 1e-6
        if low < -tol:
            raise DelitError(
                f"{path}: contains negative radiance (min {low:.4g}; a lossy EXR compression"
                " such as DWAA/DWAB rings around bright lights: re-save the map losslessly,"
                " with its negatives set to 0)"
            )
        log.warning(
            "%s: %d small negative values (min %.3g) clamped to 0 (lossy-codec noise)",
            path,
            int((arr < 0).sum()),
            low,
        )
        arr = np.maximum(arr, 0.0)
    return arr


def read_hdr(path: str | Path, check: bool = True) -> np.ndarray:
    """Read a linear HDR image (.exr or .hdr) -> float32 ``[H,W,3]``.

    ``check=True`` raises ``DelitError`` on NaN, Inf or negative values (codec-noise negatives
    down to -1 % of the mean |radiance| are clamped to 0, with a warning).
    """
    path = Path(path)
    _require_file(path)
    ext = path.suffix.lower()
    if ext == ".exr":
        arr = _read_exr(path)
    elif ext in HDR_EXTS:
        arr = _read_rgbe(path)
    else:
        raise DelitError(f"{path}: not an HDR image (expected .exr or .hdr)")
    if check:
        arr = _check_radiance(arr, path)
    return arr


def read_exr_channels(source, name) -> dict[str, np.ndarray]:
    """The channels of an OpenEXR file (a path or a binary file object) by name.

    A truncated or damaged file raises one ``DelitError`` naming ``name``; what OpenEXR's C
    library prints on stderr about it is folded into that message instead of leaking out.
    """
    import OpenEXR

    try:
        with captured_output() as noise, OpenEXR.File(source, separate_channels=True) as f:
            chans = {k: np.asarray(v.pixels) for k, v in f.channels().items()}
    except Exception as exc:
        detail = _exr_detail(noise.lines(), str(name)) or str(exc)
        raise DelitError(
            f"{name}: unreadable OpenEXR file, truncated or damaged ({detail[:200]})"
        ) from None
    noise.replay()
    return chans


def _exr_detail(lines: list[str], name: str) -> str:
    """The most telling line OpenEXR printed (its last ``EXR_ERR`` line), without the name."""
    errors = [ln for ln in lines if "(EXR_ERR" in ln] or lines
    line = errors[-1] if errors else ""
    return line.removeprefix(name).removeprefix(":").strip()


def _read_exr(path: Path) -> np.ndarray:
    chans = read_exr_channels(str(path), path)
    if all(c in chans for c in "RGB"):
        arr = np.stack([chans[c] for c in "RGB"], axis=-1)
    elif "Y" in chans:
        arr = np.repeat(chans["Y"][:, :, None], 3, axis=-1)
    else:
        raise DelitError(f"{path}: no R,G,B or Y channels (found {sorted(chans)})")
    if arr.ndim != 3:
        raise DelitError(f"{path}: unexpected EXR channel shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def write_exr(path: str | Path, arr, half: bool = True, text: dict[str, str] | None = None) -> None:
    """Write ``[H,W,3]`` numpy (or ``[3,H,W]`` tensor) linear RGB to OpenEXR, atomically.

    ``half=True`` stores float16 (values clipped to +-65504), else float32; ZIP compression.
    ``text``: string attributes added to the header.
    """
    import OpenEXR

    a = _hwc3(arr, path)
    a = np.clip(a, -HALF_MAX, HALF_MAX).astype(np.float16) if half else a
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage, **(text or {})}
    channels = {c: np.ascontiguousarray(a[:, :, i]) for i, c in enumerate("RGB")}
    with atomic_path(path) as tmp, OpenEXR.File(header, channels) as f:
        f.write(str(tmp))


def _rgbe_header(data: bytes, path: Path) -> tuple[int, int, int]:
    """Parse a Radiance header -> (height, width, offset of the pixel data)."""
    if not data.startswith(b"#?"):
        raise DelitError(f"{path}: not a Radiance .hdr file (no '#?' signature)")
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise DelitError(f"{path}: truncated Radiance header")
        line = data[pos:end].strip()
        pos = end + 1
        if line.startswith(b"FORMAT=") and line != b"FORMAT=32-bit_rle_rgbe":
            raise DelitError(f"{path}: unsupported Radiance format {line.decode(errors='replace')}")
        if line.startswith((b"-Y", b"+Y")):
            parts = line.split()
            if len(parts) != 4 or parts[0] != b"-Y" or parts[2] != b"+X":
                raise DelitError(f"{path}: unsupported Radiance orientation {line.decode()}")
            try:
                h, w = int(parts[1]), int(parts[3])
            except ValueError:
                h = w = 0
            if h < 1 or w < 1:
                raise DelitError(f"{path}: bad Radiance image size {line.decode(errors='replace')}")
            return h, w, pos


def _rle_scanline(data: bytes, pos: int, width: int, path: Path) -> tuple[np.ndarray, int]:
    """Decode one new-style RLE scanline starting at ``pos`` -> (``[width,4]`` uint8, new pos)."""
    if struct.unpack(">H", data[pos + 2 : pos + 4])[0] != width:
        raise DelitError(f"{path}: corrupt RLE scanline")
    pos += 4
    line = np.empty((4, width), dtype=np.uint8)
    for c in range(4):
        x = 0
        while x < width:
            count = data[pos]
            if count > 128:  # run
                count -= 128
                line[c, x : x + count] = data[pos + 1]
                pos += 2
            else:
                if count == 0:
                    raise DelitError(f"{path}: corrupt RLE scanline")
                line[c, x : x + count] = np.frombuffer(data, np.uint8, count, pos + 1)
                pos += 1 + count
            x += count
            if x > width:
                raise DelitError(f"{path}: corrupt RLE scanline")
    return line.T, pos


def _least_pixel_bytes(h: int, w: int) -> int:
    """The fewest bytes ``h`` scanlines of width ``w`` take: flat RGBE, or (widths 8 to 32767)
    new-style RLE with every channel in runs of 127."""
    if 8 <= w < 32768:
        return h * (4 + 4 * 2 * -(-w // 127))
    return h * 4 * w


def _read_rgbe(path: Path) -> np.ndarray:
    data = path.read_bytes()
    h, w, pos = _rgbe_header(data, path)
    if len(data) - pos < _least_pixel_bytes(h, w):  # before allocating what the header claims
        raise DelitError(
            f"{path}: truncated Radiance file ({len(data) - pos} bytes of pixel data, too few "
            f"for its {w}x{h} pixels)"
        )
    rgbe = np.empty((h, w, 4), dtype=np.uint8)
    try:
        for y in range(h):
            is_rle = (
                8 <= w < 32768 and data[pos] == 2 and data[pos + 1] == 2 and data[pos + 2] < 128
            )
            if is_rle:
                rgbe[y], pos = _rle_scanline(data, pos, w, path)
            else:
                rgbe[y] = np.frombuffer(data, np.uint8, 4 * w, pos).reshape(w, 4)
                pos += 4 * w
    except (IndexError, ValueError, struct.error):
        raise DelitError(f"{path}: truncated or corrupt Radiance pixel data") from None
    return rgbe_to_float(rgbe)


def rgbe_to_float(rgbe: np.ndarray) -> np.ndarray:
    """``[...,4]`` uint8 RGBE -> ``[...,3]`` float32 (Radiance's ``(byte + 0.5) * 2**(e-136)``)."""
    e = rgbe[..., 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0).astype(np.float32)
    return ((rgbe[..., :3].astype(np.float32) + 0.5) * scale[..., None]).astype(np.float32)


def float_to_rgbe(arr: np.ndarray) -> np.ndarray:
    """``[...,3]`` float (>= 0) -> ``[...,4]`` uint8 RGBE.

    One shared exponent per pixel: the error is below 1 % of the pixel's brightest channel.
    """
    a = np.maximum(np.asarray(arr, dtype=np.float64), 0.0)
    peak = a.max(axis=-1)
    mant, exp = np.frexp(peak)
    ok = peak > 1e-32
    scale = np.where(ok, mant * 256.0 / np.where(ok, peak, 1.0), 0.0)
    rgb = np.clip(np.floor(a * scale[..., None]), 0, 255)
    e = np.where(ok, exp + 128, 0)
    return np.concatenate([rgb, e[..., None]], axis=-1).astype(np.uint8)


def write_hdr(path: str | Path, arr) -> None:
    """Write ``[H,W,3]`` linear RGB (>= 0) as an uncompressed Radiance .hdr, atomically."""
    a = _hwc3(arr, path)
    h, w = a.shape[:2]
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {h} +X {w}\n".encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(header + float_to_rgbe(a).tobytes())


# ----------------------------------------------------------------------------- LDR


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation code (1-8) to an ``[H,W,...]`` array (as PIL exif_transpose)."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x[::-1, ::-1].swapaxes(0, 1),
        8: lambda x: np.rot90(x, 1),
    }
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


def _png_ihdr(path: Path) -> tuple[int, int, int] | None:
    """(bit depth, colour type, interlace) of a PNG file, or None if it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 29 or not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        return None
    return head[24], head[25], head[28]


def _unfilter(raw: bytes, h: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG scanline filters -> ``[h, stride]`` uint8."""
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride + 1)
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        ftype, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if ftype == 1:
            line = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) % 256
        elif ftype == 2:
            line = (line + prev) % 256
        elif ftype in (3, 4):
            line = _unfilter_seq(line, prev, bpp, ftype)
        elif ftype != 0:
            raise ValueError(f"bad PNG filter type {ftype}")
        out[y] = line
        prev = line.astype(np.int32)
    return out


def _unfilter_seq(line: np.ndarray, prev: np.ndarray, bpp: int, ftype: int) -> np.ndarray:
    """Average (3) and Paeth (4) filters, sequential over pixels, vectorised over bytes."""
    res = line.reshape(-1, bpp).copy()
    up = prev.reshape(-1, bpp)
    left = np.zeros(bpp, dtype=np.int32)
    upleft = np.zeros(bpp, dtype=np.int32)
    for i in range(res.shape[0]):
        if ftype == 3:
            pred = (left + up[i]) // 2
        else:
            p = left + up[i] - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - up[i]), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up[i], upleft))
        res[i] = (res[i] + pred) % 256
        left, upleft = res[i], up[i]
    return res.reshape(-1)


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def _png_chunks(data: bytes) -> tuple[tuple, bytes]:
    """(IHDR fields: width, height, depth, colour type, ..., interlace; joined IDAT data) of a
    PNG file's bytes."""
    pos, idat, ihdr = 8, [], None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
        pos += 12 + length
    return ihdr, b"".join(idat)


def _check_png_rows(path: Path) -> None:
    """``DelitError`` when a non-interlaced PNG's pixel data stops before its last row:
    Pillow fills the missing rows with black and reports nothing."""
    (w, h, depth, ctype, *_, interlace), idat = _png_chunks(path.read_bytes())
    if interlace:
        return
    stride = 1 + (w * PNG_CHANNELS[ctype] * depth + 7) // 8
    inflate, n, rest = zlib.decompressobj(), 0, idat
    while rest:  # count the bytes without holding them (1 MiB at a time)
        n += len(inflate.decompress(rest, 1 << 20))
        rest = inflate.unconsumed_tail
    if n < h * stride:
        raise DelitError(f"{path}: truncated PNG (pixel data ends after row {n // stride} of {h})")


def _read_png16(path: Path) -> np.ndarray:
    """Decode a non-interlaced 16-bit PNG -> float32 ``[H,W,C]`` in [0, 1] (C = 1, 2, 3, 4)."""
    (w, h, _, ctype_code, *_), idat = _png_chunks(path.read_bytes())
    nchan = PNG_CHANNELS[ctype_code]
    raw = zlib.decompress(idat)
    px = _unfilter(raw, h, w * nchan * 2, nchan * 2)
    vals = px.reshape(h, w * nchan, 2).astype(np.uint16)
    vals = (vals[..., 0] << 8) | vals[..., 1]
    return vals.reshape(h, w, nchan).astype(np.float32) / 65535.0


@contextlib.contextmanager
def _open_pillow(path: Path) -> Iterator:
    """``Image.open(path)`` without Pillow's DecompressionBombWarning: photos up to twice its
    limit (2 x 89 Mpx) are read quietly; above that Pillow raises, and the file is reported."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            yield im


def _read_pillow(path: Path) -> tuple[np.ndarray, int]:
    """Pillow decode -> (float32 ``[H,W,C]`` in [0,1], EXIF orientation code)."""
    with _open_pillow(path) as im:
        orientation = int(im.getexif().get(0x0112, 1))
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float32)[:, :, None]
            if a.size and (a.min() < 0 or a.max() > 65535):  # mode I is 32-bit: not clipped
                raise DelitError(
                    f"{path}: 32-bit integer image with values outside 0-65535 (min "
                    f"{a.min():.0f}, max {a.max():.0f}); store it as 8 or 16 bits"
                )
            return a / 65535.0, orientation
        if im.mode == "F":  # 32-bit float grey (TIFF): converting it to RGB makes it black
            a = np.asarray(im, dtype=np.float32)
            if not np.isfinite(a).all():
                raise DelitError(f"{path}: floating-point image with NaN or Inf values")
            if a.size and (a.min() < 0.0 or a.max() > 1.0):
                raise DelitError(
                    f"{path}: floating-point image with values outside [0, 1] (min "
                    f"{a.min():.4g}, max {a.max():.4g}); store it as 8 or 16 bits"
                )
            return a[:, :, None], orientation
        if im.mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
        a = np.asarray(im, dtype=np.float32) / 255.0
    return (a[:, :, None] if a.ndim == 2 else a), orientation


def _read_orientation(path: Path) -> int:
    with _open_pillow(path) as im:
        return int(im.getexif().get(0x0112, 1))


def read_ldr(
    path: str | Path, with_alpha: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Read a PNG or JPEG -> float32 ``[H,W,3]`` sRGB-encoded values in [0, 1].

    EXIF orientation applied; grayscale replicated; alpha not composited. With
    ``with_alpha=True`` returns ``(rgb, alpha)`` where alpha is ``[H,W]`` in [0, 1] or None.
    """
    path = Path(path)
    _require_file(path)
    try:
        ihdr = _png_ihdr(path)
        if ihdr is not None and ihdr[0] == 16 and ihdr[1] in (2, 4, 6):
            if ihdr[2] != 0:
                raise DelitError(f"{path}: interlaced 16-bit colour PNG is not supported")
            a, orientation = _read_png16(path), _read_orientation(path)
        else:
            if ihdr is not None:
                _check_png_rows(path)
            a, orientation = _read_pillow(path)
    except DelitError:
        raise
    except Exception as exc:
        raise DelitError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    a = _orient(a, orientation)
    colour = a[:, :, :1] if a.shape[2] in (1, 2) else a[:, :, :3]
    rgb = np.ascontiguousarray(np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour)
    if not with_alpha:
        return rgb
    alpha = a[:, :, -1].copy() if a.shape[2] in (2, 4) else None
    return rgb, alpha


def _png16_bytes(a: np.ndarray) -> bytes:
    h, w, c = a.shape
    be = a.astype(">u2").reshape(h, w * c)
    raw = b"".join(b"\x00" + be[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | Path, arr, bits: int = 8, text: dict[str, str] | None = None) -> None:
    """Write an image in [0, 1] to PNG (8 or 16 bits per channel), atomically.

    ``arr``: numpy ``[H,W]``, ``[H,W,3]`` or ``[H,W,4]`` (or a ``[C,H,W]`` tensor), float in
    [0, 1] (clipped) or uint8 (8-bit only). Values are written as given (no sRGB encoding).
    ``text``: tEXt chunks (8-bit only), read back by PIL as ``Image.open(path).info``.
    """
    if text and bits != 8:
        raise ValueError("PNG text chunks are written in 8-bit PNGs only")
    if isinstance(arr, torch.Tensor):
        arr = tensor_to_image(arr)
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise DelitError(f"{path}: PNG needs [H,W], [H,W,3] or [H,W,4], got shape {a.shape}")
    if bits not in (8, 16):
        raise DelitError(f"{path}: PNG bit depth must be 8 or 16, got {bits}")
    if a.dtype != np.uint8:
        a = np.round(np.clip(np.nan_to_num(a.astype(np.float64)), 0, 1) * (2**bits - 1))
    elif bits == 16:
        a = a.astype(np.float64) * 257.0
    with atomic_path(path) as tmp:
        if bits == 16:
            tmp.write_bytes(_png16_bytes(a.astype(np.uint16)))
        else:
            _save_png8(tmp, a.astype(np.uint8), text or {})


def _save_png8(path: Path, img: np.ndarray, text: dict[str, str]) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(path, "PNG", pnginfo=info)


def read_image(path: str | Path) -> np.ndarray:
    """Read any supported image by extension -> float32 ``[H,W,3]``.

    .exr/.hdr: linear radiance (checked); .png/.jpg/.jpeg: sRGB-encoded values in [0, 1].
    """
    ext = Path(path).suffix.lower()
    if ext in HDR_EXTS:
        return read_hdr(path)
    if ext in LDR_EXTS:
        return read_ldr(path)
    raise DelitError(f"{path}: unsupported image type '{ext}' (use .exr, .hdr, .png or .jpg)")

"""Tests for delit_cache.data.imageio: HDR/LDR reading and writing, policies, sRGB."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from delit_cache.data.imageio import (
    float_to_rgbe,
    image_to_tensor,
    linear_to_srgb,
    read_hdr,
    read_image,
    read_ldr,
    rgbe_to_float,
    srgb_to_linear,
    tensor_to_image,
    write_exr,
    write_hdr,
    write_png,
)
from delit_cache.utils.errors import DelitError

RNG = np.random.default_rng(0)


def _hdr_image(h=6, w=10) -> np.ndarray:
    return (10 ** RNG.uniform(-3, 4, (h, w, 3))).astype(np.float32)


# ----------------------------------------------------------------------------- sRGB


def test_srgb_golden_values_and_roundtrip():
    x = np.array([0.0, 0.04045, 0.5, 1.0], np.float32)
    lin = srgb_to_linear(x)
    assert lin == pytest.approx([0.0, 0.04045 / 12.92, 0.21404114, 1.0], rel=1e-5)
    assert linear_to_srgb(np.float32(0.0031308)) == pytest.approx(0.04045, rel=1e-3)
    grid = np.linspace(0, 1, 1001, dtype=np.float32)
    assert np.abs(linear_to_srgb(srgb_to_linear(grid)) - grid).max() < 1e-5
    t = torch.linspace(0, 1, 101, requires_grad=True)
    assert torch.allclose(srgb_to_linear(t), torch.from_numpy(srgb_to_linear(t.detach().numpy())))
    linear_to_srgb(srgb_to_linear(t)).sum().backward()
    assert torch.isfinite(t.grad).all()


def test_tensor_helpers_roundtrip():
    a = RNG.random((4, 5, 3)).astype(np.float32)
    t = image_to_tensor(a)
    assert t.shape == (3, 4, 5)
    assert np.array_equal(tensor_to_image(t), a)
    assert np.array_equal(tensor_to_image(t[None]), a)


# ----------------------------------------------------------------------------- HDR


def test_exr_roundtrip_half_and_float(tmp_path):
    a = _hdr_image()
    write_exr(tmp_path / "f.exr", a, half=False)
    assert np.array_equal(read_hdr(tmp_path / "f.exr"), a)
    write_exr(tmp_path / "h.exr", torch.from_numpy(a).permute(2, 0, 1))  # tensor input
    back = read_hdr(tmp_path / "h.exr")
    assert back.dtype == np.float32 and back.shape == a.shape
    assert np.abs(back / a - 1).max() < 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.exr", "h.exr"]  # no temp files


def test_exr_grayscale_and_bad_channels(tmp_path):
    import OpenEXR

    y = RNG.random((4, 6)).astype(np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"Y": y}) as f:
        f.write(str(tmp_path / "y.exr"))
    assert np.array_equal(read_hdr(tmp_path / "y.exr"), np.repeat(y[:, :, None], 3, 2))
    with OpenEXR.File(header, {"Z": y}) as f:
        f.write(str(tmp_path / "z.exr"))
    with pytest.raises(DelitError, match=r"z\.exr: no R,G,B"):
        read_hdr(tmp_path / "z.exr")


def test_hdr_checks(tmp_path):
    a = RNG.uniform(0.1, 1.0, (6, 10, 3)).astype(np.float32)
    for value, word in ((np.nan, "NaN"), (np.inf, "Inf"), (-0.5, "negative")):
        bad = a.copy()
        bad[2, 3, 1] = value
        write_exr(tmp_path / "bad.exr", bad, half=False)
        with pytest.raises(DelitError, match=rf"bad\.exr: .*{word}"):
            read_hdr(tmp_path / "bad.exr")
        assert read_hdr(tmp_path / "bad.exr", check=False)[2, 3, 1] == pytest.approx(
            value, nan_ok=True
        )
    noise = np.ones((4, 4, 3), np.float32)
    noise[0, 0, 0] = -0.001  # lossy-codec noise around black is clamped, not an error
    write_exr(tmp_path / "noise.exr", noise, half=False)
    assert read_hdr(tmp_path / "noise.exr").min() == 0.0
    (tmp_path / "junk.exr").write_bytes(b"not an exr at all")
    with pytest.raises(DelitError, match=r"junk\.exr: unreadable"):
        read_hdr(tmp_path / "junk.exr")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DelitError, match="not an HDR image"):
        read_hdr(tmp_path / "x.png")


def test_rgbe_codec_and_radiance_roundtrip(tmp_path):
    a = _hdr_image(9, 12)
    back = rgbe_to_float(float_to_rgbe(a))
    # RGBE shares one exponent per pixel: the error is relative to the brightest channel
    assert (np.abs(back - a).max(-1) / a.max(-1)).max() < 0.01
    write_hdr(tmp_path / "a.hdr", a)
    assert np.array_equal(read_hdr(tmp_path / "a.hdr"), back)
    assert np.array_equal(rgbe_to_float(float_to_rgbe(np.zeros((1, 3)))), np.zeros((1, 3)))


def test_radiance_rle_scanlines(tmp_path):
    w = 8
    line = bytes([2, 2, 0, w])
    line += bytes([128 + 8, 100])  # R: one run of 8
    line += bytes([8, *range(10, 18)])  # G: 8 literals
    line += bytes([128 + 4, 50, 4, 1, 2, 3, 4])  # B: run of 4, then 4 literals
    line += bytes([128 + 8, 129])  # E: exponent 129 -> scale 2**-7
    header = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 8\n"
    (tmp_path / "rle.hdr").write_bytes(header + line + line)
    img = read_hdr(tmp_path / "rle.hdr")
    assert img.shape == (2, 8, 3)
    scale = 2.0**-7
    assert img[1, :, 0] == pytest.approx(np.full(8, 100.5 * scale))
    assert img[0, :, 1] == pytest.approx((np.arange(10, 18) + 0.5) * scale)
    assert img[0, :, 2] == pytest.approx((np.array([50, 50, 50, 50, 1, 2, 3, 4]) + 0.5) * scale)
    (tmp_path / "trunc.hdr").write_bytes(header + line[:9])
    with pytest.raises(DelitError, match=r"trunc\.hdr"):
        read_hdr(tmp_path / "trunc.hdr")
    (tmp_path / "nosig.hdr").write_bytes(b"hello")
    with pytest.raises(DelitError, match="not a Radiance"):
        read_hdr(tmp_path / "nosig.hdr")


# ----------------------------------------------------------------------------- LDR


def test_png_8bit_roundtrip_and_policies(tmp_path):
    a = RNG.random((5, 7, 3)).astype(np.float32)
    write_png(tmp_path / "a.png", a)
    assert np.abs(read_ldr(tmp_path / "a.png") - a).max() <= 0.5 / 255 + 1e-6
    gray = (RNG.random((5, 7)) * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    g = read_ldr(tmp_path / "g.png")
    assert g.shape == (5, 7, 3) and np.array_equal(g[:, :, 0], g[:, :, 2])
    assert np.allclose(g[:, :, 1], gray / 255.0)
    rgba = (RNG.random((5, 7, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    rgb, alpha = read_ldr(tmp_path / "rgba.png", with_alpha=True)
    assert np.allclose(rgb, rgba[:, :, :3] / 255.0)  # colour is not composited
    assert np.allclose(alpha, rgba[:, :, 3] / 255.0)
    assert read_ldr(tmp_path / "a.png", with_alpha=True)[1] is None
    Image.fromarray(rgba[:, :, :3]).convert("P").save(tmp_path / "p.png")
    assert read_ldr(tmp_path / "p.png").shape == (5, 7, 3)


def _png16_filtered(a: np.ndarray) -> bytes:
    """16-bit RGB PNG with rows using filters 0..4 in turn (an independent encoder)."""
    h, w, c = a.shape
    rows = a.astype(">u2").reshape(h, w * c).view(np.uint8).reshape(h, -1).astype(np.int32)
    bpp, out, prev = 2 * c, b"", np.zeros(rows.shape[1], np.int32)
    for y in range(h):
        ftype, cur = y % 5, rows[y]
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if ftype == 3:
            pred = (left + prev) // 2
        elif ftype == 4:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        else:
            pred = [0, left, prev][ftype]
        out += bytes([ftype]) + ((cur - pred) % 256).astype(np.uint8).tobytes()
        prev = cur

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(out))
        + chunk(b"IEND", b"")
    )


def test_png_16bit(tmp_path):
    a = RNG.integers(0, 65536, (7, 9, 3)).astype(np.uint16)
    (tmp_path / "f.png").write_bytes(_png16_filtered(a))
    assert np.array_equal(read_ldr(tmp_path / "f.png"), a / np.float32(65535.0))
    rgba = RNG.integers(0, 65536, (4, 5, 4)).astype(np.uint16)
    (tmp_path / "f4.png").write_bytes(_png16_filtered(rgba))
    rgb, alpha = read_ldr(tmp_path / "f4.png", with_alpha=True)
    assert np.array_equal(rgb, rgba[:, :, :3] / np.float32(65535.0))
    assert np.array_equal(alpha, rgba[:, :, 3] / np.float32(65535.0))
    x = RNG.random((6, 8, 3)).astype(np.float32)
    write_png(tmp_path / "w16.png", x, bits=16)
    assert np.abs(read_ldr(tmp_path / "w16.png") - x).max() <= 0.5 / 65535 + 1e-7
    g16 = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")  # Pillow I;16 grayscale
    assert np.allclose(read_ldr(tmp_path / "g16.png")[:, :, 1], g16 / 65535.0)
    with pytest.raises(DelitError, match="bit depth"):
        write_png(tmp_path / "bad.png", x, bits=12)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    a = (RNG.random((4, 6, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    assert np.allclose(read_ldr(tmp_path / "o.png"), expected / 255.0)


def test_jpeg_and_dispatch(tmp_path):
    a = np.full((16, 16, 3), 128, np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((8, 16, 3), np.uint8) + 128).save(tmp_path / "a.jpg", exif=exif)
    img = read_image(tmp_path / "a.jpg")
    assert img.shape == (16, 8, 3)  # rotated by the EXIF tag
    assert np.abs(img - 128 / 255).max() < 0.02
    write_exr(tmp_path / "e.exr", np.ones((2, 4, 3), np.float32))
    assert read_image(tmp_path / "e.exr").shape == (2, 4, 3)
    with pytest.raises(DelitError, match="unsupported image type"):
        read_image(tmp_path / "a.gif")


def test_unreadable_ldr(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DelitError, match=r"junk\.png: unreadable"):
        read_ldr(tmp_path / "junk.png")
    with pytest.raises(DelitError, match="not found"):
        read_ldr(tmp_path / "missing.jpg")
    with pytest.raises(DelitError, match=r"\[H,W\]"):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 2)))
    with pytest.raises(DelitError, match=r"\[H,W,3\]"):
        write_exr(tmp_path / "x.exr", np.zeros((2, 2)))

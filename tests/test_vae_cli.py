"""``delit vae-check``: JSON report, PNG output, and clean errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli.app import main

REPORT_KEYS = {
    "vae",
    "fingerprint",
    "dtype",
    "device",
    "image_size",
    "params",
    "latent_shape",
    "psnr",
    "encode_ms",
    "decode_ms",
}


@pytest.fixture(scope="module")
def small_png(tmp_path_factory):
    """A 40x56 (H x W) RGB PNG with a gradient and a square."""
    path = tmp_path_factory.mktemp("img") / "small.png"
    y, x = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 56), indexing="ij")
    img = torch.stack([x, y, (x + y) / 2])
    img[:, 10:20, 30:45] = torch.tensor([0.9, 0.1, 0.2]).view(3, 1, 1)
    Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
    return path


def _last_json(text: str) -> dict:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return json.loads(lines[-1])


def test_vae_check_reports_json_and_writes_png(tiny_vae_pth, tiny_vae, small_png, tmp_path, capsys):
    out_dir = tmp_path / "out" / "nested"
    code = main(
        ["vae-check", "--vae", str(tiny_vae_pth), "--image", str(small_png), "--out", str(out_dir)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = _last_json(captured.out)
    assert REPORT_KEYS <= set(report)
    assert report["params"] == tiny_vae.num_params and isinstance(report["params"], int)
    assert report["fingerprint"] == tiny_vae.fingerprint
    assert report["image_size"] == [40, 56]
    assert report["latent_shape"] == [1, 16, 5, 7]
    assert (report["dtype"], report["device"]) == ("float32", "cpu")
    assert 0 < report["psnr"] < 100 and report["encode_ms"] > 0 and report["decode_ms"] > 0
    png = out_dir / "vae_check_small.png"
    assert png.is_file() and report["out"] == str(png)
    with Image.open(png) as im:
        assert im.size == (112, 40) and im.mode == "RGB"
        left = torch.from_numpy(np.array(im)).permute(2, 0, 1)[:, :, :56]
    with Image.open(small_png) as src:
        original = torch.from_numpy(np.array(src.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(left, original)
    assert [p.name for p in out_dir.iterdir()] == ["vae_check_small.png"]


def test_vae_check_builtin_image(tiny_vae_pth, capsys):
    code = main(["vae-check", "--vae", str(tiny_vae_pth)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = _last_json(captured.out)
    assert report["image_size"] == [256, 256] and report["latent_shape"] == [1, 16, 32, 32]
    assert report["image"] == "builtin" and "built-in test image" in captured.out


def test_vae_check_bfloat16(tiny_vae_pth, small_png, capsys):
    code = main(
        ["vae-check", "--vae", str(tiny_vae_pth), "--image", str(small_png), "--dtype", "bfloat16"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = _last_json(captured.out)
    assert report["dtype"] == "bfloat16" and report["latent_shape"] == [1, 16, 5, 7]


def test_vae_check_demo_says_it_is_a_stand_in(tiny_vae, tmp_path, small_png, monkeypatch, capsys):
    import delit_cache.vae.loader as loader
    from delit_cache.vae import save_codec

    path = save_codec(tiny_vae, tmp_path / "demo_codec.safetensors")
    monkeypatch.setattr(loader, "demo_codec_path", lambda: path)
    code = main(["vae-check", "--vae", "demo", "--image", str(small_png)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "stand-in codec trained on synthetic portraits" in captured.out
    assert "not meant for real photos" in captured.out
    assert _last_json(captured.out)["vae"] == "demo"


BAD_FOR_CLI = [
    "wan22",
    "dit",
    "t5",
    "truncated",
    "random_bytes",
    "missing_key",
    "misshapen",
    "folder_without_vae",
    "does_not_exist",
]


@pytest.mark.parametrize("name", BAD_FOR_CLI)
def test_vae_check_bad_vae_exits_2_with_one_line(name, bad_vae_files, capsys):
    path, needles = bad_vae_files[name]
    code = main(["vae-check", "--vae", str(path)])
    captured = capsys.readouterr()
    assert code == 2
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    assert needles[0] in err_lines[0]


def test_vae_check_unreadable_image(tiny_vae_pth, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code = main(["vae-check", "--vae", str(tiny_vae_pth), "--image", str(bad)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ") and "unreadable image" in captured.err
    assert str(bad) in captured.err and "Traceback" not in captured.err


def test_vae_check_bad_dtype_and_device(tiny_vae_pth, capsys):
    assert main(["vae-check", "--vae", str(tiny_vae_pth), "--dtype", "float16"]) == 2
    assert "expected one of float32, bfloat16" in capsys.readouterr().err
    assert main(["vae-check", "--vae", str(tiny_vae_pth), "--device", "tpu"]) == 2
    assert "expected auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err


def test_packaged_demo_codec_reconstructs_held_out_portraits(capsys):
    """The shipped demo codec: >= 30 dB on synthetic portraits it was not trained on."""
    assert main(["vae-check", "--vae", "demo"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert "not meant for real photos" in out
    assert report["images"] == 8 and report["image_size"] == [256, 256]
    assert report["psnr"] >= 30.0, report

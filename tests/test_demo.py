"""The demo pipeline end to end at toy size, and the report writer."""

import json
import logging

import torch
from PIL import Image

from delit_cache.demo import DemoOptions, run_demo
from delit_cache.evaluate.report import grid_image, metrics_table_html, write_report


def _example(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "relit": torch.rand(3, 40, 30, generator=g),
        "flat_pred": torch.rand(3, 40, 30, generator=g),
        "flat_true": torch.rand(3, 40, 30, generator=g),
        "env_pred": torch.rand(3, 32, 64, generator=g) * 5,
        "env_true": torch.rand(3, 32, 64, generator=g) * 5,
    }


def test_report_writes_html_and_png(tmp_path):
    metrics = {"n": 2, "model": {"flat_psnr": 25.5, "diffuse": {"angular_deg": 3.25}}}
    paths = write_report(tmp_path, [_example(0), _example(1)], metrics, ["a note"])
    page = paths["html"].read_text()
    assert "25.500" in page and "3.250" in page and "a note" in page
    assert "data:image/png;base64," in page
    with Image.open(paths["png"]) as im:
        assert im.height > 2 * 192  # two example rows plus labels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.png"]


def test_metrics_table_marks_missing_values():
    html = metrics_table_html({"model": {"flat_psnr": 30.0}})
    assert "30.000" in html and "–" in html


def test_grid_has_one_row_per_example():
    one, two = grid_image([_example(0)], height=64), grid_image([_example(0), _example(1)], 64)
    assert one.width == two.width and two.height > one.height + 60


def test_demo_runs_end_to_end_at_toy_size(tmp_path, tiny_vae_pth, caplog):
    caplog.set_level(logging.INFO, logger="delit")
    opts = DemoOptions(
        out=tmp_path / "demo",
        train_samples=6,
        val_samples=3,
        size=64,
        config="tiny",
        init_from="none",
        steps=4,
        workers=1,
        examples=2,
        vae=str(tiny_vae_pth),
    )
    metrics = run_demo(opts)
    saved = json.loads((opts.out / "metrics.json").read_text())
    assert saved["n"] == metrics["n"] == 3
    for key in ("model", "codec_ceiling", "baseline_input_as_flat", "baseline_mean_env"):
        assert key in saved
    assert (opts.out / "report.html").is_file() and (opts.out / "report.png").is_file()
    assert (opts.out / "run" / "heads.safetensors").is_file()
    assert "report" in caplog.text  # the stages are logged


def test_demo_fine_tunes_the_packaged_heads_by_default(tmp_path):
    from delit_cache.infer.delighter import resolve_checkpoint

    opts = DemoOptions(
        out=tmp_path / "demo", train_samples=4, val_samples=2, size=64, steps=2, workers=1,
        examples=1, device="cpu",
    )  # fmt: skip
    run_demo(opts)
    packaged, _, _ = resolve_checkpoint("demo")
    tuned, _, _ = resolve_checkpoint(opts.out / "run")
    assert tuned.config == packaged.config
    moved = [
        name
        for name, value in tuned.state_dict().items()
        if value.is_floating_point() and not torch.equal(value, packaged.state_dict()[name])
    ]
    assert moved  # two steps at a low learning rate moved the weights, from the packaged ones
    page = (opts.out / "report.html").read_text()
    assert "the packaged heads" in page and "fine-tuned for 2 steps" in page


def test_packaged_demo_heads_and_codec_work_at_once(tmp_path, capsys):
    """`delit infer ... --vae demo --checkpoint demo` and `delit eval` with them, out of the box."""
    from cli.app import main
    from delit_cache.data.imageio import read_hdr, read_ldr, write_png

    g = torch.Generator().manual_seed(0)
    write_png(tmp_path / "photo.png", torch.rand(3, 70, 50, generator=g))
    out = tmp_path / "out"
    args = ["infer", str(tmp_path / "photo.png"), "--vae", "demo", "--checkpoint", "demo"]
    assert main([*args, "--out", str(out)]) == 0
    assert read_ldr(out / "photo_flat.png").shape == (70, 50, 3)
    assert read_hdr(out / "photo_env.exr").shape == (128, 256, 3)
    assert (out / "photo_env.png").is_file()

    assert (
        main(["synth", "--out", str(tmp_path / "val"), "--n", "2", "--size", "64", "--seed", "5"])
        == 0
    )
    json_path = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", "demo", "--vae", "demo", "--data", str(tmp_path / "val")]
    assert main([*args, "--json", str(json_path)]) == 0
    result = json.loads(json_path.read_text())
    assert result["n"] == 2 and result["mean_env_source"] == "training cache"


def test_demo_refuses_heads_it_cannot_fine_tune_before_any_work(tmp_path, tiny_vae_pth, capsys):
    from cli.app import main

    args = ["demo", "--device", "cpu", "--out"]
    assert main([*args, str(tmp_path / "a"), "--init-from", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "b"), "--vae", str(tiny_vae_pth)]) == 2  # packaged heads
    assert "another VAE" in capsys.readouterr().err  # belong to the demo codec
    assert main([*args, str(tmp_path / "c"), "--config", "tiny"]) == 2  # not their architecture
    assert "other architecture" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing made


def test_demo_refuses_bad_vae_and_finished_run_before_any_work(tmp_path):
    from cli.app import main

    assert main(["demo", "--out", str(tmp_path / "a"), "--vae", str(tmp_path / "nope.pth")]) == 2
    assert not (tmp_path / "a" / "data").exists()
    (tmp_path / "b" / "run").mkdir(parents=True)
    (tmp_path / "b" / "run" / "heads.safetensors").write_bytes(b"")
    assert main(["demo", "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b" / "data").exists()


def test_demo_dtype_policy(monkeypatch):
    import delit_cache.demo as demo
    from delit_cache.utils.errors import DelitError

    cpu = torch.device("cpu")
    monkeypatch.setattr(demo, "has_fast_bf16", lambda device: True)
    assert demo.demo_dtype("auto", "demo", cpu) == torch.bfloat16
    assert demo.demo_dtype("auto", "/models/Wan2.1_VAE.pth", cpu) == torch.float32
    assert demo.demo_dtype("fp32", "demo", cpu) == torch.float32
    monkeypatch.setattr(demo, "has_fast_bf16", lambda device: False)
    assert demo.demo_dtype("auto", "demo", cpu) == torch.float32
    assert demo.demo_dtype("bf16", "demo", cpu) == torch.bfloat16
    try:
        demo.demo_dtype("int8", "demo", cpu)
    except DelitError as err:
        assert "--dtype int8" in str(err)
    else:
        raise AssertionError("int8 accepted")


def test_demo_refuses_bad_dtype_before_any_work(tmp_path, capsys):
    from cli.app import main

    assert main(["demo", "--out", str(tmp_path / "a"), "--dtype", "fp8"]) == 2
    assert "--dtype fp8" in capsys.readouterr().err
    assert not (tmp_path / "a" / "data").exists()

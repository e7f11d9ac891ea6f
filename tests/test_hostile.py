"""Hostile inputs (issue 13): usage errors, non-finite numbers, damaged checkpoints, paths."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_train import make_random_cache, write_config

from cli.app import main
from delit_cache.models import DelitConfig, create_heads
from delit_cache.models.pretrained import save_heads
from delit_cache.train import trainer as trainer_mod
from delit_cache.utils.atomic import write_json
from delit_cache.utils.faults import FAULT_ENV

SMALL = DelitConfig(extractor_width=32, extractor_blocks=1, flat_width=32, env_width=32, env_dim=64)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    "args",
    [
        ["nope"],
        ["infer"],
        ["infer", "--batch-size", "abc", "x.png"],
        ["infer", "--batch-size", "0", "--out", "o", "x.png"],
        ["eval", "--batch-size", "0"],
        ["train-heads", "--bogus"],
        ["encode", "--size", "1.5"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, capsys):
    assert main(args) == 2
    _one_error_line(capsys)


@pytest.mark.parametrize("lr", ["nan", "inf", "-inf"])
def test_non_finite_lr_is_refused(lr, tmp_path, capsys):
    args = ["train-heads", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "r")]
    assert main([*args, "--config", "tiny", "--lr", lr]) == 2
    assert "lr must be" in _one_error_line(capsys)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "cache.zarr"
    make_random_cache(path)
    return path


def _train(cache_path, run, config, *extra) -> int:
    args = ["train-heads", "--cache", str(cache_path), "--out", str(run), "--config", config]
    return main([*args, "--no-progress", *extra])


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, cache_path, monkeypatch, capsys
):
    config = write_config(tmp_path / "c.yaml", batch_size=2, ckpt_every=2, log_every=1)
    real = trainer_mod.compute_losses
    calls = []

    def nan_from_call_4(*args, **kwargs):
        calls.append(1)
        losses = real(*args, **kwargs)
        if len(calls) >= 4:
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(trainer_mod, "compute_losses", nan_from_call_4)
    assert _train(cache_path, tmp_path / "run", config, "--steps", "6") == 2
    err = _one_error_line(capsys)
    assert "NaN or Inf by step 4" in err and "last good checkpoint is step 2" in err
    state = torch.load(tmp_path / "run/checkpoints/latest.pt", weights_only=True)
    assert state["step"] == 2
    assert all(v.isfinite().all() for v in state["heads"].values())
    assert not (tmp_path / "run" / "heads.safetensors").exists()


def test_damaged_latest_falls_back_to_newest_intact_step(tmp_path, cache_path, capsys):
    config = write_config(tmp_path / "c.yaml", batch_size=2, ckpt_every=2, keep_last=3)
    run = tmp_path / "run"
    assert _train(cache_path, run, config, "--steps", "4") == 0
    ckpts = run / "checkpoints"
    (ckpts / "latest.pt").write_bytes((ckpts / "latest.pt").read_bytes()[:100])  # truncated
    (ckpts / "step_000004.pt").write_bytes(b"garbage")
    capsys.readouterr()
    assert _train(cache_path, run, config, "--steps", "6", "--resume") == 0
    captured = capsys.readouterr()
    assert "resuming from" in captured.err and "step_000002.pt (step 2)" in captured.err
    assert "6 steps done" in captured.out
    (ckpts / "latest.pt").unlink()  # missing latest: the newest step file
    assert _train(cache_path, run, config, "--steps", "7", "--resume") == 0
    assert "step_000006.pt (step 6)" in capsys.readouterr().err


def test_sigterm_writes_a_checkpoint_and_resume_continues(tmp_path, cache_path):
    config = write_config(tmp_path / "c.yaml", batch_size=2, ckpt_every=100)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cli", "train-heads", "--cache", str(cache_path)]
    cmd += ["--out", str(run), "--config", config, "--steps", "5", "--no-progress"]
    env = os.environ | {"OMP_NUM_THREADS": "1", FAULT_ENV: "train.step:3:term"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 128 + 15, done.stderr[-2000:]
    assert "SIGTERM after step 3" in done.stderr
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 3


def test_heads_with_nan_weights_are_refused_by_infer_and_eval(tmp_path, capsys):
    path = save_heads(create_heads(SMALL, seed=0), tmp_path / "heads.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name][...] = float("nan")
    save_file(tensors, str(path), metadata=metadata)
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(photo)
    args = ["--checkpoint", str(path), "--vae", "demo", "--device", "cpu"]
    assert main(["infer", *args, "--out", str(tmp_path / "o"), str(photo)]) == 2
    assert "NaN or Inf" in _one_error_line(capsys)
    tarfile.open(tmp_path / "shard-000000.tar", "w").close()
    assert main(["eval", *args, "--data", str(tmp_path / "shard-000000.tar")]) == 2
    assert "NaN or Inf" in _one_error_line(capsys)


def test_infer_reports_nan_outputs_instead_of_writing_them(tmp_path, monkeypatch, caplog):
    from PIL import Image

    from delit_cache.infer.delighter import Delighter, DelitResult

    photo = tmp_path / "in" / "x.png"
    photo.parent.mkdir()
    Image.new("RGB", (16, 16)).save(photo)
    nan = DelitResult(flat=np.full((4, 4, 3), np.nan, np.float32), env=np.ones((2, 4, 3)))
    monkeypatch.setattr(Delighter, "predict", lambda self, images: [nan] * len(images))
    delighter = Delighter(torch.nn.Identity(), None, torch.device("cpu"))
    summary = delighter.run([photo], tmp_path / "out", progress=False)
    assert summary.failed and "NaN or Inf" in summary.failed[0] and not summary.written
    assert not (tmp_path / "out").exists()  # nothing written: the folder made for it is gone
    assert [r.getMessage() for r in caplog.records] == [f"error: {summary.failed[0]}"]


def test_infer_out_equal_to_input_folder_skips_its_own_outputs(tmp_path):
    from delit_cache.infer.delighter import DelitResult, collect_inputs, write_result

    for name in ("face.png", "me_flat.png", "you_env.png"):  # user photos, any names
        (tmp_path / name).write_bytes(b"")
    result = DelitResult(flat=np.zeros((4, 4, 3), np.float32), env=np.ones((8, 16, 3)))
    write_result(result, tmp_path, "face")  # marked: face_flat.png, face_env.png
    paths, problems = collect_inputs([tmp_path])
    assert [p.name for p in paths] == ["face.png", "me_flat.png", "you_env.png"] and not problems
    assert collect_inputs([tmp_path / "face_flat.png"]) == ([tmp_path / "face_flat.png"], [])


def test_atomic_writes_keep_the_umask_permissions(tmp_path):
    from delit_cache.models import DelitConfig, create_heads
    from delit_cache.models.pretrained import save_heads

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", {"x": 1})
        heads = save_heads(create_heads(DelitConfig(extractor_width=8, flat_width=8), seed=0),
                           tmp_path / "h.safetensors")  # fmt: skip
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(heads.stat().st_mode) == 0o644  # safetensors writes a new 0600 file
    path.chmod(0o640)
    write_json(path, {"x": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_output_under_a_regular_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["synth", "--out", str(blocker / "shards"), "--n", "1", "--size", "32"]) == 2
    assert "file" in _one_error_line(capsys)


def test_named_configs_are_found(tmp_path):
    from delit_cache.train.config import load_config, resolve_config_path

    for name in (
        "tiny",
        "demo",
        "default",
        "demo-heads",
        "demo-heads-finetune",
        "demo-heads-detail",
        "demo-heads-flat-blocks",
        "demo-heads-env-nrmse",
        "demo-finetune",
    ):
        assert yaml.safe_load(resolve_config_path(name).read_text())
        assert load_config(name).heads_config()  # every key valid


def test_pack_names_the_clashing_stems(tmp_path, capsys):
    from test_pack_check import write_layout

    src = write_layout(tmp_path / "src", stems=("x.y", "x_y"))
    assert main(["pack", str(src), "--out", str(tmp_path / "shards")]) == 2
    err = _one_error_line(capsys)
    assert "'x.y' and 'x_y' both become the key 'x_y'" in err and "data check" not in err


# ---------------------------------------------------------------------------- damaged EXR files

HDRI_DIR = Path(__file__).resolve().parents[1] / "delit_cache" / "assets" / "hdri"


def _cut_exr(folder: Path, keep: float) -> Path:
    data = (HDRI_DIR / "city.exr").read_bytes()
    path = folder / "cut.exr"
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("keep", [0.002, 0.05, 0.5, 0.99])
@pytest.mark.parametrize("command", ["envmetrics", "synth"])
def test_truncated_exr_is_one_clean_line(command, keep, tmp_path, capfd):
    cut = _cut_exr(tmp_path, keep)
    if command == "envmetrics":
        args = ["envmetrics", str(cut), str(HDRI_DIR / "city.exr")]
    else:
        args = ["synth", "--out", str(tmp_path / "s"), "--n", "1", "--size", "32"]
        args += ["--hdri-dir", str(tmp_path), "--p-hdri", "1"]
    assert main(args) == 2
    out, err = capfd.readouterr()
    assert out == "", out  # OpenEXR's binding prints on stdout, its C core on stderr
    assert err.startswith(f"error: {cut}: unreadable OpenEXR file") and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())


def test_synth_checks_every_hdri_before_the_first_sample(tmp_path, capfd):
    """A broken map beside a good one fails the run whichever maps the samples draw (a seed
    whose one sample draws the good map used to succeed), before --out is made."""
    import shutil

    shutil.copyfile(HDRI_DIR / "city.exr", tmp_path / "aa.exr")
    (tmp_path / "zz.exr").write_bytes(b"not an exr")
    for seed in range(3):
        args = ["synth", "--out", str(tmp_path / "s"), "--n", "1", "--size", "32"]
        args += ["--hdri-dir", str(tmp_path), "--p-hdri", "1", "--seed", str(seed)]
        assert main(args) == 2, seed
        err = capfd.readouterr().err
        assert err.startswith(f"error: {tmp_path / 'zz.exr'}:") and err.count("\n") == 1, err
        assert not (tmp_path / "s").exists()


def test_a_good_exr_read_keeps_stdout_and_stderr_clean(capfd):
    from delit_cache.data.imageio import read_hdr

    assert read_hdr(HDRI_DIR / "city.exr").shape[-1] == 3
    assert capfd.readouterr() == ("", "")


# ---------------------------------------------------------------------------- damaged tar shards


def _member_offsets(shard: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset, m.offset_data + m.size) for m in tar.getmembers()}


def _damaged_shard(folder: Path, how: str) -> Path:
    from test_encode import write_shards

    src = write_shards(folder / "src", 3, shard_size=3) / "shard-000000.tar"
    data, at = src.read_bytes(), _member_offsets(src)
    second = sorted(n for n in at if n.startswith("s0_001."))
    start, end = at[second[1]]
    cuts = {
        "mid-member": data[: (start + end) // 2],  # inside sample 1's second member
        "boundary": data[: at[second[0]][0]],  # exactly where sample 1 begins, no tar trailer
        "garbage-header": data[: at[second[0]][0]] + b"\x17" * 512,
    }
    out = folder / "bad" / "shard-000000.tar"
    out.parent.mkdir()
    out.write_bytes(cuts[how])
    return out


@pytest.mark.parametrize("how", ["mid-member", "boundary", "garbage-header"])
@pytest.mark.parametrize("command", ["check", "encode", "eval"])
def test_damaged_shard_names_the_last_intact_sample(command, how, tmp_path, capsys):
    shard = _damaged_shard(tmp_path, how)
    args = {
        "check": ["data", "check", str(shard)],
        "encode": ["encode", "--vae", "demo", "--data", str(shard), "--out", str(tmp_path / "c")],
        "eval": ["eval", "--checkpoint", "demo", "--vae", "demo", "--data", str(shard)],
    }[command]
    args += [] if command == "check" else ["--device", "cpu", "--size", "32"]
    expected = "1 intact sample before it, the last is 's0_000'"
    if command == "check":  # a checker lists the damaged shard as a problem (exit 1)
        assert main(args) == 1
        out = capsys.readouterr().out
        assert f"{shard}: truncated or damaged tar shard" in out and expected in out, out
    else:
        assert main(args) == 2
        err = _one_error_line(capsys)
        assert str(shard) in err and expected in err, err
    assert not (tmp_path / "c").exists()  # encode creates no store for a damaged shard


# ---------------------------------------------------------------------------- fresh hostile pass


@pytest.mark.parametrize(
    "value, outcome",
    [(float("nan"), "NaN or Inf"), (float("inf"), "NaN or Inf"), (-0.5, "negative radiance")],
)
def test_hdri_with_bad_pixels_is_refused(value, outcome, tmp_path):
    from delit_cache.data.imageio import read_hdr, write_exr
    from delit_cache.utils.errors import DelitError

    arr = np.ones((8, 16, 3), np.float32)
    arr[:2, :2] = value
    write_exr(tmp_path / "x.exr", arr, half=False)
    with pytest.raises(DelitError, match=outcome):
        read_hdr(tmp_path / "x.exr")


def test_tiny_negative_hdri_values_are_clamped_with_a_warning(tmp_path, caplog):
    from delit_cache.data.imageio import read_hdr, write_exr

    arr = np.ones((8, 16, 3), np.float32)
    arr[:2, :2] = -0.003
    write_exr(tmp_path / "x.exr", arr, half=False)
    with caplog.at_level("WARNING", logger="delit"):
        out = read_hdr(tmp_path / "x.exr")
    assert out.min() == 0.0 and out.max() == 1.0
    assert "12 small negative values (min -0.003) clamped to 0" in caplog.text


@pytest.mark.parametrize("array", ["key", "block_done", "env"])
def test_cache_with_a_missing_array_is_one_line(array, tmp_path, cache_path, capsys):
    import shutil

    broken = tmp_path / "c.zarr"
    shutil.copytree(cache_path, broken)
    shutil.rmtree(broken / array)
    assert main(["cache", "verify", str(broken)]) == 2
    assert f"array '{array}' is missing" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--report", "{file}"], "{file}: Not a directory"),
        (["--report", "{file}/r"], "{file}/r: Not a directory"),
        (["--json", "{dir}"], "{dir}: Is a directory"),
        (["--json", "{file}/x.json"], "{file}: Not a directory"),
        (["--report", "{dir}/r", "--examples", "65"], "less than or equal to 64"),
    ],
)
def test_eval_output_paths_fail_before_the_model_runs(extra, expected, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    shard = tmp_path / "shard-000000.tar"
    tarfile.open(shard, "w").close()
    fill = {"file": str(blocker), "dir": str(tmp_path)}
    args = ["eval", "--checkpoint", "demo", "--vae", "nonexistent-vae", "--data", str(shard)]
    assert main([*args, *(a.format(**fill) for a in extra)]) == 2
    assert expected.format(**fill) in _one_error_line(capsys)  # not the VAE's error: checked first
    assert blocker.read_text() == "x"


def test_a_failed_eval_leaves_no_empty_json_folder(tmp_path, capsys):
    shard = tmp_path / "shard-000000.tar"
    tarfile.open(shard, "w").close()
    json_path = tmp_path / "new" / "deeper" / "x.json"
    args = ["eval", "--checkpoint", "demo", "--vae", str(tmp_path / "no-vae.pth")]
    assert main([*args, "--data", str(shard), "--json", str(json_path)]) == 2
    assert "no-vae.pth" in _one_error_line(capsys)
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------- fresh pass, evening

DEMO = ["--checkpoint", "demo", "--vae", "demo", "--device", "cpu", "--size", "64"]


def _photo(path: Path, size=(16, 16)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), np.uint8)).save(path)
    return path


def _zero_env_shard(folder: Path) -> Path:
    from delit_cache.data.shards import ShardWriter, encode_sample

    with ShardWriter(folder, shard_size=4) as w:
        w.write(
            encode_sample(
                "dark", torch.rand(3, 16, 16), torch.rand(3, 16, 16), torch.zeros(3, 8, 16)
            )
        )
    return folder / "shard-000000.tar"


@pytest.mark.parametrize("case", ["empty.png", "empty_dir", "dir.png"])
def test_infer_where_every_input_fails_is_exit_2_in_one_line(case, tmp_path, capsys):
    target = tmp_path / case
    if case == "empty.png":
        target.write_bytes(b"")
    else:
        target.mkdir()
    out = tmp_path / "out"
    assert main(["infer", *DEMO, "--out", str(out), str(target)]) == 2
    assert str(target) in _one_error_line(capsys)  # no "0 image(s) done" summary line after it
    assert not out.exists()


def test_infer_with_some_inputs_failing_is_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    out = tmp_path / "out"
    assert (
        main(["infer", *DEMO, "--out", str(out), str(bad), str(_photo(tmp_path / "ok.png"))]) == 1
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"error: {bad}: unreadable image") and len(lines) == 2
    assert lines[1] == "delit infer: 1 image(s) done, 1 failed"
    assert sorted(p.name for p in out.iterdir()) == ["ok_env.exr", "ok_env.png", "ok_flat.png"]


def test_infer_writes_a_photo_named_twice_once(tmp_path):
    from delit_cache.infer.delighter import collect_inputs

    photo = _photo(tmp_path / "in" / "p.png")
    (tmp_path / "link.png").symlink_to(photo)
    spellings = [photo, tmp_path / "in" / ".." / "in" / "p.png", tmp_path / "link.png"]
    assert collect_inputs([*spellings, tmp_path / "in"]) == ([photo], [])


def test_infer_out_that_is_a_file_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from delit_cache.infer.delighter import Delighter

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Delighter, "from_pretrained", never)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        assert main(["infer", *DEMO, "--out", str(out), str(_photo(tmp_path / "p.png"))]) == 2
        assert _one_error_line(capsys) == f"error: {out}: Not a directory"


@pytest.mark.parametrize("command", ["infer", "eval"])
def test_model_size_0_is_refused_not_taken_as_the_default(command, tmp_path, capsys):
    args = ["--checkpoint", "demo", "--vae", "demo", "--device", "cpu", "--size", "0"]
    if command == "infer":
        args = ["infer", *args, "--out", str(tmp_path / "o"), str(_photo(tmp_path / "p.png"))]
    else:
        args = ["eval", *args, "--data", str(_zero_env_shard(tmp_path / "shards"))]
    assert main(args) == 2
    assert "--size 0: the model size must be a positive multiple of 8" in _one_error_line(capsys)


def test_float_tiff_is_read_as_stored_not_as_black(tmp_path):
    from PIL import Image

    from delit_cache.data.imageio import read_ldr
    from delit_cache.utils.errors import DelitError

    grey = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "f.tif")  # Pillow mode "F"
    rgb = read_ldr(tmp_path / "f.tif")
    assert rgb.shape == (8, 8, 3) and np.allclose(rgb[..., 1], grey)
    for value, match in [(3.5, r"outside \[0, 1\] \(min 0, max 3.5\)"), (np.nan, "NaN or Inf")]:
        bad = grey.copy()
        bad[0, 1] = value
        Image.fromarray(bad).save(tmp_path / "bad.tif")
        with pytest.raises(DelitError, match=match):
            read_ldr(tmp_path / "bad.tif")


def test_32_bit_integer_tiff_out_of_16_bit_range_is_refused_not_clipped(tmp_path):
    from PIL import Image

    from delit_cache.data.imageio import read_ldr
    from delit_cache.utils.errors import DelitError

    grey = np.arange(64, dtype=np.int32).reshape(8, 8) * 1000  # 0-63000: 16-bit values
    Image.fromarray(grey).save(tmp_path / "i.tif")  # Pillow mode "I"
    assert np.allclose(read_ldr(tmp_path / "i.tif")[..., 0], grey / 65535.0)
    grey[0, 1] = 200000  # was clipped to white without a word
    Image.fromarray(grey).save(tmp_path / "bad.tif")
    with pytest.raises(DelitError, match=r"values outside 0-65535 \(min 0, max 200000\)"):
        read_ldr(tmp_path / "bad.tif")


def test_large_photos_are_read_without_pillows_bomb_warning(tmp_path, monkeypatch, capfd):
    import warnings

    from PIL import Image

    from delit_cache.data.imageio import read_ldr

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 64 x 64 = 4096: Pillow warns
    photo = _photo(tmp_path / "big.png", size=(64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_ldr(photo).shape == (64, 64, 3)
    assert capfd.readouterr().err == ""


def test_a_folder_named_like_an_image_is_named_as_a_folder(tmp_path):
    from delit_cache.data.imageio import read_hdr, read_ldr
    from delit_cache.utils.errors import DelitError

    for name, read in (("x.png", read_ldr), ("x.exr", read_hdr)):
        (tmp_path / name).mkdir()
        with pytest.raises(DelitError, match="is a folder, not an image file"):
            read(tmp_path / name)


@pytest.mark.parametrize("size_line", [b"-Y 0 +X 0", b"-Y -4 +X 8", b"-Y x +X 8"])
def test_radiance_file_with_a_bad_size_is_one_line(size_line, tmp_path, capsys):
    hdr = tmp_path / "e.hdr"
    hdr.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + size_line + b"\n")
    assert main(["envmetrics", str(hdr), str(HDRI_DIR / "city.exr")]) == 2
    assert "bad Radiance image size" in _one_error_line(capsys)


def _zero_exr(path: Path) -> Path:
    from delit_cache.data.imageio import write_exr

    path.parent.mkdir(parents=True, exist_ok=True)
    write_exr(path, np.zeros((8, 16, 3), np.float32))
    return path


@pytest.mark.parametrize("protocol", ["delit", "diffusionlight"])
@pytest.mark.parametrize("which", ["pred", "gt"])
def test_envmetrics_refuses_a_map_without_light(which, protocol, tmp_path, capsys):
    dark, good = _zero_exr(tmp_path / "dark.exr"), str(HDRI_DIR / "city.exr")
    pair = [str(dark), good] if which == "pred" else [good, str(dark)]
    assert main(["envmetrics", *pair, "--protocol", protocol]) == 2  # was: scores, some NaN
    assert _one_error_line(capsys) == f"error: {dark}: env map holds no light (every value is 0)"


def test_a_map_without_light_is_refused_everywhere_it_enters(tmp_path, capsys):
    dark = _zero_exr(tmp_path / "hdri" / "dark.exr")
    synth = ["synth", "--out", str(tmp_path / "s"), "--n", "1", "--size", "32"]
    assert main([*synth, "--hdri-dir", str(dark.parent), "--p-hdri", "1"]) == 2  # black portraits
    assert "dark.exr: env map holds no light" in _one_error_line(capsys)
    shard = _zero_env_shard(tmp_path / "shards")
    assert main(["data", "check", str(shard)]) == 1
    assert "shard-000000.tar:dark: env holds no light (every value is 0)" in capsys.readouterr().out
    cache = tmp_path / "c.zarr"
    assert (
        main(["encode", "--vae", "demo", "--data", str(shard), "--out", str(cache), *DEMO[4:]]) == 2
    )
    assert _one_error_line(capsys) == "error: dark: env map holds no light (every value is 0)"
    assert main(["eval", *DEMO, "--data", str(shard)]) == 2  # was: NaN in the table, exit 0
    assert _one_error_line(capsys) == "error: dark: env map holds no light (every value is 0)"
    run = tmp_path / "run"  # a damaged checkpoint: its mean env map is black
    save_heads(create_heads(SMALL, seed=0), run / "heads.safetensors")
    _zero_exr(run / "mean_env.exr")
    photo = str(_photo(tmp_path / "p.png"))
    assert main(["infer", "--checkpoint", str(run), *DEMO[2:], "--out", str(run), photo]) == 2
    assert "mean_env.exr: env map holds no light" in _one_error_line(capsys)


def test_pack_and_check_of_a_folder_without_samples(tmp_path, capsys):
    from test_pack_check import write_layout

    src = write_layout(tmp_path / "src", stems=())
    assert main(["data", "check", str(src)]) == 2  # was: "0 samples, 0 problems", exit 0
    assert "no samples" in _one_error_line(capsys)
    src = write_layout(tmp_path / "one", stems=("a",))
    out = tmp_path / "shards"
    assert main(["pack", str(src), "--out", str(out), "--shard-size", "0"]) == 2
    assert _one_error_line(capsys) == "error: --shard-size 0: must be >= 1"
    assert not out.exists()


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("num_rows", "many", "num_rows is 'many'"),
        ("num_rows", -4, "num_rows is -4"),
        ("num_rows", 10**30, "num_rows 1000000000000000000000000000000 but the arrays hold 8"),
        ("block_size", 0, "block_size is 0"),
        ("block_size", None, "block_size is None"),
        ("image_size", "big", "image_size is 'big'"),
    ],
)
def test_cache_with_damaged_attributes_is_one_line(
    name, value, expected, tmp_path, cache_path, capsys
):
    import json
    import shutil

    broken = tmp_path / "c.zarr"
    shutil.copytree(cache_path, broken)
    meta = json.loads((broken / "zarr.json").read_text())
    meta["attributes"][name] = value
    (broken / "zarr.json").write_text(json.dumps(meta))
    assert main(["cache", "verify", str(broken)]) == 2  # was: a traceback
    assert f"damaged store attributes ({expected}" in _one_error_line(capsys)
    assert _train(broken, tmp_path / "run", "tiny", "--steps", "1") == 2
    assert f"damaged store attributes ({expected}" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_encode_block_size_0_leaves_no_lock_file(tmp_path, capsys):
    shard = _zero_env_shard(tmp_path / "shards")
    out = tmp_path / "c.zarr"
    args = ["encode", "--vae", "demo", "--data", str(shard), "--out", str(out), "--block-size", "0"]
    assert main(args) == 2
    assert _one_error_line(capsys) == "error: --block-size 0: must be >= 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_a_shard_named_twice_is_read_once(tmp_path, capsys):
    from test_encode import write_shards

    from delit_cache.data.shards import expand_shards

    folder = write_shards(tmp_path / "d", 2, shard_size=1)
    (tmp_path / "link.tar").symlink_to(folder / "shard-000000.tar")
    twice = [str(folder), f"{folder}/../d/shard-000000.tar", str(tmp_path / "link.tar")]
    assert expand_shards(twice) == [folder / "shard-000000.tar", folder / "shard-000001.tar"]
    assert main(["data", "check", f"{folder}/{{shard-000000.tar,../d/shard-000000.tar}}"]) == 0
    assert capsys.readouterr().out == "1 samples, 0 problems\n"  # was: "duplicate key"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--steps", "0"], "--steps 0: must be >= 1"),  # was: the config's 450 steps
        (["--steps", "-3"], "--steps -3: must be >= 1"),
        (["--train-samples", "0"], "--train-samples 0: must be >= 1"),
        (["--val-samples", "0"], "--val-samples 0: must be >= 1"),  # was: about --examples
        (["--workers", "0"], "--workers 0: must be >= 1"),
        (["--out", "{file}"], "{file}: Not a directory"),  # was: after the first stage's line
    ],
)
def test_demo_bad_options_fail_before_any_stage(extra, expected, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = ["demo", "--out", str(tmp_path / "d"), "--device", "cpu"]
    assert main([*args, *(a.format(file=blocker) for a in extra)]) == 2
    assert _one_error_line(capsys) == f"error: {expected.format(file=blocker)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_lora_alpha_inf_and_a_rank_above_full_rank_are_refused(tmp_path, capsys):
    from test_encode import write_shards

    from delit_cache.utils.errors import DelitError
    from delit_cache.vae import load_wan_vae
    from delit_cache.vae.lora import LoraSpec, add_lora

    shards = write_shards(tmp_path / "shards", 1)
    args = ["train-lora", *DEMO[:6], "--data", str(shards), "--out", str(tmp_path / "run")]
    assert main([*args, "--steps", "1", "--lora-alpha", "inf", "--no-progress"]) == 2
    assert _one_error_line(capsys) == "error: --lora-alpha inf: must be a finite number > 0"
    assert not (tmp_path / "run").exists()  # was: a run folder, then "NaN at step 1"
    with pytest.raises(DelitError, match=r"--lora-rank 65: above the full rank .* \(at most 64"):
        add_lora(load_wan_vae("demo"), LoraSpec(rank=65))  # 10**8 was a failed 170 GB allocation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lr: [1, 2]\n", "lr must be a number, got [1, 2]"),
        ("lr: 1e-3\n", "lr must be a number, got '1e-3' (YAML reads 1e-3 as a string"),
        ("batch_size: 2.5\n", "batch_size must be an integer, got 2.5"),
        ("steps: true\n", "steps must be an integer or null, got True"),
        ("warmup_steps: 1e9\n", "warmup_steps must be an integer, got '1e9'"),
        ("betas: [0.9]\n", "betas must be a list of 2 values, got [0.9]"),
        ("model:\n  flat_width: -3\n", "model: flat_width must be >= 1, got -3"),
        ("model:\n  env_dim: wide\n", "model: env_dim must be an integer, got 'wide'"),
        ("model:\n  env_query_grid: [8, 0]\n", "model: env_query_grid must be >= 1, got (8, 0)"),
        ("model:\n  env_heads: 3\n", "model: env_dim 256 must be a multiple of env_heads 3"),
        ("model:\n  env_size: [100, 200]\n", "model: env_size (100, 200) must be env_query_grid"),
        ("sphere_env_size: [0, 0]\n", "sphere_env_size must be >= 1, got [0, 0]"),
        ("sphere_size: 0\n", "sphere_size must be >= 1, got 0"),
        ("sphere_diffuse_weight: -1\n", "sphere_diffuse_weight must be >= 0, got -1"),
        ("grad_clip: -1\n", "grad_clip must be >= 0, got -1"),
        ("warmup_steps: -5\n", "warmup_steps must be >= 0, got -5"),
        ("log_every: -1\n", "log_every must be >= 1, got -1"),
        ("min_lr_ratio: 5\n", "min_lr_ratio must be in [0, 1], got 5"),
        ("lr: 0.1\nsteps: 3\nlr: 0.2\n", "not valid YAML (duplicate key 'lr' on line 3)"),
        ("model:\n  env_dim: 64\n  env_dim: 32\n", "duplicate key 'env_dim' on line 3"),
    ],
)
def test_config_values_no_run_can_use_are_one_line(text, expected, tmp_path, cache_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert _train(cache_path, tmp_path / "run", str(config)) == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_binary_config_file_is_one_line(tmp_path, cache_path, capsys):
    config = tmp_path / "bin.yaml"
    config.write_bytes(bytes(range(256)))
    assert _train(cache_path, tmp_path / "run", str(config)) == 2
    assert "not a text file" in _one_error_line(capsys)


def test_running_out_of_memory_is_one_line(tmp_path, cache_path, monkeypatch, capsys):
    """An allocation failure (here: the CPU allocator's, raised at the first step) is one
    line that says what to lower, exit 2."""

    def fail(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate"
            " memory: you tried to allocate 409600000000 bytes."
        )

    monkeypatch.setattr(trainer_mod, "train_heads", fail)
    assert _train(cache_path, tmp_path / "run", "tiny", "--steps", "1") == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: out of memory (") and "lower --batch-size" in line


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(trainer_mod, "train_heads", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train-heads", "--cache", "c", "--out", "r", "--config", "tiny"])


def test_lora_negative_warmup_is_refused(tmp_path, capsys):
    from test_encode import write_shards

    shards = write_shards(tmp_path / "shards", 1)
    args = ["train-lora", *DEMO[:6], "--data", str(shards), "--out", str(tmp_path / "run")]
    assert main([*args, "--steps", "1", "--warmup-steps", "-1", "--no-progress"]) == 2
    assert _one_error_line(capsys) == "error: --warmup-steps -1: must be >= 0"


def test_light_direction_of_a_map_near_the_float_limit():
    """The light-direction error of a map against itself is 0 however bright the map (the
    centroid used to overflow float32 above about 1e30)."""
    from delit_cache.lighting.sphere_metrics import light_direction_error_deg

    env = torch.rand(1, 3, 128, 256, generator=torch.Generator().manual_seed(0)) * 1e-3
    env[..., 40:44, 60:64] = 1.0
    for scale in (1.0, 1e30, 3e38):
        err = light_direction_error_deg(env * scale, env * scale)
        assert float(err) < 0.1, (scale, float(err))  # acos near 1: float32 rounding


def test_a_png_whose_pixel_data_stops_early_is_refused(tmp_path, capsys):
    """A PNG whose compressed rows end cleanly after 3 of 40 (a well-formed IEND after them)
    decodes in Pillow with the missing rows black; delit names it instead."""
    import struct
    import zlib

    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 24, 3), 200, np.uint8)).save(good)
    data = good.read_bytes()
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    rows = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    short = zlib.compress(rows[: 3 * (1 + 24 * 3)])

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    cut = tmp_path / "cut.png"
    head = b"".join(chunk(k, b) for k, b in chunks if k not in (b"IDAT", b"IEND"))
    cut.write_bytes(data[:8] + head + chunk(b"IDAT", short) + chunk(b"IEND", b""))
    with Image.open(cut) as im:  # what Pillow alone makes of it: no error
        assert np.asarray(im.convert("RGB"))[-1].max() == 0
    out = tmp_path / "out"
    assert main(["infer", *DEMO, "--out", str(out), str(cut)]) == 2
    assert (
        _one_error_line(capsys)
        == f"error: {cut}: truncated PNG (pixel data ends after row 3 of 40)"
    )
    assert not out.exists()


def _edited_heads(path: Path, extra: str | None = None, **tensors) -> Path:
    """A SMALL heads file at ``path`` with its metadata ``extra`` text and some tensors
    replaced."""
    from safetensors import safe_open

    save_heads(create_heads(SMALL, seed=0), path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    state = {**load_file(str(path)), **tensors}
    save_file(state, str(path), metadata={**metadata, "extra": extra or metadata["extra"]})
    return path


@pytest.mark.parametrize("extra", ["[1,2]", "null", "{not json"])
def test_heads_whose_extra_is_not_a_json_object_are_one_line(extra, tmp_path, cache_path, capsys):
    heads = _edited_heads(tmp_path / "bad.safetensors", extra)
    out = tmp_path / "o"
    args = ["--checkpoint", str(heads), "--vae", "demo", "--device", "cpu", "--out", str(out)]
    assert main(["infer", *args, str(_photo(tmp_path / "p.png"))]) == 2
    assert _one_error_line(capsys).startswith(f"error: {heads}: metadata 'extra' ")
    assert not out.exists()
    assert _train(cache_path, tmp_path / "run", "tiny", "--init-from", str(heads)) == 2
    assert _one_error_line(capsys).startswith(f"error: {heads}: metadata 'extra' ")


@pytest.mark.parametrize(
    "extra, tensors, expected",
    [
        (None, {"latent_std": torch.zeros(16)}, "latent_std must be positive"),
        (None, {"latent_std": -torch.ones(16)}, "latent_std must be positive"),
        (None, {"features.stem.bias": torch.zeros(32, dtype=torch.int32)}, "stored as I32"),
        ('{"image_size": -64}', {}, "metadata image_size -64 is not a positive multiple of 8"),
        ('{"image_size": 63}', {}, "metadata image_size 63 is not"),
        ('{"image_size": true}', {}, "metadata image_size True is not"),
        ('{"image_size": "big"}', {}, "metadata image_size 'big' is not"),
    ],
)
def test_unusable_heads_are_refused_at_load_naming_the_checkpoint(
    extra, tensors, expected, tmp_path, capsys
):
    heads = _edited_heads(tmp_path / "bad.safetensors", extra, **tensors)
    out = tmp_path / "o"
    args = ["--checkpoint", str(heads), "--vae", "demo", "--device", "cpu", "--out", str(out)]
    assert main(["infer", *args, str(_photo(tmp_path / "p.png"))]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {heads}: ") and expected in line, line
    assert not out.exists()


# ---------------------------------------------------------------------------- outputs onto inputs


def _env_copy(path: Path) -> Path:
    shutil.copyfile(
        Path(__file__).resolve().parents[1] / "delit_cache/assets/demo_mean_env.exr", path
    )
    return path


@pytest.mark.parametrize(
    "command",
    ["envshow", "envmetrics", "sheet", "sheet-layout", "eval", "merge-lora-vae", "merge-lora"],
)
def test_an_output_onto_an_input_is_refused_in_one_line(command, tmp_path, capsys):
    from test_pack_check import write_layout

    exr, shard = _env_copy(tmp_path / "e1.exr"), _zero_env_shard(tmp_path / "dj")
    lora, vae = tmp_path / "l.safetensors", tmp_path / "v.safetensors"
    lora.write_bytes(b"lora")
    vae.write_bytes(b"vae")
    photo = write_layout(tmp_path / "src", stems=("a",)) / "relit" / "a.png"
    victim, args = {
        "envshow": (exr, ["envshow", str(exr), "--out", str(exr)]),
        "envmetrics": (exr, ["envmetrics", str(_env_copy(tmp_path / "p.exr")), str(exr), "--json", str(exr)]),
        "sheet": (shard, ["data", "sheet", str(shard.parent), "--out", str(shard)]),
        "sheet-layout": (photo, ["data", "sheet", str(tmp_path / "src"), "--out", str(photo)]),
        "eval": (shard, ["eval", *DEMO, "--data", str(shard.parent), "--json", str(shard)]),
        "merge-lora-vae": (vae, ["merge-lora", "--vae", str(vae), "--lora", str(lora), "--out", str(vae)]),
        "merge-lora": (lora, ["merge-lora", "--vae", "demo", "--lora", str(lora), "--out", str(lora)]),
    }[command]  # fmt: skip
    before = victim.read_bytes()
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    read = victim.parent if command == "sheet-layout" else victim  # relit/: inside it
    assert f"{victim}: this output " in err and f"the input {read};" in err
    assert victim.read_bytes() == before  # was: overwritten, exit 0


@pytest.mark.parametrize("name", ["x.jpg", "x.txt"])
def test_envshow_refuses_an_extension_it_does_not_write(name, tmp_path, capsys):
    out = tmp_path / name
    assert main(["envshow", str(_env_copy(tmp_path / "e.exr")), "--out", str(out)]) == 2
    assert (
        _one_error_line(capsys)
        == f"error: {out}: this output is written as .png; use that extension"
    )
    assert not out.exists()  # was: PNG bytes under a .jpg/.txt name


def test_train_heads_out_inside_the_cache_is_refused(tmp_path, cache_path, capsys):
    before = sorted(p.name for p in cache_path.iterdir())
    for out in (cache_path, cache_path / "run"):
        assert _train(cache_path, out, "tiny", "--steps", "2") == 2
        assert f"the input {cache_path}" in _one_error_line(capsys)
    assert sorted(p.name for p in cache_path.iterdir()) == before


def test_train_lora_out_that_is_its_heads_is_refused(tmp_path, capsys):
    run = tmp_path / "heads"
    save_heads(create_heads(SMALL, seed=0), run / "heads.safetensors")
    before = (run / "heads.safetensors").read_bytes()
    shard = _zero_env_shard(tmp_path / "dj")
    args = ["train-lora", "--checkpoint", str(run), "--vae", "demo", "--data", str(shard)]
    for out in (run, tmp_path / "c.zarr" / "lora"):
        cache = ["--cache", str(tmp_path / "c.zarr")]
        assert main([*args, *cache, "--out", str(out), "--steps", "1"]) == 2
        assert "choose" in _one_error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == ["heads.safetensors"]
    assert (run / "heads.safetensors").read_bytes() == before


def test_encode_into_a_folder_of_shards_names_it_and_leaves_no_lock(tmp_path, capsys):
    shard = _zero_env_shard(tmp_path / "dc")
    for out in (tmp_path / "dc", shard):
        args = ["encode", "--vae", "demo", "--data", str(shard), "--out", str(out), "--size", "64"]
        assert main([*args, "--device", "cpu"]) == 2
        what = "a file" if out == shard else "a folder of other files"
        assert _one_error_line(capsys) == (
            f"error: {out}: not a delit latent cache ({what}); pass a new path or an existing cache"
        )  # was: "no latent cache here (run delit encode first)"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dc", "shard-000000.tar"]


def test_infer_refuses_an_output_onto_an_input_photo(tmp_path, capsys):
    sk = tmp_path / "sk2"
    a, a_flat = _photo(sk / "a.png"), _photo(sk / "a_flat.png", size=(20, 12))
    before = a_flat.read_bytes()
    assert main(["infer", *DEMO, "--out", str(sk), str(sk)]) == 2
    err = _one_error_line(capsys)
    assert f"{a_flat}: the output of {a} would overwrite this input" in err
    assert sorted(p.name for p in sk.iterdir()) == ["a.png", "a_flat.png"]
    assert a_flat.read_bytes() == before  # was: a.png's output, and a_flat.png never read


def test_infer_replaces_only_its_own_outputs(tmp_path, capsys):
    """A rerun replaces what delit infer wrote (PNGs and the EXR carry its mark); a file of the
    same name that it did not write is refused in one line before anything is written."""
    out = tmp_path / "out"
    photo = _photo(tmp_path / "in" / "face.png")
    assert main(["infer", *DEMO, "--out", str(out), str(photo)]) == 0
    assert main(["infer", *DEMO, "--out", str(out), str(photo)]) == 0  # its own: replaced
    capsys.readouterr()
    for name in ("face_flat.png", "face_env.exr", "face_env.png"):
        user = out / name
        user.write_bytes(b"the user's own file")
        assert main(["infer", *DEMO, "--out", str(out), str(photo)]) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"error: {user}: exists and delit infer did not write it"), line
        assert user.read_bytes() == b"the user's own file"
        user.unlink()


def test_infer_takes_photos_named_like_outputs_and_skips_only_its_own(tmp_path, capsys, caplog):
    sk = tmp_path / "sk"
    _photo(sk / "me_flat.png"), _photo(sk / "you_env.png")
    assert main(["infer", *DEMO, "--out", str(sk), str(sk)]) == 0  # was: 0 done, exit 0
    assert capsys.readouterr().out == "delit infer: 2 image(s) done, 0 failed\n"
    outputs = {p.name for p in sk.iterdir()} - {"me_flat.png", "you_env.png"}
    assert len(outputs) == 6
    assert main(["infer", *DEMO, "--out", str(sk), str(sk)]) == 0  # its outputs are not inputs
    assert capsys.readouterr().out == "delit infer: 2 image(s) done, 0 failed\n"
    assert f"{sk}: skipping 4 image(s) that delit infer wrote" in caplog.text
    named = sk / "me_flat_flat.png"  # named explicitly: delighted like any photo
    assert main(["infer", *DEMO, "--out", str(sk), str(named)]) == 0
    assert (sk / "me_flat_flat_flat.png").is_file()


def test_demo_refuses_a_config_no_run_can_use_before_any_stage(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  env_dim: 64\n  env_heads: 3\n")
    args = ["demo", "--out", str(tmp_path / "d"), "--device", "cpu", "--init-from", "none"]
    assert main([*args, "--config", str(config)]) == 2
    assert "env_dim 64 must be a multiple of env_heads 3" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize(
    "flag, value", [("--n", "0"), ("--n", "-1"), ("--height", "0"), ("--height", "-8")]
)
def test_sheet_counts_below_1_are_refused(flag, value, tmp_path, capsys):
    from test_encode import write_shards

    shards = write_shards(tmp_path / "d", 2)
    out = tmp_path / "sh.png"
    args = ["data", "sheet", str(shards), "--out", str(out), "--n", "2", "--height", "16"]
    assert main([*args, flag, value]) == 2
    assert f"'{flag}'" in _one_error_line(capsys)
    assert not out.exists()


def test_encode_augment_above_the_limit_creates_nothing(tmp_path, capsys):
    from test_encode import write_shards

    shards = write_shards(tmp_path / "d", 1)
    out = tmp_path / "c.zarr"
    args = ["encode", "--vae", "demo", "--data", str(shards), "--out", str(out), "--size", "16"]
    assert main([*args, "--device", "cpu", "--augment", "1000000", "--no-progress"]) == 2
    assert _one_error_line(capsys) == "error: --augment 1000000: at most 1024 variants per sample"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_encode_whose_plan_fails_leaves_no_store_or_lock(tmp_path, capsys):
    from test_encode import write_shards

    a, b = write_shards(tmp_path / "a", 1), write_shards(tmp_path / "b", 1)  # the same key
    out = tmp_path / "c.zarr"
    args = ["encode", "--vae", "demo", "--data", str(a), "--data", str(b), "--out", str(out)]
    assert main([*args, "--size", "16", "--device", "cpu", "--no-progress"]) == 2
    assert "is in both" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.parametrize(
    "size_line, pixels", [(b"-Y 4 +X 8", b"\x02\x02\x00"), (b"-Y 100000 +X 200000", b"\0" * 45)]
)
def test_truncated_radiance_file_is_one_line(size_line, pixels, tmp_path, capsys):
    """A cut RLE scanline used to be a struct.error; a tiny file claiming 80 GB of pixels
    was reported as out of memory."""
    bad = tmp_path / "cut.hdr"
    bad.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + size_line + b"\n" + pixels)
    assert main(["envmetrics", str(bad), str(bad)]) == 2
    assert _one_error_line(capsys).startswith(f"error: {bad}: truncated Radiance file (")


def test_ctrl_c_while_the_commands_load_is_one_line_and_exit_130(monkeypatch, capsys):
    import cli.app as app_mod

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(app_mod, "load_commands", interrupted)
    try:
        code = main(["train-heads", "--help"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main")
    assert code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_sigint_during_start_up_has_no_traceback():
    """A real SIGINT while the commands load (delivered there, not timed) ends the process
    with one line and exit 130 (Python's own Ctrl-C handler set first: a job started in the
    background inherits SIGINT ignored)."""
    code = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
        "import cli.app as app\n"
        "load = app.load_commands\n"
        "def slow():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "    load()\n"
        "app.load_commands = slow\n"
        "app.main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "train-heads", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 130 and proc.stderr == "interrupted\n", (proc.returncode, proc.stderr)

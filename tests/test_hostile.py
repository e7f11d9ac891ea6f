"""Hostile inputs (issue 13): usage errors, non-finite numbers, damaged checkpoints, paths."""

from __future__ import annotations

import os
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
    assert not list((tmp_path / "out").iterdir())
    assert [r.getMessage() for r in caplog.records] == [f"error: {summary.failed[0]}"]


def test_infer_out_equal_to_input_folder_skips_its_own_outputs(tmp_path):
    from delit_cache.infer.delighter import collect_inputs, is_own_output

    for name in ("face.png", "face_flat.png", "face_env.png"):
        (tmp_path / name).write_bytes(b"")
    paths, _ = collect_inputs([tmp_path])
    kept = [p.name for p in paths if not is_own_output(p, tmp_path)]
    assert kept == ["face.png"]


def test_atomic_writes_keep_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
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

    for name in ("tiny", "demo", "default", "demo-heads", "demo-heads-finetune"):
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

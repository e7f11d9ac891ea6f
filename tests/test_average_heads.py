"""Checkpoint averaging (``delit average-heads``): the mean of the chosen steps, refusals."""

from __future__ import annotations

import os

import pytest
import torch

from cli.app import main
from delit_cache.models import DelitConfig, create_heads
from delit_cache.models.pretrained import heads_metadata, load_heads, save_heads
from delit_cache.train import state as trainstate
from delit_cache.train.averaging import write_averaged_run
from delit_cache.utils.errors import DelitError

SMALL = DelitConfig(extractor_width=32, extractor_blocks=1, flat_width=32, env_width=32, env_dim=64)
OTHER = DelitConfig(extractor_width=16, extractor_blocks=1, flat_width=32, env_width=32, env_dim=64)


def _checkpoint(run, step, config=SMALL, keep_last=10):
    heads = create_heads(config, seed=step % 1000)
    state = {"heads": heads.state_dict(), "optimizer": {}, "scheduler": {}, "step": step, "rng": {}}
    trainstate.save_checkpoint(run, state, step, keep_last=keep_last)
    return heads


def _finished_run(tmp_path, steps=(500, 999999, 1000000)):
    """A run folder with step checkpoints, final heads (the last step's) and its side files."""
    run = tmp_path / "run"
    heads = {s: _checkpoint(run, s) for s in steps}
    save_heads(heads[steps[-1]], run / "heads.safetensors", extra={"step": steps[-1]})
    (run / "config.yaml").write_text("steps: 3\n")
    (run / "mean_env.exr").write_bytes(b"not read, only copied")
    return run, heads


def test_mean_of_the_newest_steps_in_step_order(tmp_path):
    run, heads = _finished_run(tmp_path)
    out = write_averaged_run(run, tmp_path / "avg", last=2)  # 999999 and 1000000, not 500
    averaged = load_heads(out).state_dict()
    a, b = heads[999999].state_dict(), heads[1000000].state_dict()
    name = "features.stem.weight"
    assert not torch.equal(a[name], b[name])
    for k, v in averaged.items():
        torch.testing.assert_close(v, ((a[k].double() + b[k].double()) / 2).float())
    extra = heads_metadata(out)
    assert extra["averaged_steps"] == [999999, 1000000] and extra["step"] == 1000000
    assert (out / "config.yaml").read_text() == "steps: 3\n"
    assert (out / "mean_env.exr").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg", "run"]


def test_named_steps_and_cli(tmp_path, capsys):
    run, heads = _finished_run(tmp_path)
    assert (
        main(["average-heads", str(run), "--out", str(tmp_path / "avg"), "--steps", "500,1000000"])
        == 0
    )
    assert "averaged over 2 checkpoints" in capsys.readouterr().out
    k = "env_decoder.coarse.weight"
    want = (heads[500].state_dict()[k].double() + heads[1000000].state_dict()[k].double()) / 2
    torch.testing.assert_close(load_heads(tmp_path / "avg").state_dict()[k], want.float())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "500,500"], "named twice"),
        (["--steps", "500,7"], "step_000007.pt: no such checkpoint"),
        (["--steps", "5x"], "not a comma-separated list"),
        (["--steps", "500,-5"], "steps are positive numbers"),
        (["--last", "1"], "at least 2"),
        (["--last", "9"], "fewer than --last 9"),
        ([], "exactly one of --steps and --last"),
        (["--last", "2", "--steps", "500"], "exactly one of --steps and --last"),
    ],
)
def test_cli_refusals_name_the_problem(tmp_path, capsys, args, message):
    run, _ = _finished_run(tmp_path)
    assert main(["average-heads", str(run), "--out", str(tmp_path / "avg"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "avg").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_an_output_that_cannot_be_made_is_named(tmp_path, capsys):
    run, _ = _finished_run(tmp_path)
    out = "/proc/delit-average-heads-test"  # no one, root included, can make a folder there
    assert main(["average-heads", str(run), "--out", out, "--last", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{out}:" in err and ".partial" not in err and "Traceback" not in err


def test_refuses_unfinished_runs_existing_output_and_foreign_checkpoints(tmp_path):
    run, _ = _finished_run(tmp_path)
    with pytest.raises(DelitError, match="not a finished run folder"):
        write_averaged_run(tmp_path / "nothing", tmp_path / "avg", last=2)
    (tmp_path / "taken").mkdir()
    with pytest.raises(DelitError, match="exists already"):
        write_averaged_run(run, tmp_path / "taken", last=2)
    _checkpoint(run, 2000000, config=OTHER)  # another architecture among the steps
    with pytest.raises(DelitError, match=r"step_2000000\.pt: "):
        write_averaged_run(run, tmp_path / "avg", last=2)
    (run / "checkpoints" / "step_3000000.pt").write_bytes(b"\x00damaged" * 8)
    with pytest.raises(DelitError, match="unreadable checkpoint"):
        write_averaged_run(run, tmp_path / "avg", steps=[500, 3000000])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"]  # no avg, no avg.partial


def test_checkpoint_rotation_and_resume_order_steps_by_number(tmp_path):
    """Past step 999999 the file names grow a digit; the newest steps must still be the ones
    kept and resumed from (a name sort puts step_1000000.pt before step_999999.pt)."""
    run = tmp_path / "run"
    for step in (999998, 999999, 1000000, 1000001):
        _checkpoint(run, step, keep_last=2)
    folder = run / "checkpoints"
    assert [p.name for p in trainstate.step_files(folder)] == [
        "step_1000000.pt",
        "step_1000001.pt",
    ]
    (folder / "latest.pt").write_bytes(b"damaged")
    assert trainstate.load_resumable(run)["step"] == 1000001


def test_blend_averages_the_mean_half_and_half_with_other_heads(tmp_path, capsys):
    run, heads = _finished_run(tmp_path)
    start = create_heads(SMALL, seed=7)
    save_heads(start, tmp_path / "start.safetensors")
    args = ["--out", str(tmp_path / "soup"), "--last", "2", "--blend"]
    assert main(["average-heads", str(run), *args, str(tmp_path / "start.safetensors")]) == 0
    assert "then half and half with" in capsys.readouterr().out
    soup = load_heads(tmp_path / "soup").state_dict()
    a, b = heads[999999].state_dict(), heads[1000000].state_dict()
    c = start.state_dict()
    name = "env_decoder.coarse.weight"
    assert not torch.equal(((a[name] + b[name]) / 2), c[name])
    for k, v in soup.items():
        mean = (a[k].double() + b[k].double()) / 2
        torch.testing.assert_close(v, ((mean.float().double() + c[k].double()) / 2).float())
    assert heads_metadata(tmp_path / "soup")["blended_with"].endswith("start.safetensors")


def test_blend_refuses_other_architectures_and_missing_heads(tmp_path, capsys):
    run, _ = _finished_run(tmp_path)
    save_heads(create_heads(OTHER, seed=1), tmp_path / "other.safetensors")
    for bad, message in [
        ("other.safetensors", "other.safetensors: features.stem.weight is (16"),
        ("none", "none"),
    ]:
        args = ["--out", str(tmp_path / "soup"), "--last", "2", "--blend", str(tmp_path / bad)]
        assert main(["average-heads", str(run), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.safetensors", "run"]


@pytest.mark.parametrize(
    "extra, zero_std, expected",
    [
        ({"vae_fingerprint": "bbbb"}, False, "trained on latents of another VAE (fingerprint bbbb"),
        ({"image_size": 128}, False, "trained at size 128, these heads at 64"),
        ({}, True, "latent_std must be positive"),
    ],
)
def test_blend_refuses_heads_trained_otherwise(extra, zero_std, expected, tmp_path, capsys):
    run, heads = _finished_run(tmp_path)
    facts = {"step": 1000000, "vae_fingerprint": "aaaa", "image_size": 64}
    save_heads(heads[1000000], run / "heads.safetensors", extra=facts)
    other = create_heads(SMALL, seed=7)
    if zero_std:
        other.latent_std.zero_()
    save_heads(other, tmp_path / "other.safetensors", extra=extra)
    args = ["--out", str(tmp_path / "soup"), "--last", "2", "--blend"]
    assert main(["average-heads", str(run), *args, str(tmp_path / "other.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert "other.safetensors" in err
    assert not (tmp_path / "soup").exists()

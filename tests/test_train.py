"""delit train-heads: config, data order, run folder, checkpoints, exact resume after SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from delit_cache.cache import store as cm
from delit_cache.models.pretrained import heads_metadata, load_heads
from delit_cache.train.batches import Schedule, epoch_order
from delit_cache.train.config import TrainConfig, load_config, resolve_config_path
from delit_cache.train.optim import lr_lambda
from delit_cache.utils.errors import DelitError
from delit_cache.utils.faults import FAULT_ENV

SPEC = cm.CacheSpec(vae_fingerprint="feedbeef", vae_dim=8, image_size=32, encode_dtype="float32")


def make_random_cache(path, n: int = 8, seed: int = 0) -> cm.LatentCache:
    """A finished cache of ``n`` random samples (latents 4x4, smooth positive env maps)."""
    group = cm.open_store(path, SPEC, block_size=4)
    entries = [cm.Entry(f"r{i:02d}", "/nowhere.tar", 0) for i in range(n)]
    rng = np.random.default_rng(seed)
    for b in cm.plan_append(group, entries):
        k = len(cm.block_rows(group, b))
        relit = rng.standard_normal((k, 16, 4, 4)).astype(np.float32)
        coarse = rng.uniform(0.05, 3.0, (k, 3, 4, 8)).astype(np.float32)
        env = np.repeat(np.repeat(coarse, 32, axis=2), 32, axis=3)
        flat = 0.5 * relit + 0.1
        cm.write_block(group, b, {"relit_latent": relit, "flat_latent": flat, "env": env})
    return cm.LatentCache(path)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "cache.zarr"
    make_random_cache(path)
    return path


def write_config(path, **changes) -> str:
    """``configs/tiny.yaml`` with ``changes``, saved at ``path``."""
    data = yaml.safe_load(resolve_config_path("tiny").read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ----------------------------------------------------------------------------- config


def test_config_loading_and_overrides(tmp_path):
    cfg = load_config("tiny")
    assert cfg.steps == 200 and cfg.heads_config().extractor_width == 32
    assert load_config(None).epochs == TrainConfig().epochs
    default = load_config("default")
    assert default.heads_config() == __import__("delit_cache.models", fromlist=["x"]).DEFAULT_CONFIG
    cfg = load_config("tiny", {"epochs": 3, "lr": None})
    assert (cfg.epochs, cfg.steps, cfg.lr) == (3, None, 3.0e-3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(DelitError, match="unknown training config keys"):
        load_config(bad)
    with pytest.raises(DelitError, match="batch_size"):
        load_config("tiny", {"batch_size": 0})
    with pytest.raises(DelitError, match="schedule"):
        load_config(write_config(tmp_path / "s.yaml", schedule="linear"))
    with pytest.raises(DelitError, match="model"):
        load_config(write_config(tmp_path / "m.yaml", model={"width": 3}))
    with pytest.raises(DelitError, match="no such config"):
        load_config("does-not-exist")


def test_schedule_is_a_function_of_seed_and_epoch():
    s = Schedule(n=10, batch_size=3, world_size=1, seed=4)
    assert s.steps_per_epoch == 3
    epoch0 = torch.cat([s.positions(i, 0) for i in range(3)])
    assert len(set(epoch0.tolist())) == 9  # no repeats within an epoch
    assert torch.equal(s.positions(4, 0), Schedule(10, 3, 1, 4).positions(4, 0))
    assert not torch.equal(epoch_order(10, 4, 0), epoch_order(10, 4, 1))
    two = Schedule(n=10, batch_size=2, world_size=2, seed=4)
    a, b = two.positions(1, 0), two.positions(1, 1)
    assert len(a) == len(b) == 2 and not set(a.tolist()) & set(b.tolist())
    small = Schedule(n=3, batch_size=4, world_size=2, seed=0)  # fewer samples than a batch
    assert len(small.positions(0, 1)) == 4 and small.steps_per_epoch == 1


def test_lr_schedule():
    cfg = load_config("tiny", {"steps": 100})
    cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio = "cosine", 10, 0.1
    f = lr_lambda(cfg, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert 0.1 < f(55) < 1.0
    cfg.schedule = "constant"
    assert lr_lambda(cfg, 100)(70) == 1.0


# ----------------------------------------------------------------------------- a short run


def test_run_folder_with_old_spellings(tmp_path, cache_path, capsys):
    from cli.app import main
    from delit_cache.data.imageio import read_hdr

    config = write_config(tmp_path / "c.yaml", val_fraction=0.25, val_every=2, ckpt_every=1)
    run = tmp_path / "run"
    args = ["train-heads", "--data_root", str(cache_path), "--output_dir", str(run)]
    args += ["--config", config, "--num_epochs", "1", "--batch_size", "2", "--no-progress"]
    assert main(args) == 0
    assert "3 steps done" in capsys.readouterr().out  # 6 train samples / batch 2
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["batch_size"], saved["epochs"], saved["steps"]) == (2, 1, None)
    assert list((run / "tb").iterdir())
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["latest.pt", "step_000002.pt", "step_000003.pt"]  # keep_last 2
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 3 and {"heads", "optimizer", "scheduler", "rng"} <= set(state)
    heads = load_heads(run / "heads.safetensors")
    for k, v in heads.state_dict().items():
        torch.testing.assert_close(v, state["heads"][k])
    c = cm.LatentCache(cache_path)
    train_idx, val_idx = c.split(0.25, seed=0)
    mean, std = c.latent_stats(train_idx)  # the heads standardise with the training split's
    assert torch.equal(heads.latent_mean, mean) and torch.equal(heads.latent_std, std)
    extra = heads_metadata(run / "heads.safetensors")
    assert extra["step"] == 3 and extra["vae_fingerprint"] == "feedbeef"
    assert extra["image_size"] == 32 and extra["encode_dtype"] == "float32"
    assert len(train_idx) == 6 and len(val_idx) == 2
    mean_env = read_hdr(run / "mean_env.exr")  # [H,W,3]
    np.testing.assert_allclose(
        mean_env.transpose(2, 0, 1), c.mean_env(train_idx).numpy(), rtol=1e-5
    )
    # refusals: an existing run without --resume, a changed value on --resume, no run to resume
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--lr", "0.1"]) == 2
    assert "differs" in capsys.readouterr().err
    assert main([*args[:4], str(tmp_path / "new"), *args[5:], "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train-heads", "--cache", str(tmp_path / "nope.zarr"), "--out", str(run)]) == 2
    assert "no latent cache" in capsys.readouterr().err


def _train_cmd(cache_path, run, config, *extra):
    cmd = [sys.executable, "-m", "cli", "train-heads", "--cache", str(cache_path)]
    return [*cmd, "--out", str(run), "--config", config, "--steps", "6", "--no-progress", *extra]


def test_resume_after_sigkill_is_exact(tmp_path, cache_path):
    config = write_config(
        tmp_path / "c.yaml", batch_size=2, ckpt_every=3, val_fraction=0.25, val_every=3,
        schedule="cosine", warmup_steps=2,
    )  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run_kw = {"env": env, "capture_output": True, "text": True, "timeout": 240}
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = subprocess.run(_train_cmd(cache_path, full, config), **run_kw)
    assert done.returncode == 0, done.stderr[-2000:]
    kill_at_3 = run_kw | {"env": env | {FAULT_ENV: "train.step:3:kill"}}
    killed = subprocess.run(_train_cmd(cache_path, cut, config), **kill_at_3)
    assert killed.returncode == -9  # SIGKILL after the step-3 checkpoint
    assert not (cut / "heads.safetensors").exists()
    state = torch.load(cut / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 3
    resumed = subprocess.run(_train_cmd(cache_path, cut, config, "--resume"), **run_kw)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_heads(full / "heads.safetensors").state_dict()
    b = load_heads(cut / "heads.safetensors").state_dict()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-6
    opt_a = torch.load(full / "checkpoints" / "latest.pt", weights_only=True)["optimizer"]
    opt_b = torch.load(cut / "checkpoints" / "latest.pt", weights_only=True)["optimizer"]
    assert opt_a["param_groups"][0]["lr"] == opt_b["param_groups"][0]["lr"]


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_mixed_precision_auto_and_bf16_train_on_cpu(tmp_path, cache_path, precision, caplog):
    import logging

    from cli.app import main

    config = write_config(tmp_path / "c.yaml", val_fraction=0.0, val_every=0)
    run = tmp_path / "run"
    args = ["-v", "train-heads", "--cache", str(cache_path), "--out", str(run)]
    args += ["--config", config, "--steps", "2", "--batch-size", "2"]
    args += ["--mixed-precision", precision, "--device"]
    with caplog.at_level(logging.DEBUG, logger="delit"):
        assert main([*args, "cpu", "--no-progress"]) == 0
    heads = load_heads(run / "heads.safetensors")
    assert all(p.isfinite().all() for p in heads.parameters())
    assert yaml.safe_load((run / "config.yaml").read_text())["mixed_precision"] == precision
    used = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training on")]
    assert used and ("bf16" in used[0]) == (precision == "bf16" or has_fast_bf16_cpu())


def has_fast_bf16_cpu() -> bool:
    from delit_cache.utils.device import has_fast_bf16

    return has_fast_bf16(torch.device("cpu"))


def test_unknown_mixed_precision_is_refused():
    with pytest.raises(DelitError, match="mixed_precision"):
        load_config("tiny", {"mixed_precision": "fp8"})


def test_init_from_starts_at_the_given_heads_and_checks_them(tmp_path, cache_path):
    from cli.app import main
    from delit_cache.train.trainer import initial_heads

    config = write_config(tmp_path / "c.yaml", val_fraction=0.0, val_every=0)
    first = tmp_path / "first"
    args = ["train-heads", "--cache", str(cache_path), "--config", config, "--no-progress"]
    assert main([*args, "--out", str(first), "--steps", "2", "--batch-size", "2"]) == 0
    source = load_heads(first / "heads.safetensors").state_dict()
    cache = cm.LatentCache(cache_path)
    cfg = load_config(config, {"init_from": str(first), "seed": 5})
    started = initial_heads(cfg, cache, list(range(len(cache)))).state_dict()
    assert source.keys() == started.keys()
    assert all(torch.equal(source[k], started[k]) for k in source)  # weights and latent stats
    # a fine-tuning run is a normal run that starts there
    ft_config = write_config(
        tmp_path / "ft.yaml", val_fraction=0.0, val_every=0, init_from=str(first)
    )
    ft_args = ["train-heads", "--cache", str(cache_path), "--config", ft_config, "--no-progress"]
    ft = tmp_path / "ft"
    assert main([*ft_args, "--out", str(ft), "--steps", "1", "--batch-size", "2"]) == 0
    tuned = load_heads(ft / "heads.safetensors").state_dict()
    assert torch.equal(tuned["latent_std"], source["latent_std"])
    assert any(not torch.equal(tuned[k], source[k]) for k in source)  # one step was taken
    model = dict(cfg.model, feature_channels=cfg.heads_config().feature_channels + 8)
    other = load_config(config, {"init_from": str(first), "model": model})
    with pytest.raises(DelitError, match="other architecture: feature_channels"):
        initial_heads(other, cache, [0])
    wrong = load_config(config, {"init_from": str(tmp_path / "missing")})
    with pytest.raises(DelitError):
        initial_heads(wrong, cache, [0])


def test_init_from_grows_heads_that_start_where_they_were(tmp_path, cache_path):
    """More flat blocks, more env-decoder layers, a light head and a background matte may be
    added to trained heads: they start almost where they were (the env map exactly, the matte
    0.25 % open); shrinking is refused."""
    from cli.app import main
    from delit_cache.train.trainer import initial_heads

    config = write_config(tmp_path / "c.yaml", val_fraction=0.0, val_every=0)
    first = tmp_path / "first"
    args = ["train-heads", "--cache", str(cache_path), "--config", config, "--no-progress"]
    assert main([*args, "--out", str(first), "--steps", "2", "--batch-size", "2"]) == 0
    cfg = load_config(config)
    env_layers = cfg.heads_config().env_layers + 1
    grown_model = dict(
        cfg.model, flat_blocks=3, light_head=True, flat_matte=True, env_layers=env_layers
    )
    grown_cfg = load_config(config, {"init_from": str(first), "model": grown_model})
    cache = cm.LatentCache(cache_path)
    grown = initial_heads(grown_cfg, cache, [0]).eval()
    source = load_heads(first / "heads.safetensors").eval()
    assert grown.num_parameters() > source.num_parameters()
    relit = torch.from_numpy(cache.read("relit_latent", [0, 1]))
    with torch.no_grad():
        before, after = source(relit), grown(relit)
    change = (after["flat_latent"] - before["flat_latent"]).abs()  # the matte starts at 0.25 %
    assert (
        change.max()
        <= 0.0026 * (before["flat_latent"] - source.latent_mean[:, None, None]).abs().max()
    )
    torch.testing.assert_close(after["env_code"], before["env_code"])
    assert after["light_dir"].shape == (2, 3)
    # and the grown heads train (the light head's term on) and save
    grown_yaml = write_config(
        tmp_path / "g.yaml", val_fraction=0.0, val_every=0, model=grown_model, light_head_weight=1.0
    )
    g_args = ["train-heads", "--cache", str(cache_path), "--config", grown_yaml, "--no-progress"]
    run = tmp_path / "grown"
    steps = ["--steps", "1", "--batch-size", "2", "--init-from", str(first)]
    assert main([*g_args, "--out", str(run), *steps]) == 0
    trained = load_heads(run / "heads.safetensors")
    assert trained.config.light_head and trained.config.env_layers == env_layers
    assert trained.env_decoder.layers[-1].mlp[-1].weight.abs().sum() > 0  # the new layer trains
    shrunk = load_config(config, {"init_from": str(run)})
    shrunk_env = rf"other architecture: env_layers {env_layers} \(config: {env_layers - 1}\)"
    with pytest.raises(DelitError, match=shrunk_env + r", flat_blocks 3 \(config: 1\)"):
        initial_heads(shrunk, cache, [0])


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_train_only_fits_a_new_light_head_and_holds_the_rest_fixed(
    in_memory, tmp_path, cache_path, capsys
):
    """train_only: the named part trains, every other tensor comes back bit for bit (the light
    head's inputs computed once at load, or per batch when the data stays on disk); a prefix
    naming nothing, and a run whose weighted terms cannot reach the part, are refused with one
    line."""
    from cli.app import main

    config = write_config(tmp_path / "c.yaml", val_fraction=0.0, val_every=0)
    first = tmp_path / "first"
    args = ["train-heads", "--cache", str(cache_path), "--no-progress", "--batch-size", "2"]
    assert main([*args, "--config", config, "--out", str(first), "--steps", "2"]) == 0
    model = {**load_config(config).model, "light_head": True}
    only = dict(val_fraction=0.0, val_every=0, model=model, train_only=["env_decoder.light_head"])
    light = write_config(tmp_path / "l.yaml", light_head_weight=1.0, in_memory=in_memory, **only)
    run = tmp_path / "light"
    steps = ["--steps", "3", "--init-from", str(first)]
    assert main([*args, "--config", light, "--out", str(run), *steps]) == 0
    before = load_heads(first / "heads.safetensors").state_dict()
    after = load_heads(run / "heads.safetensors").state_dict()
    moved = {k for k in after if k not in before or not torch.equal(after[k], before[k])}
    assert moved and all(k.startswith("env_decoder.light_head.") for k in moved), moved
    assert load_config(light).train_only == ("env_decoder.light_head",)

    nothing = write_config(
        tmp_path / "n.yaml", light_head_weight=1.0, **{**only, "train_only": ["nope"]}
    )
    capsys.readouterr()
    assert main([*args, "--config", nothing, "--out", str(tmp_path / "n"), *steps]) == 2
    assert "train_only: 'nope' names no parameter" in capsys.readouterr().err
    unreached = write_config(tmp_path / "u.yaml", **only)  # no light-head term
    assert main([*args, "--config", unreached, "--out", str(tmp_path / "u"), *steps]) == 2
    assert "no loss term with a weight above 0 reaches" in capsys.readouterr().err


def test_train_only_must_be_a_list_of_names():
    with pytest.raises(DelitError, match="train_only must be a list of strings"):
        load_config("tiny", {"train_only": [1]})


def test_light_head_loss_needs_a_light_head():
    with pytest.raises(DelitError, match=r"light_head_weight needs model\.light_head"):
        load_config("tiny", {"light_head_weight": 1.0})


@pytest.mark.parametrize(
    "train_only, world_size, alone",
    [
        (["env_decoder.light_head"], 1, True),
        (["env_decoder.light_head.out"], 1, True),
        (["env_decoder.light_head", "env_decoder.head"], 1, False),
        (["env_decoder"], 1, False),
        ([], 1, False),
        (["env_decoder.light_head"], 2, False),  # DDP syncs the whole heads' gradients
    ],
)
def test_the_light_head_alone_reads_inputs_computed_once(train_only, world_size, alone):
    from delit_cache.train.distributed import DistInfo
    from delit_cache.train.trainer import trains_light_head_alone

    cfg = load_config("tiny", {"train_only": train_only})
    info = DistInfo(rank=0, world_size=world_size, local_rank=0)
    assert trains_light_head_alone(cfg, info) is alone

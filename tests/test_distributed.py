"""Two CPU processes under torchrun (gloo): sharded encode and DDP training match one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_encode import write_shards
from test_train import make_random_cache, write_config

from delit_cache.cache import store as cm
from delit_cache.models.pretrained import load_heads

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-1500:], done.stderr[-3000:])
    return done


@pytest.mark.slow
def test_two_process_encode_matches_one(tmp_path, tiny_vae_pth):
    shards = write_shards(tmp_path / "shards", 7)
    args = ["encode", "--vae", str(tiny_vae_pth), "--data", str(shards), "--size", "32"]
    args += ["--block-size", "2", "--batch-size", "2", "--augment", "2", "--no-progress"]
    _run([*TORCHRUN, "-m", "cli", *args, "--out", str(tmp_path / "two.zarr")])
    _run([sys.executable, "-m", "cli", *args, "--out", str(tmp_path / "one.zarr")])
    one, two = cm.LatentCache(tmp_path / "one.zarr"), cm.LatentCache(tmp_path / "two.zarr")
    assert len(two) == 14 and two.keys == one.keys
    for name in cm.DATA_ARRAYS:
        np.testing.assert_allclose(two.read(name), one.read(name), atol=1e-6)
    # appending with two processes: only the new shard is encoded
    more = write_shards(tmp_path / "more", 2, seed=3, start=9)
    _run(
        [
            *TORCHRUN,
            "-m",
            "cli",
            *args[:4],
            str(more),
            *args[5:],
            "--out",
            str(tmp_path / "two.zarr"),
        ]
    )
    assert len(cm.LatentCache(tmp_path / "two.zarr")) == 18


@pytest.mark.slow
@pytest.mark.parametrize("world", [2])
def test_ddp_training_matches_one_process_with_the_global_batch(tmp_path, world):
    cache = tmp_path / "cache.zarr"
    make_random_cache(cache, n=8)
    config = write_config(tmp_path / "c.yaml", warmup_steps=0, val_fraction=0.0, ckpt_every=10)
    base = ["-m", "cli", "train-heads", "--cache", str(cache), "--config", config]
    base += ["--steps", "2", "--no-progress"]
    _run([*TORCHRUN, *base, "--out", str(tmp_path / "ddp"), "--batch-size", "1"])
    _run([sys.executable, *base, "--out", str(tmp_path / "one"), "--batch-size", str(world)])
    a = load_heads(tmp_path / "ddp").state_dict()
    b = load_heads(tmp_path / "one").state_dict()
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Adam's first steps move each weight by about +-lr whatever the gradient's size, so a
    # weight whose gradient is ~0 may flip on float noise (<= 2 lr per step); all others agree.
    assert (diffs <= 1e-5).float().mean() > 0.995  # measured 0.9989
    assert diffs.max() <= 2 * 2 * 3.0e-3
    moved = max((a[k] - v).abs().max().item() for k, v in _initial(config).items())
    assert moved > 1e-3  # training did change the weights


def _initial(config: str) -> dict[str, torch.Tensor]:
    from delit_cache.models.heads import create_heads
    from delit_cache.train.config import load_config

    cfg = load_config(config)
    return create_heads(cfg.heads_config(), seed=cfg.seed).state_dict()

"""End to end on CPU: delit synth -> delit encode (narrow test VAE) -> delit train-heads.

Eight synthetic 64x64 samples; the tiny heads config must lower both the flat-latent loss
and the env loss (four-channel encoding) at least 10x on those samples, as measured on all
eight before training (the seeded initial heads) and after.
"""

from __future__ import annotations

import time

import pytest

from cli.app import main
from delit_cache.cache.store import LatentCache
from delit_cache.models.pretrained import load_heads
from delit_cache.train.config import load_config
from delit_cache.train.losses import cache_losses
from delit_cache.train.trainer import initial_heads

STEPS = 400
BATCH = 4


@pytest.mark.slow
def test_tiny_heads_overfit_eight_synthetic_samples(tmp_path, tiny_vae_pth, capsys):
    start = time.perf_counter()
    assert main(["synth", "--out", str(tmp_path / "shards"), "--n", "8", "--size", "64"]) == 0
    cache_path = tmp_path / "cache.zarr"
    enc = ["encode", "--vae", str(tiny_vae_pth), "--data", str(tmp_path / "shards")]
    enc += ["--out", str(cache_path), "--size", "64", "--block-size", "8", "--no-progress"]
    assert main(enc) == 0
    cache = LatentCache(cache_path)
    assert len(cache) == 8
    run = tmp_path / "run"
    train = ["train-heads", "--cache", str(cache_path), "--out", str(run), "--config", "tiny"]
    assert main([*train, "--steps", str(STEPS), "--batch-size", str(BATCH), "--no-progress"]) == 0
    elapsed = time.perf_counter() - start
    cfg = load_config("tiny")
    initial = initial_heads(cfg, cache, cache.split(cfg.val_fraction, cfg.seed)[0])
    before = cache_losses(initial, cache, cfg)
    after = cache_losses(load_heads(run / "heads.safetensors"), cache, cfg)
    print(f"overfit: flat {before[0]:.4f} -> {after[0]:.4f}, env {before[1]:.4f} -> {after[1]:.4f}")
    print(f"overfit: {elapsed:.0f} s for synth + encode + {STEPS} steps")
    assert after[0] * 10 <= before[0], (before, after)
    assert after[1] * 10 <= before[1], (before, after)

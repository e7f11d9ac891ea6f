"""End to end on CPU: delit synth -> delit encode (narrow test VAE) -> delit train-heads.

Eight synthetic 64x64 samples; the tiny heads config must lower both the flat-latent loss
and the env loss (four-channel encoding) at least 10x on those samples, as measured on all
eight before training (the seeded initial heads) and after.
"""

from __future__ import annotations

import time

import pytest
import torch

from cli.app import main
from delit_cache.cache import LatentCache
from delit_cache.checkpoint import load_heads
from delit_cache.envcode import encode_env
from delit_cache.losses import env_code_loss, flat_loss
from delit_cache.models.heads import create_heads
from delit_cache.trainconfig import load_config

STEPS = 300


@torch.no_grad()
def _losses(heads, cache: LatentCache, cfg) -> tuple[float, float]:
    relit = torch.from_numpy(cache.read("relit_latent"))
    flat = torch.from_numpy(cache.read("flat_latent"))
    code = encode_env(torch.from_numpy(cache.read("env")))
    out = heads.eval()(relit)
    env, _, _ = env_code_loss(out["env_code"], code, cfg.env_log_weight)
    return float(flat_loss(out["flat_latent"], flat, cfg.flat_loss)), float(env)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-11-27 (2 CPU cores): after 300 steps the flat loss drops ~5x and the "
    "env loss ~5x, not 10x; the heads need more work (see the issue notes)",
)
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
    assert main([*train, "--steps", str(STEPS), "--batch-size", "2", "--no-progress"]) == 0
    elapsed = time.perf_counter() - start
    cfg = load_config("tiny")
    before = _losses(create_heads(cfg.heads_config(), seed=cfg.seed), cache, cfg)
    after = _losses(load_heads(run / "heads.safetensors"), cache, cfg)
    print(f"overfit: flat {before[0]:.4f} -> {after[0]:.4f}, env {before[1]:.4f} -> {after[1]:.4f}")
    print(f"overfit: {elapsed:.0f} s for synth + encode + {STEPS} steps")
    assert after[0] * 10 <= before[0], (before, after)
    assert after[1] * 10 <= before[1], (before, after)

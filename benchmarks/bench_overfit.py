"""The CPU overfit check of issue #5, timed: synth -> encode -> train-heads on 8 samples.

Usage (from the repository root)::

    python benchmarks/bench_overfit.py --steps 400 --batch-size 4

Makes a narrow random Wan VAE (``VideoVAE_`` of width 8, saved in the original key layout),
eight synthetic 64 x 64 samples, encodes them and trains the ``tiny`` heads config on them,
all through the ``delit`` CLI in a temporary folder (deleted afterwards). Prints the time of
each stage and the flat-latent and env-code losses over the eight samples before training
(the run's step-0 heads: seeded init plus the cache's latent statistics) and after. The target
is both losses down at least 10x in under 2 minutes; ``tests/test_overfit.py`` asserts the 10x.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import torch

from cli.app import main as delit
from delit_cache.cache.store import LatentCache
from delit_cache.models.pretrained import load_heads
from delit_cache.train.config import load_config
from delit_cache.train.losses import cache_losses
from delit_cache.train.trainer import initial_heads
from delit_cache.utils.machine import device_name
from delit_cache.vae import new_wan_vae


def run(work: Path, steps: int, batch_size: int, vae_seed: int) -> dict:
    times: dict[str, float] = {}
    t = time.perf_counter()
    torch.save(new_wan_vae(dim=8, seed=vae_seed).model.state_dict(), work / "vae.pth")
    assert delit(["synth", "--out", str(work / "shards"), "--n", "8", "--size", "64"]) == 0
    times["vae + synth"] = time.perf_counter() - t
    t = time.perf_counter()
    cache_path = str(work / "cache.zarr")
    enc = ["encode", "--vae", str(work / "vae.pth"), "--data", str(work / "shards")]
    assert delit([*enc, "--out", cache_path, "--size", "64", "--no-progress"]) == 0
    times["encode"] = time.perf_counter() - t
    t = time.perf_counter()
    train = ["train-heads", "--cache", cache_path, "--out", str(work / "run"), "--config", "tiny"]
    train += ["--steps", str(steps), "--batch-size", str(batch_size), "--no-progress"]
    assert delit(train) == 0
    times["train-heads"] = time.perf_counter() - t
    cache = LatentCache(cache_path)
    cfg = load_config("tiny")
    initial = initial_heads(cfg, cache, cache.split(cfg.val_fraction, cfg.seed)[0])
    before = cache_losses(initial, cache, cfg)
    after = cache_losses(load_heads(work / "run"), cache, cfg)
    return {"times": times, "before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--vae-seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = run(Path(tmp), args.steps, args.batch_size, args.vae_seed)
    total = sum(res["times"].values())
    print(f"# overfit check: 8 samples, tiny config, {args.steps} steps, batch {args.batch_size}")
    print(f"# {device_name('cpu')}, {datetime.date.today()}")
    print(f"{'stage':16s} {'seconds':>8s}")
    for name, sec in res["times"].items():
        print(f"{name:16s} {sec:8.1f}")
    print(f"{'total':16s} {total:8.1f}")
    print(f"\n{'loss':6s} {'before':>9s} {'after':>9s} {'drop':>7s}")
    for i, name in enumerate(("flat", "env")):
        b, a = res["before"][i], res["after"][i]
        print(f"{name:6s} {b:9.4f} {a:9.4f} {b / a:6.1f}x")


if __name__ == "__main__":
    main()

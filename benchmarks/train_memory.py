"""What ``delit train-heads`` holds in memory for a cache: the estimate ``in_memory: auto``
decides by, what the loaded arrays take, and the process's peak resident memory.

Loads the training data as the trainer does (``CacheData`` with the config's loss targets,
env maps dropped) and prints one table row, with the date, machine and command.

    python benchmarks/train_memory.py --cache WORK/train.zarr --config configs/demo-heads.yaml
"""

from __future__ import annotations

import argparse
import functools
import resource
import shlex
import sys
import time
from pathlib import Path

from delit_cache.cache.store import LatentCache
from delit_cache.train.batches import CacheData, Derived, in_memory_bytes
from delit_cache.train.config import load_config
from delit_cache.train.losses import loss_targets
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import emit_report, run_header

MIB = 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path, help="a latent cache")
    parser.add_argument("--config", required=True, help="training config (path or name)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        cache = LatentCache(args.cache)
    except DelitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    targets = functools.partial(loss_targets, cfg=cfg)
    indices = list(range(len(cache)))
    start = time.perf_counter()
    derived = Derived(targets, keep_env=False)
    estimate = in_memory_bytes(cache, len(indices), derived)
    data = CacheData(cache, indices, True, derived)
    seconds = time.perf_counter() - start
    held = sum(a.numel() * a.element_size() for a in (data.arrays or {}).values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    command = (
        f"python benchmarks/train_memory.py {shlex.join(sys.argv[1:] if argv is None else argv)}"
    )
    lines = [
        *run_header("Training data in memory", command),
        "",
        "| samples | estimate (MiB) | held (MiB) | peak RSS (MiB) | load (s) |",
        "|" + " --- |" * 5,
        f"| {len(indices)} | {estimate / MIB:.0f} | {held / MIB:.0f} | {peak / MIB:.0f} "
        f"| {seconds:.0f} |",
    ]
    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Synthetic data speed: samples/s of ``delit synth`` (render + encode + shard writing).

Usage (from the repository root)::

    python benchmarks/bench_synth.py --n 200 --size 256 --workers 2

Runs ``delit_cache.synth.writer.synth`` into a temporary folder (deleted afterwards) and times
it end to end, worker start-up included; "steady" leaves out the time until the first sample
arrives. Because the wall-clock rate depends on what else runs on the machine, the table also
gives the CPU seconds per sample (workers and main process, start-up included) and the rate
that implies when ``--workers`` cores are free: ``workers / cpu_seconds_per_sample``. Each worker process uses one torch thread. Prints a table with the CPU model and the
date; ``--json FILE`` also writes the numbers. The target is >= 10 samples/s at 256 x 256 with
two workers on two CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from delit_cache.data.shards import iter_samples
from delit_cache.synth import writer
from delit_cache.utils.machine import cpu_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="samples to render (default 200)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hdri-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    first: list[float] = []
    load = os.getloadavg()
    orig = writer.ShardWriter.write

    def timed_write(self, sample):  # records when the first sample arrives
        if not first:
            first.append(time.perf_counter())
        return orig(self, sample)

    with tempfile.TemporaryDirectory() as tmp:
        writer.ShardWriter.write = timed_write
        try:
            r0 = (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
            t0 = time.perf_counter()
            writer.synth(Path(tmp) / "shards", args.n, args.size, args.hdri_dir, args.seed,
                         args.workers, shard_size=1000, progress=False)  # fmt: skip
            t1 = time.perf_counter()
            r1 = (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        finally:
            writer.ShardWriter.write = orig
        n_read = sum(1 for _ in iter_samples(Path(tmp) / "shards"))
    assert n_read == args.n, f"wrote {n_read} samples, expected {args.n}"
    cpu = sum(
        b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(r0, r1, strict=True)
    )
    steady = (args.n - 1) / max(t1 - first[0], 1e-9) if args.n > 1 else float("nan")
    return {
        "samples_per_s": args.n / (t1 - t0),
        "steady_samples_per_s": steady,
        "seconds": t1 - t0,
        "cpu_seconds_per_sample": cpu / args.n,
        "cpu_bound_samples_per_s": min(args.workers, os.cpu_count() or 1) * args.n / cpu,
        "n": args.n,
        "size": args.size,
        "workers": args.workers,
        "torch_threads_per_worker": 1,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_before": " ".join(f"{x:.1f}" for x in load),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    res = run(args)
    rows = [
        ("samples/s (end to end)", f"{res['samples_per_s']:.2f}"),
        ("samples/s (steady)", f"{res['steady_samples_per_s']:.2f}"),
        ("CPU s/sample (all processes)", f"{res['cpu_seconds_per_sample']:.3f}"),
        ("samples/s if cores were free", f"{res['cpu_bound_samples_per_s']:.2f}"),
        ("load average before", res["load_before"]),
        ("samples", str(res["n"])),
        ("seconds", f"{res['seconds']:.1f}"),
        ("size", f"{res['size']} x {res['size']}"),
        ("workers", str(res["workers"])),
        ("torch threads", "1 per worker"),
        ("CPU", f"{res['cpu']} ({res['cpu_count']} cores visible)"),
        ("torch", res["torch"]),
        ("date", res["date"]),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}} | value")
    print(f"{'-' * width}-+-{'-' * 30}")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

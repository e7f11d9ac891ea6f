"""`delit infer` on one photo, process start included: the lazy start-up against the plain one.

Usage (from the repository root)::

    python benchmarks/infer_cpu.py                       # 512 x 512, 3 runs of each path
    python benchmarks/infer_cpu.py --out benchmarks/results/cpu-infer.md
    python benchmarks/infer_cpu.py --size 64 --runs 1    # a quick check (the tests run this)

The photo is a synthetic portrait (``delit synth``'s first sample of seed 0) at ``--size``.
Each run is a fresh process, ``python -m delit_cli infer PHOTO --vae demo --checkpoint demo
--out DIR --device cpu``, timed from spawn to exit (wall) with its CPU time (user + sys,
from the child's resource usage). Paths, interleaved run by run so that a change in the
machine's load hits both:

- ``lazy``: the command as shipped (DiffSynth's VAE module file loaded alone);
- ``plain``: the same command after ``import diffsynth.models.wan_video_vae``, the import it
  used to do (the whole DiffSynth package: transformers, its attention and data code);
- ``lazy, 1 thread``: the lazy path with ``OMP_NUM_THREADS=1``: on a shared machine two
  torch threads spin while they wait for each other, so this row's CPU time is the closest
  to the work itself;
- ``lazy, --dtype bfloat16``: the lazy path with the VAE in bf16 (fast on CPUs with AMX or
  AVX512-BF16; the outputs differ from float32 within bf16 rounding);
- ``import torch``: a process that only imports torch, the floor of any start-up.

Then, in this process, the model alone: ``Delighter.predict`` on the photo after one warm-up
run (median of ``--runs``). The machine may be shared: the load average is printed; CPU time
is less sensitive to it than wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN_PRELUDE = "import diffsynth.models.wan_video_vae; "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="photo side in pixels (default 512)")
    p.add_argument("--runs", type=int, default=3, help="processes per path (default 3)")
    p.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    return p.parse_args(argv)


def make_photo(path: Path, size: int) -> Path:
    """A synthetic portrait (``delit synth``'s seed 0, sample 0) as a ``size x size`` PNG:
    a photo's content, so reading it and writing the outputs cost what they do for one."""
    from delit_cache.data.imageio import write_png
    from delit_cache.synth.compose import render_sample

    relit, _ = render_sample(seed=0, index=0, size=size).display()
    write_png(path, relit)
    return path


def timed_process(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd`` to completion; (wall seconds, CPU seconds). Raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr[-400:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def commands(photo: Path, out: Path) -> dict[str, list[str]]:
    args = [str(photo), "--vae", "demo", "--checkpoint", "demo", "--out", str(out)]
    args += ["--device", "cpu"]
    run = f"from delit_cli.app import main; main({['infer', *args]!r})"
    lazy = [sys.executable, "-m", "delit_cli", "infer", *args]
    return {
        "lazy (as shipped)": lazy,
        "plain (whole diffsynth imported)": [sys.executable, "-c", PLAIN_PRELUDE + run],
        "lazy, 1 thread (OMP_NUM_THREADS=1)": lazy,
        "lazy, --dtype bfloat16": [*lazy, "--dtype", "bfloat16"],
        "import torch only": [sys.executable, "-c", "import torch"],
    }


def model_seconds(photo: Path, runs: int) -> float:
    """Median seconds of ``Delighter.predict`` on the photo, after one warm-up run."""
    from delit_cache.data.imageio import read_ldr
    from delit_cache.infer.delighter import Delighter, to_image_tensor

    delighter = Delighter.from_pretrained("demo", "demo", device="cpu")
    image = to_image_tensor(read_ldr(photo))
    delighter.predict([image])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        delighter.predict([image])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(size: int, runs: int) -> list[dict]:
    """One row per path: median and min wall seconds, median CPU seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        photo = make_photo(Path(tmp) / "photo.png", size)
        cmds = commands(photo, Path(tmp) / "out")
        walls: dict[str, list[float]] = {name: [] for name in cmds}
        cpus: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(runs):
            for name, cmd in cmds.items():
                env = os.environ | {"OMP_NUM_THREADS": "1"} if "1 thread" in name else None
                wall, cpu = timed_process(cmd, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
        rows = [
            {
                "path": name,
                "runs": runs,
                "wall_median_s": statistics.median(walls[name]),
                "wall_min_s": min(walls[name]),
                "cpu_median_s": statistics.median(cpus[name]),
            }
            for name in cmds
        ]
        model = model_seconds(photo, runs)
    rows.append(
        {
            "path": "model only (in process, warm)",
            "runs": runs,
            "wall_median_s": model,
            "wall_min_s": float("nan"),
            "cpu_median_s": float("nan"),
        }
    )
    return rows


COLUMNS = ("path", "runs", "wall_median_s", "wall_min_s", "cpu_median_s")


def format_table(rows: list[dict]) -> list[str]:
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    for row in rows:
        cells = [row["path"], str(row["runs"])]
        cells += ["-" if row[c] != row[c] else f"{row[c]:.2f}" for c in COLUMNS[2:]]
        lines.append(" | ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from delit_cache.utils.machine import emit_report, load_average, run_header

    command = "python benchmarks/infer_cpu.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    header = run_header(
        f"`delit infer` start-up on CPU, one {args.size} x {args.size} photo", command
    )
    rows = measure(args.size, args.runs)
    lines = [*header, f"- load average at the end: {load_average()}", "", *format_table(rows)]
    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`delit encode` end to end: the plain path against the pipelined one, stage by stage.

Usage (from the repository root)::

    python benchmarks/encode_pipeline.py                 # 48 portraits at 256 px, demo codec
    python benchmarks/encode_pipeline.py --out benchmarks/results/cpu-encode-pipeline.md
    python benchmarks/encode_pipeline.py --n 4 --size 32 --repeats 1   # quick (the tests)

Renders ``--n`` synthetic portraits into shards once (``delit synth``), encodes them once
untimed (warm-up), then encodes them with the demo codec into fresh stores, alternating the
two paths ``--repeats`` times:

- ``plain``: ``workers=0``: read and decode a block, encode it, write it, in turn;
- ``pipelined``: ``--workers`` decoding threads and background Zarr writes.

Per path (median run): wall seconds, busy seconds of each stage (decode: shard reading and
image decoding, summed over threads; encode: the VAE; write: Zarr), what the encoder loop
waited for (decoded images; a full write queue, or the writes themselves on the plain path),
the encoder's share of the wall time, the limiting stage and images per second (relit and
flat: two per sample). Both paths must give identical arrays; the table says so.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

COLUMNS = (
    "path", "wall_s", "decode_s", "encode_s", "write_s", "wait_input_s", "wait_write_s",
    "encoder_share", "img_per_s", "limiting",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=48, help="portraits (default 48)")
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="decoding threads of the fast path")
    p.add_argument("--repeats", type=int, default=2, help="runs of each path (median shown)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--vae", default="demo", help="demo, random-full (width 96, random weights) or a path"
    )
    p.add_argument("--synth-workers", type=int, default=1, help="processes rendering the data")
    p.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    return p.parse_args(argv)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """The data arrays of a store as written (same plan, so same row order for both paths)."""
    import zarr

    from delit_cache.cache.store import DATA_ARRAYS

    group = zarr.open_group(str(path), mode="r")
    return {name: group[name][:] for name in DATA_ARRAYS}


def measure(args: argparse.Namespace) -> tuple[list[dict], bool]:
    """Rows for the plain and pipelined paths (median run each); whether outputs agree."""
    from delit_cache.cache.encode import encode_shards
    from delit_cache.synth.writer import synth
    from delit_cache.vae import load_wan_vae

    if args.vae == "random-full":
        from delit_cache.vae import new_wan_vae

        vae = new_wan_vae(96, seed=0, device=args.device, dtype=args.dtype)
    else:
        vae = load_wan_vae(args.vae, device=args.device, dtype=args.dtype)
    paths = {"plain (workers 0, synchronous writes)": 0}
    paths[f"pipelined ({args.workers} decode threads, background writes)"] = args.workers
    runs: dict[str, list] = {name: [] for name in paths}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        synth(shards, n=args.n, size=args.size, seed=7, workers=args.synth_workers, progress=False)
        outputs = {}
        encode_shards(
            "demo",
            shards,
            Path(tmp) / "warmup.zarr",
            size=args.size,
            batch_size=args.batch_size,
            block_size=args.block_size,
            progress=False,
            vae=vae,
            workers=0,
            dtype=args.dtype,
        )  # untimed: the first calls allocate memory and pick kernels
        for rep in range(args.repeats):
            for k, (name, workers) in enumerate(paths.items()):
                out = Path(tmp) / f"c{rep}_{k}.zarr"
                summary = encode_shards(
                    "demo", shards, out, size=args.size, batch_size=args.batch_size,
                    block_size=args.block_size, progress=False, vae=vae, workers=workers,
                    dtype=args.dtype,
                )  # fmt: skip
                runs[name].append(summary)
                outputs[name] = out
        same = _same(*(_arrays(p) for p in outputs.values()))
    rows = [_row(name, summaries) for name, summaries in runs.items()]
    return rows, same


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def _row(name: str, summaries: list) -> dict:
    s = sorted(summaries, key=lambda x: x.seconds)[len(summaries) // 2]  # the median run
    st = s.stages
    return {
        "path": name,
        "wall_s": s.seconds,
        "decode_s": st.get("decode", 0.0),
        "encode_s": st.get("encode", 0.0),
        "write_s": st.get("write", 0.0),
        "wait_input_s": st.get("wait_input", 0.0),
        "wait_write_s": st.get("wait_write", 0.0),
        "encoder_share": s.encoder_share,
        "img_per_s": 2 * s.encoded / s.seconds,
        "limiting": s.limiting_stage,
        "runs_wall_s": [round(x.seconds, 2) for x in summaries],
    }


def format_table(rows: list[dict]) -> list[str]:
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    for row in rows:
        cells = []
        for c in COLUMNS:
            v = row[c]
            if c == "encoder_share":
                cells.append(f"{100 * v:.1f} %")
            else:
                cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append(" | ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from delit_cache.utils.machine import emit_report, load_average, run_header

    command = "python benchmarks/encode_pipeline.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    title = (
        f"`delit encode` pipeline, VAE {args.vae}, {args.dtype}, {args.n} portraits at "
        f"{args.size} px"
    )
    header = run_header(title, command, torch.device(args.device))
    rows, same = measure(args)
    lines = [
        *header,
        f"- load average at the end: {load_average()}",
        f"- batch {args.batch_size}, block {args.block_size}, {args.repeats} run(s) per path, "
        f"the median run shown; all wall times: "
        + "; ".join(f"{r['path'].split(' ')[0]} {r['runs_wall_s']}" for r in rows),
        f"- identical arrays from both paths: {'yes' if same else 'NO'}",
        "",
        *format_table(rows),
    ]
    emit_report(lines, args.out)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

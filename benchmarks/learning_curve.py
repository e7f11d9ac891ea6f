"""Held-out figures against training steps and training samples (the learning curve).

Scores, on a leave-HDRI-out set (as ``heldout_ablation.py`` does), every step checkpoint
of one run (``--steps-run RUN``: ``RUN/checkpoints/step_*.pt`` and the final heads) and the
final heads of runs that differ only in how many training samples they used
(``--sample-runs RUN ...``, e.g. made by ``heldout_ablation.py`` with ``max_samples=N``
variants). Prints a markdown table (and writes it with ``--table``).

    python benchmarks/learning_curve.py --val-cache val.zarr --val-data val_shards \\
        --steps-run runs/final --sample-runs runs/n500 runs/n1500 runs/n5000
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import yaml
from heldout_ablation import METRICS, metric_cells, score, step_heads

from delit_cache.cache.store import LatentCache
from delit_cache.data.shards import iter_samples
from delit_cache.models.pretrained import heads_metadata
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import cpu_model


def run_facts(run: Path) -> tuple[int, int]:
    """(training samples, steps) of a finished run folder, from the facts saved with its
    heads; for runs older than ``train_samples`` there, the config's ``max_samples`` or,
    without a val split, the size of the cache it trained on (0 when unknown)."""
    extra = heads_metadata(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    samples = extra.get("train_samples") or cfg.get("max_samples") or 0
    if not samples and not cfg.get("val_fraction") and Path(extra.get("cache", "")).is_dir():
        samples = len(LatentCache(extra["cache"]))
    return int(samples), int(extra.get("step", 0))


def row(label: str, samples: int, steps: int, result: dict) -> str:
    return f"| {label} | {samples} | {steps} | " + " | ".join(metric_cells(result["model"])) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--val-cache", required=True, help="latent cache of the held-out set")
    ap.add_argument("--val-data", required=True, help="held-out shards (true flat-lit images)")
    ap.add_argument("--steps-run", type=Path, help="a run whose step checkpoints are scored")
    ap.add_argument("--sample-runs", type=Path, nargs="*", default=[], help="runs by samples")
    ap.add_argument("--vae", default="demo", help="codec for the flat-lit scores ('none': skip)")
    ap.add_argument("--table", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args()
    val_cache = LatentCache(args.val_cache)
    flats = {s["key"]: s["flat"] for s in iter_samples(args.val_data)}
    vae = None
    if args.vae != "none":
        from delit_cache.vae import load_wan_vae

        vae = load_wan_vae(args.vae, "cpu")
    head = "| curve | training samples | steps | " + " | ".join(m for m, _, _ in METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(METRICS) + 3)]
    baseline: dict = {}
    if args.steps_run:
        samples, _ = run_facts(args.steps_run)
        for ckpt in sorted((args.steps_run / "checkpoints").glob("step_*.pt")):
            step = int(ckpt.stem.split("_")[1])
            result = score(args.steps_run, val_cache, flats, vae, step_heads(ckpt))
            lines.append(row("steps", samples, step, result))
            baseline = result["baseline"]
            print(lines[-1], flush=True)
    for run in args.sample_runs:
        samples, steps = run_facts(run)
        result = score(run, val_cache, flats, vae)
        lines.append(row("samples", samples, steps, result))
        baseline = result["baseline"]
        print(lines[-1], flush=True)
    if baseline:
        lines.append("| mean-env baseline | - | - | " + " | ".join(metric_cells(baseline)) + " |")
    text = (
        f"{datetime.date.today()} on {cpu_model()} ({torch.get_num_threads()} threads); "
        f"held-out set {args.val_data} ({len(val_cache)} samples)\n"
        f"command: python {' '.join(sys.argv)}\n\n" + "\n".join(lines)
    )
    print(text)
    if args.table:
        args.table.write_text(text + "\n")


if __name__ == "__main__":
    try:
        main()
    except (DelitError, OSError) as exc:
        sys.exit(f"error: {exc}")

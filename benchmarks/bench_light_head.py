"""Training step of the light head alone: the whole heads at every step against inputs
computed once.

A run whose ``train_only`` names only the light head (stages 17 and 18 of the shipped demo
heads) trains a 1 M-parameter head on top of 4 M held fixed. Timed in the same run, on random
latents and env maps, with the config's model and optimiser:

* ``plain``: every step runs the whole heads forward (the flat path, the env decoder, the
  light head), the light-head loss, its backward (which reaches only the head) and AdamW;
* ``fast``: what ``delit train-heads`` does for such a run (``trains_light_head_alone``):
  the head's inputs (``DelitHeads.light_inputs``: pooled image features and the decoder's
  map) computed once per sample, in float32, then each step runs the head alone. The
  ``inputs_ms_per_sample`` column is that one-off cost, paid once per sample per run.

``--out FILE`` also writes the report (date, machine, load, command, table) there.

    .venv/bin/python benchmarks/bench_light_head.py --config demo-heads-light-head-more \\
        --device cpu --batch-size 64 --latent-size 32 --steps 5
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from delit_cache.lighting.sphere_metrics import brightest_direction
from delit_cache.models.heads import create_heads
from delit_cache.train.config import load_config
from delit_cache.train.losses import light_head_loss
from delit_cache.train.optim import make_optimizer
from delit_cache.utils.machine import emit_report, run_header, synchronize, table_lines


def bench(config: str, device: torch.device, batch: int, latent: int, steps: int, warmup: int):
    """Rows for the plain and the fast path (float32, as the shipped stage-18 config)."""
    cfg = load_config(config, {"batch_size": batch, "steps": 10**6})
    heads = create_heads(cfg.heads_config(), seed=0).to(device)
    if heads.env_decoder.light_head is None:
        raise SystemExit(f"{config}: the model has no light head (model.light_head: true)")
    opt, _ = make_optimizer(heads, cfg, 10**6)  # train_only: the head's parameters alone
    g = torch.Generator().manual_seed(0)
    relit = torch.randn(batch, 16, latent, latent, generator=g).to(device)
    target = brightest_direction(torch.rand(batch, 3, 128, 256, generator=g) ** 4 * 50)
    target = target.to(device)

    def update(light: torch.Tensor) -> None:
        loss = light_head_loss(light, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def plain() -> None:
        heads.train()
        update(heads(relit)["light_dir"])

    heads.eval().light_inputs(relit)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    inputs = heads.light_inputs(relit)
    synchronize(device)
    inputs_ms = (time.perf_counter() - start) * 1000 / batch

    def fast() -> None:
        heads.train()
        update(heads.env_decoder.light_head.read(inputs["light_pooled"], inputs["light_map"]))

    rows = []
    for name, step in (("plain", plain), ("fast", fast)):
        for _ in range(warmup):
            step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = (time.perf_counter() - start) / steps
        rows.append(
            {
                "config": config,
                "batch": batch,
                "latent": latent,
                "path": name,
                "ms_per_step": 1000 * seconds,
                "samples_s": batch / seconds,
                "inputs_ms_per_sample": f"{inputs_ms:.2f}" if name == "fast" else "-",
            }
        )
    return rows


COLUMNS = (
    ("config", "{}"),
    ("batch", "{}"),
    ("latent", "{}"),
    ("path", "{}"),
    ("ms_per_step", "{:.1f}"),
    ("samples_s", "{:.1f}"),
    ("inputs_ms_per_sample", "{}"),
)


def table(device: torch.device, rows: list[dict]) -> list[str]:
    """The report's lines: ``run_header`` (date, machine, command, load), then the table."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    return [
        *run_header("Light head alone: a training step", command, device),
        f"- threads: {torch.get_num_threads()}; float32",
        "",
        *table_lines(COLUMNS, rows),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="demo-heads-light-head-more", help="config name or path")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--latent-size", type=int, default=32, help="latent side (image size / 8)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = bench(args.config, device, args.batch_size, args.latent_size, args.steps, args.warmup)
    emit_report(table(device, rows), args.out)


if __name__ == "__main__":
    main()

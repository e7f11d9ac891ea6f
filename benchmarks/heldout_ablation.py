"""Train head variants on a latent cache and score each on a leave-HDRI-out set.

Each variant is ``NAME:key=value,key=value`` (TrainConfig fields over ``--config``; model
fields as ``model.key=value``). Every variant trains from scratch with the same data and
steps, then is scored on the held-out set: env metrics (three spheres, tone-mapped, and the
brightest-light direction) from the heads' env prediction on the val cache's latents, and
flat-lit PSNR/SSIM after decoding the predicted flat latent with the VAE, against the true
flat-lit images of the held-out shards. The mean-env baseline is the training split's mean
map. Prints a markdown table (and writes it with ``--table``).

    python benchmarks/heldout_ablation.py --train train.zarr --val-cache val.zarr \\
        --val-data val_shards --out runs --config demo --steps 1500 \\
        --variant base: --variant spheres:sphere_diffuse_weight=1.0
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import yaml

from delit_cache.cache.store import LatentCache
from delit_cache.data.shards import iter_samples
from delit_cache.evaluate.image_metrics import flat_psnr_ssim
from delit_cache.evaluate.results import result_value
from delit_cache.lighting.envmap import load_env
from delit_cache.lighting.sphere_metrics import sphere_metrics
from delit_cache.models.heads import DelitHeads
from delit_cache.models.pretrained import load_heads
from delit_cache.train.config import config_from_dict
from delit_cache.train.trainer import RunOptions, train_heads
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import cpu_model

METRICS = (
    ("flat PSNR", ("flat_psnr",), 2),
    ("flat SSIM", ("flat_ssim",), 3),
    ("diffuse angular", ("diffuse", "angular_deg"), 2),
    ("diffuse si-RMSE", ("diffuse", "si_rmse"), 3),
    ("matte angular", ("matte", "angular_deg"), 2),
    ("mirror si-RMSE", ("mirror", "si_rmse"), 3),
    ("light dir", ("light_dir_deg",), 1),
)


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:k=v,k=v`` -> (name, overrides); values parsed as YAML scalars."""
    name, _, spec = text.partition(":")
    overrides: dict = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        target = overrides
        if key.startswith("model."):
            target = overrides.setdefault("model", {})
            key = key[len("model.") :]
        target[key.strip()] = yaml.safe_load(value)
    return name, overrides


def write_variant_config(base: str, overrides: dict, path: Path) -> Path:
    from delit_cache.train.config import load_config

    data = load_config(base, None).to_dict()
    data["model"] = {**data.get("model", {}), **overrides.pop("model", {})}
    data.update(overrides)
    path.write_text(yaml.safe_dump(data))
    return path


def step_heads(checkpoint: Path) -> DelitHeads:
    """The heads saved in a training checkpoint ``RUN/checkpoints/step_XXXXXX.pt``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    heads = DelitHeads(config_from_dict(state["config"]).heads_config())
    heads.load_state_dict(state["heads"])
    return heads


@torch.no_grad()
def score(
    run: Path,
    val_cache: LatentCache,
    flats: dict[str, torch.Tensor],
    vae,
    heads: DelitHeads | None = None,
) -> dict:
    """Held-out metrics of the heads in ``run`` (or ``heads``, with ``run``'s mean env map;
    see the module docstring)."""
    heads = (heads or load_heads(run / "heads.safetensors")).eval()
    mean_env = load_env(run / "mean_env.exr", size=None)
    preds, gts, flat_scores = [], [], []
    for lo in range(0, len(val_cache), 16):
        idx = list(range(lo, min(len(val_cache), lo + 16)))
        relit = torch.from_numpy(val_cache.read("relit_latent", idx))
        out = heads(relit)
        preds.append(heads.env_hdr(out))
        gts.append(torch.from_numpy(val_cache.read("env", idx)))
        if vae is not None:
            size = flats[val_cache.keys[idx[0]]].shape[-2:]
            images = vae.decode(out["flat_latent"], size=tuple(size))
            for i, img in zip(idx, images, strict=True):
                flat_scores.append(flat_psnr_ssim(img, flats[val_cache.keys[i]]))
    pred, gt = torch.cat(preds), torch.cat(gts)
    baseline = mean_env[None].expand(len(gt), -1, -1, -1)
    result = {"model": sphere_metrics(pred, gt), "baseline": sphere_metrics(baseline, gt)}
    if flat_scores:
        result["model"]["flat_psnr"] = sum(p for p, _ in flat_scores) / len(flat_scores)
        result["model"]["flat_ssim"] = sum(s for _, s in flat_scores) / len(flat_scores)
    return result


def metric_cells(block: dict) -> list[str]:
    """The ``METRICS`` columns of one result block, formatted (``-`` where absent)."""
    cells = []
    for _, path, digits in METRICS:
        v = result_value(block, path)
        cells.append("-" if v is None else f"{v:.{digits}f}")
    return cells


def table(rows: list[tuple[str, dict, float]], baseline: dict) -> str:
    head = "| variant | train s | " + " | ".join(m for m, _, _ in METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(METRICS) + 2)]
    for name, result, seconds in rows:
        lines.append(
            f"| {name} | {seconds:.0f} | " + " | ".join(metric_cells(result["model"])) + " |"
        )
    lines.append("| mean-env baseline | - | " + " | ".join(metric_cells(baseline)) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="training latent cache")
    ap.add_argument("--val-cache", required=True, help="latent cache of the held-out set")
    ap.add_argument("--val-data", required=True, help="held-out shards (true flat-lit images)")
    ap.add_argument("--out", required=True, help="folder for the runs")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--variant", action="append", required=True, help="NAME:key=value,...")
    ap.add_argument("--vae", default="demo", help="codec for the flat-lit scores ('none': skip)")
    ap.add_argument("--table", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    val_cache = LatentCache(args.val_cache)
    flats = {s["key"]: s["flat"] for s in iter_samples(args.val_data)}
    missing = [k for k in val_cache.keys if k not in flats]
    if missing:
        raise DelitError(f"{args.val_data}: no shard sample for cache key {missing[0]!r}")
    vae = None
    if args.vae != "none":
        from delit_cache.vae import load_wan_vae

        vae = load_wan_vae(args.vae, "cpu")
    rows, baseline = [], {}
    for spec in args.variant:
        name, overrides = parse_variant(spec)
        run = out / name
        if not (run / "heads.safetensors").is_file():
            cfg_path = write_variant_config(args.config, overrides, out / f"{name}.yaml")
            start = time.perf_counter()
            train_heads(
                RunOptions(Path(args.train), run, cfg_path, {"steps": args.steps}, progress=False)
            )
            (run / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        seconds = float((run / "train_seconds.txt").read_text())
        result = score(run, val_cache, flats, vae)
        (run / "heldout.json").write_text(json.dumps(result, indent=2))
        rows.append((name, result, seconds))
        baseline = result["baseline"]
        print(f"{name}: {json.dumps(result['model'])}", flush=True)
    text = (
        f"{datetime.date.today()} on {cpu_model()} ({torch.get_num_threads()} threads); "
        f"{len(LatentCache(args.train))} cached training samples, held-out set "
        f"{args.val_data} ({len(val_cache)} samples), config {args.config}, {args.steps} steps\n"
        f"command: python {' '.join(sys.argv)}\n\n" + table(rows, baseline)
    )
    print(text)
    if args.table:
        args.table.write_text(text + "\n")


if __name__ == "__main__":
    try:
        main()
    except (DelitError, OSError) as exc:
        sys.exit(f"error: {exc}")

"""Test-time views: what averaging the answers for transformed copies of each photo buys.

Usage (from the repository root)::

    python benchmarks/view_averaging.py --checkpoint demo --vae demo --data WORK/val_heldout \\
        [--views plain,mirror,...] [--out F.md]

Each view set runs the model once per view on a transformed copy of every photo, maps each
answer back and averages them (flat-lit images in pixels, env maps in linear radiance), then
scores the average with ``delit eval``'s metrics (``evaluate.evaluate``). View sets:

* ``plain``: the photo alone (``delit eval``);
* ``mirror``: the photo and its mirror image (``delit eval --flip-average``);
* ``latent-mirror``: the photo's latent and that latent mirrored (one VAE encoding, the
  heads twice): whether the mirror pass's gain needs a second encoding;
* ``mirror-latent-mean``: as ``mirror`` but the two flat latents are averaged and decoded
  once (one decoding instead of two);
* ``shift``: the photo and a copy moved by half a latent cell (``--shift`` pixels down and
  right, borders repeated), moved back after decoding;
* ``mirror-shift``: the four copies of ``mirror`` x ``shift``.

Prints a markdown table with the date, machine and command; ``--json`` also keeps every
view set's whole ``evaluate`` result.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from delit_cache.data.shards import expand_shards, iter_samples
from delit_cache.evaluate.evaluate import evaluate
from delit_cache.evaluate.results import result_value
from delit_cache.infer.delighter import load_vae_and_model
from delit_cache.lighting.envcode import decode_env
from delit_cache.lighting.envmap import mirror_direction, mirror_env
from delit_cache.models.heads import steered
from delit_cache.utils.atomic import check_output_file
from delit_cache.utils.errors import DelitError
from delit_cache.utils.machine import emit_report, run_header

VIEW_SETS = ("plain", "mirror", "latent-mirror", "mirror-latent-mean", "shift", "mirror-shift")
COLUMNS = (
    ("flat PSNR", ("flat_psnr",), 2),
    ("flat SSIM", ("flat_ssim",), 4),
    ("diffuse angular", ("diffuse", "angular_deg"), 2),
    ("diffuse si-RMSE", ("diffuse", "si_rmse"), 3),
    ("matte angular", ("matte", "angular_deg"), 2),
    ("mirror angular", ("mirror", "angular_deg"), 2),
    ("mirror nRMSE", ("mirror", "nrmse"), 3),
    ("light dir", ("light_dir_deg",), 1),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="heads: run folder, file or 'demo'")
    p.add_argument("--vae", required=True, help="VAE: path or 'demo'")
    p.add_argument("--data", required=True, nargs="+", help="held-out shards or folders")
    p.add_argument("--views", default=",".join(VIEW_SETS), help="comma-separated view sets")
    p.add_argument("--shift", type=int, default=4, help="pixels the 'shift' copy is moved")
    p.add_argument("--batch-size", type=int, default=4, help="photos per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    p.add_argument("--json", type=Path, help="also write every view set's result here")
    return p.parse_args(argv)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x [B,C,H,W]`` moved by ``dy``, ``dx`` pixels (down, right), borders repeated."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return padded[..., y0 : y0 + h, x0 : x0 + w]


def _views(name: str, shift: int) -> list[tuple[bool, int]]:
    """(mirrored, shift in pixels) of every copy view set ``name`` runs (``latent-mirror``
    mirrors the latent rather than the photo, but maps its answers back the same way)."""
    mirrors = (False, True) if "mirror" in name else (False,)
    shifts = (0, shift) if "shift" in name else (0,)
    return [(m, s) for m in mirrors for s in shifts]


def _to_view(x: torch.Tensor, view: tuple[bool, int]) -> torch.Tensor:
    mirrored, s = view
    return shifted(x.flip(-1) if mirrored else x, s, s)


def _from_view(x: torch.Tensor, view: tuple[bool, int]) -> torch.Tensor:
    mirrored, s = view
    x = shifted(x, -s, -s)
    return x.flip(-1) if mirrored else x


@torch.no_grad()
def infer_views(model, images: torch.Tensor, name: str, shift: int = 4) -> dict:
    """``DelitModel.infer``'s ``flat`` and ``env`` for view set ``name`` (``VIEW_SETS``)."""
    n, size = len(images), tuple(images.shape[-2:])
    views = _views(name, shift)
    if name == "latent-mirror":
        latent = model.vae.encode(images).float()
        out = model.heads(torch.cat([latent, latent.flip(-1)]))
    else:
        batch = torch.cat([_to_view(images, v) for v in views])
        out = model.heads(model.vae.encode(batch).float())
    maps = decode_env(out["env_code"].float().clamp(0.0, 1.0)).split(n)
    env = sum(mirror_env(e) if v[0] else e for e, v in zip(maps, views, strict=True)) / len(views)
    if "light_dir" in out:  # as infer: the views' light directions, mirrored back, averaged
        dirs = out["light_dir"].float().split(n)
        light = sum(mirror_direction(d) if v[0] else d for d, v in zip(dirs, views, strict=True))
        env = steered(env, F.normalize(light, dim=1))
    latents = out["flat_latent"].split(n)
    if name == "mirror-latent-mean":
        mean = 0.5 * (latents[0] + latents[1].flip(-1))
        flat = model.vae.decode(mean, size=size).float()
    else:
        decoded = model.vae.decode(out["flat_latent"], size=size).float().split(n)
        flat = sum(_from_view(f, v) for f, v in zip(decoded, views, strict=True)) / len(views)
    return {"flat": flat, "env": env}


class _ViewModel:
    """The model with ``infer`` replaced by one view set's (what ``evaluate`` calls)."""

    def __init__(self, model, name: str, shift: int):
        self.model, self.name, self.shift = model, name, shift
        self.vae, self.heads = model.vae, model.heads

    def eval(self):
        self.model.eval()
        return self

    def infer(self, images: torch.Tensor, flip_average: bool = False) -> dict:
        return infer_views(self.model, images, self.name, self.shift)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    names = [v.strip() for v in args.views.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VIEW_SETS))
    if unknown or not names:
        print(f"--views: unknown {unknown or 'empty'}; choose from {', '.join(VIEW_SETS)}")
        return 2
    for flag, value in (("--shift", args.shift), ("--batch-size", args.batch_size)):
        if value < 1:
            print(f"{flag} {value}: must be >= 1")
            return 2
    try:
        return _report(args, names)
    except DelitError as exc:  # bad data, checkpoint or VAE: one line, no traceback
        print(exc)
        return 2
    except OSError as exc:  # --out or --json cannot be written
        print(f"{exc.filename}: {exc.strerror}")
        return 2


def _report(args: argparse.Namespace, names: list[str]) -> int:
    shards = expand_shards(args.data)
    for path in (args.out, args.json):
        if path is not None:
            check_output_file(path)  # a bad output path fails before the evaluations
    model, _, mean_env, info = load_vae_and_model(
        args.checkpoint, args.vae, args.device, "float32", None
    )
    command = "python benchmarks/view_averaging.py " + shlex.join(args.argv)
    lines = run_header("Test-time views", command, args.device)
    lines += [
        f"- checkpoint: {info['checkpoint']}; data: {', '.join(map(str, args.data))}",
        "",
        "| view set | copies | eval s | " + " | ".join(c[0] for c in COLUMNS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    results = {}
    for name in names:
        start = time.perf_counter()
        result = evaluate(
            _ViewModel(model, name, args.shift),
            iter_samples(shards),
            mean_env,
            image_size=info["model_size"],
            batch_size=args.batch_size,
        )
        seconds = time.perf_counter() - start
        results[name] = result
        copies = len(_views(name, args.shift))
        cells = [f"{result_value(result['model'], keys):.{digits}f}" for _, keys, digits in COLUMNS]
        lines.append(f"| {name} | {copies} | {seconds:.0f} | " + " | ".join(cells) + " |")
    lines += ["", f"Samples: n={results[names[0]]['n']} per view set."]
    emit_report(lines, args.out)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""delit's diffusionlight protocol against the reference renderer's own output.

Prints a markdown report: per sphere, the mean per-pixel relative RGB error of delit's render of
each oracle map against the reference Cycles render (inside the fully covered sphere) and the
mask sizes; per oracle pair, the reference score (``scores.csv``) beside delit's and the
difference (relative for si-RMSE and nRMSE, degrees for the angular error).

    python benchmarks/reference_protocol.py [--oracle ../shared/data/diffusionlight-eval-reference]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

from delit_cache.data.imageio import read_hdr
from delit_cache.lighting import protocol
from delit_cache.utils.machine import device_name

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "diffusionlight-eval-reference"


def _hdr(oracle: Path, name: str) -> torch.Tensor:
    return torch.from_numpy(read_hdr(oracle / "hdr128" / f"{name}.exr").transpose(2, 0, 1).copy())


def _rgba(path: Path) -> np.ndarray:
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as f:
        chans = {k: np.asarray(v.pixels) for k, v in f.channels().items()}
    return np.stack([chans[c] for c in "RGBA"]).astype(np.float64).reshape(4, -1)


def render_table(oracle: Path, names: list[str]) -> list[str]:
    view = protocol.sphere_view()
    renders = protocol.render_reference(
        torch.stack([protocol.prepare_map(_hdr(oracle, n)) for n in names])
    )
    inner = (view.alpha > 0.999).numpy()
    ref_mask = int((_rgba(oracle / "render" / "mirror" / f"{names[0]}.exr")[3] > 0).sum())
    lines = [
        f"Mask (alpha > 0): reference {ref_mask} px, delit {view.index.numel()} px.",
        "",
        "| map | " + " | ".join(protocol.SPHERES) + " |",
        "| --- |" + " --- |" * len(protocol.SPHERES),
    ]
    for i, name in enumerate(names):
        cells = []
        for sphere in protocol.SPHERES:
            ref = _rgba(oracle / "render" / sphere / f"{name}.exr")[:3][:, view.index.numpy()]
            ours = renders[sphere][i].double().numpy()
            err = np.linalg.norm(ours - ref, axis=0) / np.maximum(np.linalg.norm(ref, axis=0), 1e-6)
            cells.append(f"{100 * err[inner].mean():.1f} %")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def score_table(oracle: Path) -> list[str]:
    with open(oracle / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    pairs = sorted({(r["pred"], r["gt"]) for r in rows})
    ours = {
        p: protocol.diffusionlight_errors(_hdr(oracle, p[0]), _hdr(oracle, p[1])) for p in pairs
    }
    lines = [
        "| pred | gt | sphere | si-RMSE ref / delit (diff) | angular ref / delit (diff) "
        "| nRMSE ref / delit (diff) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        e = ours[(r["pred"], r["gt"])]
        cells = []
        for key in ("si_rmse", "angular_deg", "nrmse"):
            ref, mine = float(r[key]), float(e[f"{r['sphere']}_{key}"][0])
            diff = (
                f"{mine - ref:+.2f} deg"
                if key == "angular_deg"
                else f"{100 * (mine / ref - 1):+.1f} %"
            )
            cells.append(f"{ref:.4f} / {mine:.4f} ({diff})")
        lines.append(f"| {r['pred']} | {r['gt']} | {r['sphere']} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", type=Path, default=DEFAULT)
    args = parser.parse_args(argv)
    if not (args.oracle / "scores.csv").is_file():
        print(f"error: {args.oracle}: no scores.csv (the reference protocol's oracle)")
        return 2
    names = sorted(p.stem for p in (args.oracle / "hdr128").glob("*.exr"))
    start = time.perf_counter()
    out = [
        "# delit's diffusionlight protocol against the reference renderer",
        "",
        f"Date: {datetime.date.today()}; machine: {device_name('cpu')}; command: "
        f"`python benchmarks/reference_protocol.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`.",
        f"Oracle: `{args.oracle.name}` ({len(names)} maps). delit renders at 960 x 540 "
        f"(lights on every {protocol.LIGHT_STRIDE}nd pixel, the residual at "
        f"{protocol.RESIDUAL_SIZE[0]} x {protocol.RESIDUAL_SIZE[1]} on every "
        f"{protocol.STRIDE}th, interpolated).",
        "",
        "## Renders: mean per-pixel relative RGB error inside the fully covered sphere",
        "",
        *render_table(args.oracle, names),
        "",
        "## Scores: reference (`scores.csv`, fast_rmse.py on Cycles renders) against delit",
        "",
        *score_table(args.oracle),
        "",
        f"Took {time.perf_counter() - start:.0f} s.",
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Contact sheets of samples: one row per sample with relit | flat | env (| normals).

The env map is shown tone-mapped (extended Reinhard with white point 4, then sRGB), in the
photo's units, at the image height and twice its width.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from delit_cache.data.imageio import linear_to_srgb, write_png
from delit_cache.utils.errors import DelitError

WHITE_POINT = 4.0


def reinhard_display(env: torch.Tensor, white: float = WHITE_POINT) -> torch.Tensor:
    """Linear HDR ``[3,h,w]`` -> display ``[3,h,w]`` in [0,1] (extended Reinhard + sRGB)."""
    x = env.clamp_min(0)
    y = x * (1 + x / (white * white)) / (1 + x)
    return linear_to_srgb(y.clamp(0, 1))


def sheet_row(sample: dict[str, Any], height: int) -> torch.Tensor:
    """One row ``[3,height,W]``: relit | flat | env (2:1) | normals (if present)."""

    def fit(x: torch.Tensor, w: int) -> torch.Tensor:
        return F.interpolate(x[None], size=(height, w), mode="bilinear", antialias=True)[0]

    tiles = [fit(sample["relit"], height), fit(sample["flat"], height)]
    tiles.append(fit(reinhard_display(sample["env"]), 2 * height))
    if sample.get("normal") is not None:
        tiles.append(fit(sample["normal"] * 0.5 + 0.5, height))
    gap = torch.ones(3, height, 4)
    parts = []
    for t in tiles:
        parts += [t.clamp(0, 1), gap]
    return torch.cat(parts[:-1], dim=2)


def contact_sheet(
    samples: Iterable[dict[str, Any]], out: str | Path, n: int = 8, height: int = 256
) -> int:
    """Write a PNG contact sheet of the first ``n`` decoded samples; return the rows written."""
    rows = []
    for sample in samples:
        rows.append(sheet_row(sample, height))
        if len(rows) >= n:
            break
    if not rows:
        raise DelitError(f"{out}: no samples to show")
    width = max(r.shape[-1] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    gap = torch.ones(3, 4, width)
    parts = []
    for r in rows:
        parts += [r, gap]
    write_png(out, torch.cat(parts[:-1], dim=1))
    return len(rows)

"""A deterministic synthetic test image with smooth, sharp and fine-textured regions."""

from __future__ import annotations

import math

import torch


def synthetic_test_image(height: int = 256, width: int = 256) -> torch.Tensor:
    """A structured RGB test image ``[3,H,W]`` in [0,1] (display-referred), no randomness.

    Contents: a smooth colour gradient background, a softly shaded disc, a hard-edged
    rectangle, a 2-pixel checkerboard patch, a zone-plate patch (chirped rings) and a few
    thin lines. The same arguments always give the same image.
    """
    if height < 8 or width < 8:
        raise ValueError(f"test image must be at least 8x8, got {height}x{width}")
    y = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    img = torch.stack([0.2 + 0.6 * xx, 0.25 + 0.5 * yy, 0.8 - 0.5 * (xx + yy) / 2])

    # softly shaded disc (a skin-like tone lit from the upper left)
    r2 = ((xx - 0.35) ** 2 + (yy - 0.4) ** 2) / 0.22**2
    disc = (r2 < 1.0).float()
    shade = (1.0 - r2).clamp_min(0).sqrt() * 0.6 + 0.4 - 0.3 * (xx - 0.35 + yy - 0.4)
    skin = torch.tensor([0.85, 0.62, 0.5]).view(3, 1, 1) * shade.clamp(0, 1.2)
    img = img * (1 - disc) + skin * disc

    # hard-edged rectangle
    rect = ((xx > 0.62) & (xx < 0.92) & (yy > 0.1) & (yy < 0.35)).float()
    img = img * (1 - rect) + torch.tensor([0.1, 0.3, 0.75]).view(3, 1, 1) * rect

    # 2-pixel checkerboard patch
    rows = torch.arange(height).view(-1, 1) // 2
    cols = torch.arange(width).view(1, -1) // 2
    checker = ((rows + cols) % 2).float()
    patch = ((xx > 0.08) & (xx < 0.3) & (yy > 0.72) & (yy < 0.94)).float()
    img = img * (1 - patch) + (0.15 + 0.7 * checker) * patch

    # zone plate: rings whose frequency grows with the radius
    rz2 = (xx - 0.72) ** 2 + (yy - 0.72) ** 2
    zone = (rz2 < 0.2**2).float()
    rings = 0.5 + 0.45 * torch.cos(math.pi * rz2 * min(height, width) * 1.2)  # < 1.6 rad/px
    img = img * (1 - zone) + rings * zone

    # thin dark lines
    for frac in (0.52, 0.55, 0.58):
        row = int(frac * height)
        img[:, row, int(0.05 * width) : int(0.5 * width)] = 0.05
    return img.clamp(0.0, 1.0)

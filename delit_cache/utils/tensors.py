"""Small tensor helpers shared by the metrics."""

from __future__ import annotations

import torch


def as_image_batch(x: torch.Tensor) -> torch.Tensor:
    """``[C,H,W]`` or ``[B,C,H,W]`` -> float ``[B,C,H,W]``; raises ValueError otherwise."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected [B,C,H,W] or [C,H,W], got {tuple(x.shape)}")
    return x.float()

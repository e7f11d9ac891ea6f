"""Input transform: photos of any size to the model's square input, and back.

Policy (documented for users): the photo is scaled so that its longer side equals the
model size (512 by default, bicubic, antialiased), centred, and the shorter side is padded
to a square by replicating the border pixels (no hard black edge for the encoder to see).
``restore`` crops the padding off a model-size output and scales it back to the photo's
own size, so the flat-lit image always matches the input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Placement:
    """Where a photo of ``size`` sits inside the square model input."""

    size: tuple[int, int]  # original (height, width)
    box: tuple[int, int, int, int]  # (top, left, height, width) of the photo in the square


class PortraitTransform:
    """[3,H,W] images in [0,1] <-> [3,S,S] model inputs (letterbox with replicated borders)."""

    def __init__(self, size: int = 512):
        if size % 8:
            raise ValueError(f"model size must be a multiple of 8, got {size}")
        self.size = size

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, Placement]:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image [3,H,W], got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = image[None].float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (self.size - nh) // 2, (self.size - nw) // 2
        pad = (left, self.size - nw - left, top, self.size - nh - top)
        x = F.pad(x, pad, mode="replicate") if any(pad) else x
        return x[0].clamp(0.0, 1.0), Placement(size=(h, w), box=(top, left, nh, nw))

    def restore(self, output: torch.Tensor, placement: Placement) -> torch.Tensor:
        """Model-size output [C,S,S] -> [C,H,W] at the photo's own size."""
        top, left, nh, nw = placement.box
        x = output[None, :, top : top + nh, left : left + nw].float()
        if (nh, nw) != placement.size:
            x = F.interpolate(
                x, size=placement.size, mode="bicubic", antialias=True, align_corners=False
            )
        return x[0].clamp(0.0, 1.0)

"""Small building blocks shared by the heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (fewer when channels is small)."""
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: (norm, SiLU, 3x3 conv) twice, plus the input.

    ``identity_start``: the last convolution starts at zero (a block added to trained heads
    leaves their function unchanged)."""

    def __init__(self, channels: int, identity_start: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        if identity_start:
            nn.init.zeros_(self.body[-1].weight)
            nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GlobalContext(nn.Module):
    """Per-image scale and shift of a feature map from its spatial mean: the lighting is one
    for the whole image, and a convolution alone only sees its receptive field. Starts as
    the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, 2 * channels)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mlp(x.mean(dim=(2, 3))).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (1 + scale) + shift


def pano_pad(x: torch.Tensor) -> torch.Tensor:
    """One pixel of padding for an equirectangular map: wrapped in longitude, replicated at
    the poles."""
    x = F.pad(x, (1, 1, 0, 0), mode="circular")
    return F.pad(x, (0, 0, 1, 1), mode="replicate")


def pano_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of an equirectangular map by an integer factor that wraps in
    longitude (the first and last columns are neighbours) and clamps at the poles."""
    (h, w), (out_h, out_w) = x.shape[-2:], size
    sy, sx = out_h // h, out_w // w
    if sy * h != out_h or sx * w != out_w:
        raise ValueError(f"pano_upsample needs an integer factor, got {(h, w)} -> {size}")
    up = F.interpolate(pano_pad(x), scale_factor=(sy, sx), mode="bilinear", align_corners=False)
    return up[..., sy : sy + out_h, sx : sx + out_w]


class PanoConv(nn.Module):
    """3x3 convolution for equirectangular maps: wraps around in longitude, replicates at the poles."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pano_pad(x))

"""Small building blocks shared by the heads."""

from __future__ import annotations

import functools

import torch
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
    the poles (the values of ``F.pad``'s circular, then replicate modes)."""
    return _PanoPad.apply(x)


class _PanoPad(torch.autograd.Function):
    """``pano_pad`` with a backward that folds the border's gradient into one copy of the
    interior: several times faster on the CPU than the backward of ``F.pad`` or of
    concatenated slices, which allocate and add whole maps per border."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[..., -1:], x, x[..., :1]], dim=-1)
        return torch.cat([x[..., :1, :], x, x[..., -1:, :]], dim=-2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        rows = grad[..., 1:-1, :].clone()  # the replicated rows go back to the first and last
        rows[..., 0, :] += grad[..., 0, :]
        rows[..., -1, :] += grad[..., -1, :]
        out = rows[..., 1:-1].clone()  # the wrapped columns go back to the last and first
        out[..., -1] += rows[..., 0]
        out[..., 0] += rows[..., -1]
        return out


def pano_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of an equirectangular map by an integer factor that wraps in
    longitude (the first and last columns are neighbours) and clamps at the poles.

    Computed as two small matrix products (rows, then columns), which train several times
    faster on the CPU than ``F.interpolate``'s backward."""
    (h, w), (out_h, out_w) = x.shape[-2:], size
    sy, sx = out_h // h, out_w // w
    if sy * h != out_h or sx * w != out_w:
        raise ValueError(f"pano_upsample needs an integer factor, got {(h, w)} -> {size}")
    rows = _interp_matrix(h, sy, False, str(x.device), x.dtype)
    cols = _interp_matrix(w, sx, True, str(x.device), x.dtype)
    return torch.einsum("oh,bchw,pw->bcop", rows, x, cols)


@functools.lru_cache(maxsize=16)
def _interp_matrix(n: int, factor: int, wrap: bool, device: str, dtype) -> torch.Tensor:
    """``[n * factor, n]`` weights of bilinear upsampling (half-pixel centres) along one axis,
    wrapping around (longitude) or clamped at the ends (latitude). Made outside inference
    mode, so that a cached matrix can later take part in training."""
    with torch.inference_mode(False), torch.no_grad():
        src = (torch.arange(n * factor, dtype=torch.float64) + 0.5) / factor - 0.5
        lo = torch.floor(src)
        frac, lo = src - lo, lo.long()
        hi = lo + 1
        lo, hi = (lo % n, hi % n) if wrap else (lo.clamp(0, n - 1), hi.clamp(0, n - 1))
        out = torch.arange(n * factor)
        m = torch.zeros(n * factor, n, dtype=torch.float64)
        m.index_put_((out, lo), 1 - frac, accumulate=True)
        m.index_put_((out, hi), frac, accumulate=True)
        return m.to(device=device, dtype=dtype)


class PanoConv(nn.Module):
    """3x3 convolution for equirectangular maps: wraps around in longitude, replicates at the poles."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pano_pad(x))

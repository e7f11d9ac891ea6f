"""Flat-lit image scores: PSNR and SSIM after a per-channel least-squares scale (torch).

``flat_psnr_ssim`` first scales the prediction per channel onto the ground truth (the
albedo/intensity ambiguity) and clips it to [0, 1]. SSIM is Wang et al. (2004)'s
gaussian-window SSIM (11x11, sigma 1.5, K1 0.01, K2 0.03, valid windows, per channel,
averaged), written here to need no extra dependency. Functions take ``[B,3,H,W]`` (or
``[3,H,W]``) and return per-image ``[B]`` tensors; ``flat_psnr_ssim`` returns python floats
averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from delit_cache.utils.tensors import as_image_batch

_EPS = 1e-12  # floor of denominators


def fit_channel_scale(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel least-squares scale ``s = <p,g>/<p,p>`` applied to ``pred``."""
    p, g = as_image_batch(pred), as_image_batch(gt)
    s = (p * g).sum(dim=(2, 3), keepdim=True) / (p * p).sum(dim=(2, 3), keepdim=True).clamp_min(
        _EPS
    )
    return p * s


def psnr(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image -> ``[B]`` (capped at 100 dB for identical images)."""
    mse = ((as_image_batch(pred) - as_image_batch(gt)) ** 2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-10))).clamp_max(100.0)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Gaussian-window SSIM (Wang et al. 2004; 11x11, sigma 1.5, K1 .01, K2 .03) -> ``[B]``.

    Computed per channel over valid windows (no padding) and averaged; images must be at
    least 11x11. Differentiable.
    """
    p, g = as_image_batch(pred), as_image_batch(gt)
    c = p.shape[1]
    if min(p.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {tuple(p.shape[-2:])}")
    win = _gaussian_window(device=p.device)
    wx = win.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wy = win.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, wx, groups=c), wy, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_p, mu_g = blur(p), blur(g)
    var_p = blur(p * p) - mu_p**2
    var_g = blur(g * g) - mu_g**2
    cov = blur(p * g) - mu_p * mu_g
    num = (2 * mu_p * mu_g + c1) * (2 * cov + c2)
    den = (mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2)
    return (num / den).mean(dim=(1, 2, 3))


def flat_psnr_ssim(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    """PSNR (dB) and SSIM of flat-lit images in [0,1] ``[B,3,H,W]`` / ``[3,H,W]``, batch means.

    The prediction is first scaled per channel by least squares onto the ground truth, then
    clipped to [0, 1].
    """
    p, g = as_image_batch(pred), as_image_batch(gt)
    if p.shape != g.shape:
        raise ValueError(f"shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    with torch.no_grad():
        fitted = fit_channel_scale(p, g).clamp(0.0, 1.0)
        return float(psnr(fitted, g).mean()), float(ssim(fitted, g).mean())

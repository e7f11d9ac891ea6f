"""Tests for delit_cache.evaluate.image_metrics: SSIM and the flat-lit PSNR/SSIM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delit_cache.evaluate.image_metrics import flat_psnr_ssim, ssim

GEN = torch.Generator().manual_seed(0)


def _ssim_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Independent SSIM: explicit 11x11 gaussian windows over every valid position."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va, vb = (win * pa * pa).sum() - ma**2, (win * pb * pb).sum() - mb**2
            cov = (win * pa * pb).sum() - ma * mb
            vals.append(
                ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return float(np.mean(vals))


def test_ssim_matches_independent_implementation():
    a = torch.rand(1, 1, 16, 18, generator=GEN)
    b = (a + 0.2 * torch.rand(1, 1, 16, 18, generator=GEN)).clamp(0, 1)
    ours = ssim(a, b).item()
    assert ours == pytest.approx(
        _ssim_numpy(a[0, 0].double().numpy(), b[0, 0].double().numpy()), abs=1e-4
    )
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_flat_psnr_ssim_per_channel_scale():
    gt = torch.rand(2, 3, 32, 32, generator=GEN) * 0.8
    scaled = gt * torch.tensor([0.5, 1.0, 1.2]).view(1, 3, 1, 1)
    psnr_v, ssim_v = flat_psnr_ssim(scaled, gt)
    assert psnr_v > 60 and ssim_v > 0.999
    noisy = gt + 0.05 * torch.randn(2, 3, 32, 32, generator=GEN)
    p2, s2 = flat_psnr_ssim(noisy, gt)
    assert 20 < p2 < 30 and s2 < 0.99
    with pytest.raises(ValueError):
        flat_psnr_ssim(gt, gt[:, :, :16])

"""Lighting and flat-lit image metrics (torch; differentiable where it makes sense).

Env maps are scored with the three-sphere protocol (see shared/notes/lighting-eval.md).
As in the StyleLight / DiffusionLight evaluation code, each map (resampled to 128x256) is
first tone-mapped with ``protocol_tonemap``: ``x ** (1/2.4)``, then scaled so that the median
of its non-zero values is 0.5, not clipped. This removes the exposure ambiguity and keeps a
sun from dominating every score (pass ``tonemap=False`` to score raw linear renders). Both
maps are then rendered with ``render.render_spheres`` (diffuse, matte silver, mirror;
128 px) and compared over the sphere mask with

- ``si_rmse``: RMSE after the one scalar scale (over all channels and pixels) that minimises
  it, ``s = <p, g> / <p, p>`` (closed form);
- ``angular_error_deg``: mean over pixels of the angle between the predicted and true RGB
  vectors, in degrees (pixels where either vector is black count as 0 if both are black,
  90 degrees otherwise);
- ``nrmse``: RMSE after mapping EACH image by its OWN 0.1 and 99.9 percentiles (over the
  masked pixels, all channels pooled) to 0 and 1, the common protocol.

plus ``light_direction_error_deg``: the angle between the directions of the brightest light
in the two maps (see ``brightest_direction``).

Flat-lit images: ``flat_psnr_ssim`` after a per-channel least-squares scale of the prediction
onto the ground truth (albedo/intensity ambiguity), clipped to [0, 1]; SSIM is the Wang et
al. (2004) gaussian-window SSIM (11x11, sigma 1.5, K1 0.01, K2 0.03, valid window, per
channel, averaged), written here (no extra dependency).

Torch functions take ``[B,3,H,W]`` (or ``[3,H,W]``) and return per-image ``[B]`` tensors;
``sphere_metrics`` and ``flat_psnr_ssim`` return python floats averaged over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from delit_cache.lighting.envmap import (
    ENV_SIZE,
    as_env_batch,
    direction_grid,
    resample_env,
    solid_angles,
)
from delit_cache.lighting.render import render_spheres

SPHERES = ("diffuse", "matte", "mirror")
SPHERE_SIZE = 128
LIGHT_CONE_DEG = 10.0  # centroid window around the blurred argmax
TONEMAP_MEDIAN = 0.5  # protocol_tonemap maps the median non-zero value here
_EPS = 1e-12


def _b4(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected [B,C,H,W] or [C,H,W], got {tuple(x.shape)}")
    return x.float()


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[B,C,H,W]`` -> ``[B,C,P]`` of the pixels inside ``mask [H,W]`` (all if None)."""
    x = _b4(x)
    return x.flatten(2) if mask is None else x[:, :, mask.to(x.device).bool()]


def si_rmse(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scale-invariant RMSE per image -> ``[B]``; 0 when ``pred = k * gt`` (k > 0)."""
    p, g = _masked(pred, mask), _masked(gt, mask)
    scale = (p * g).sum(dim=(1, 2)) / (p * p).sum(dim=(1, 2)).clamp_min(_EPS)
    return ((scale[:, None, None] * p - g) ** 2).mean(dim=(1, 2)).sqrt()


def angular_error_deg(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean angle (degrees) between predicted and true RGB vectors per pixel -> ``[B]``."""
    p, g = _masked(pred, mask).double(), _masked(gt, mask).double()
    dot = (p * g).sum(1)
    norms = p.norm(dim=1) * g.norm(dim=1)
    cos = (dot / norms.clamp_min(_EPS)).clamp(-1.0, 1.0)
    both_black = (p.abs().sum(1) <= 0) & (g.abs().sum(1) <= 0)
    cos = torch.where(both_black, torch.ones_like(cos), cos)
    # acos has an infinite slope at 1; this form keeps gradients finite.
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
    return torch.rad2deg(torch.atan2(sin, cos)).mean(1).float()


def _percentile_normalise(x: torch.Tensor, lo: float = 0.001, hi: float = 0.999) -> torch.Tensor:
    """``[B,C,P]`` -> each image mapped so its own ``lo``/``hi`` quantiles go to 0 and 1."""
    flat = x.flatten(1)
    q = torch.quantile(flat, torch.tensor([lo, hi], device=x.device), dim=1)  # [2,B]
    span = (q[1] - q[0]).clamp_min(_EPS)
    return (x - q[0][:, None, None]) / span[:, None, None]


def nrmse(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RMSE after normalising each image by its own 0.1/99.9 percentiles -> ``[B]``."""
    p = _percentile_normalise(_masked(pred, mask))
    g = _percentile_normalise(_masked(gt, mask))
    return ((p - g) ** 2).mean(dim=(1, 2)).sqrt()


def _blur_lum(env: torch.Tensor) -> torch.Tensor:
    """Luminance ``[B,h,w]`` blurred by a 5-tap binomial twice (wraps in azimuth)."""
    lum = (env * torch.tensor([0.2126, 0.7152, 0.0722], device=env.device)[:, None, None]).sum(1)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=env.device) / 16.0
    x = lum[:, None]
    for _ in range(2):
        x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="circular"), k.view(1, 1, 1, 5))
        x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
    return x[:, 0], lum


def brightest_direction(env: torch.Tensor) -> torch.Tensor:
    """Unit direction ``[B,3]`` of the brightest light of env maps ``[B,3,h,w]`` / ``[3,h,w]``.

    The argmax of the luminance after a small blur (two 5-tap binomial passes, about 3 px)
    picks the light; the direction is then the solid-angle-weighted luminance centroid of
    the pixels within 10 degrees of that argmax (sub-pixel, robust to a flat-topped sun).
    """
    x, _ = as_env_batch(env)
    x = resample_env(x.float(), ENV_SIZE)
    h, w = x.shape[-2:]
    blurred, lum = _blur_lum(x)
    dirs = direction_grid(h, w, device=x.device).flatten(1)  # [3,P]
    peak = dirs[:, blurred.flatten(1).argmax(1)].T  # [B,3]
    near = (peak @ dirs) >= math.cos(math.radians(LIGHT_CONE_DEG))  # [B,P]
    weight = lum.flatten(1) * solid_angles(h, w, device=x.device).flatten() * near
    centroid = weight @ dirs.T  # [B,3]
    centroid = torch.where(centroid.norm(dim=1, keepdim=True) > 0, centroid, peak)
    return centroid / centroid.norm(dim=1, keepdim=True)


def light_direction_error_deg(pred_env: torch.Tensor, gt_env: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between the brightest-light directions of two env maps -> ``[B]``."""
    a, b = brightest_direction(pred_env), brightest_direction(gt_env)
    cos = (a * b).sum(1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def protocol_tonemap(env: torch.Tensor) -> torch.Tensor:
    """The evaluation tone map: ``x ** (1/2.4)`` scaled so the median non-zero value is 0.5.

    ``[B,3,h,w]`` -> same shape; per image, all channels pooled; not clipped.
    """
    x, _ = as_env_batch(env)
    power = x.float().clamp_min(0.0) ** (1.0 / 2.4)
    scales = []
    for img in power:
        nonzero = img[img > 0]
        med = nonzero.median() if nonzero.numel() else img.new_tensor(1.0)
        scales.append(TONEMAP_MEDIAN / (med + 1e-10))
    return power * torch.stack(scales).view(-1, 1, 1, 1)


def sphere_errors(
    pred_env: torch.Tensor, gt_env: torch.Tensor, tonemap: bool = True
) -> dict[str, torch.Tensor]:
    """Per-image sphere metrics: ``{"diffuse_si_rmse": [B], ..., "light_dir_deg": [B]}``.

    Both maps are resampled to 128x256, tone-mapped with ``protocol_tonemap`` (unless
    ``tonemap=False``) and rendered with ``render_spheres`` at 128 px. Differentiable in
    ``pred_env`` (except ``light_dir_deg``, which always uses the linear maps).
    """
    p, _ = as_env_batch(pred_env)
    g, _ = as_env_batch(gt_env)
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"batch sizes differ: {p.shape[0]} vs {g.shape[0]}")
    p_in, g_in = resample_env(p.float(), ENV_SIZE), resample_env(g.float(), ENV_SIZE)
    if tonemap:
        p_in, g_in = protocol_tonemap(p_in), protocol_tonemap(g_in)
    rp = render_spheres(p_in, SPHERE_SIZE)
    rg = render_spheres(g_in, SPHERE_SIZE)
    mask = rg["mask"]
    out = {}
    for name in SPHERES:
        out[f"{name}_si_rmse"] = si_rmse(rp[name], rg[name], mask)
        out[f"{name}_angular_deg"] = angular_error_deg(rp[name], rg[name], mask)
        out[f"{name}_nrmse"] = nrmse(rp[name], rg[name], mask)
    out["light_dir_deg"] = light_direction_error_deg(p.detach(), g)
    return out


def sphere_metrics(pred_env: torch.Tensor, gt_env: torch.Tensor, tonemap: bool = True) -> dict:
    """Three-sphere scores, averaged over the batch, as python floats::

        {"diffuse": {"si_rmse", "angular_deg", "nrmse"}, "matte": {...}, "mirror": {...},
         "light_dir_deg": float}

    ``pred_env``/``gt_env``: ``[B,3,h,w]`` or ``[3,h,w]`` linear radiance, any 2:1 size.
    """
    with torch.no_grad():
        errs = sphere_errors(pred_env, gt_env, tonemap=tonemap)
    result: dict = {
        name: {m: float(errs[f"{name}_{m}"].mean()) for m in ("si_rmse", "angular_deg", "nrmse")}
        for name in SPHERES
    }
    result["light_dir_deg"] = float(errs["light_dir_deg"].mean())
    return result


def sphere_loss(pred_env: torch.Tensor, gt_env: torch.Tensor) -> torch.Tensor:
    """Training loss: mean L1 between ``log1p`` renders of the three spheres -> scalar.

    ``pred_env``/``gt_env`` ``[B,3,h,w]`` linear radiance (same size); differentiable.
    """
    rp, rg = render_spheres(pred_env), render_spheres(gt_env)
    mask = rg["mask"]
    terms = [
        (torch.log1p(_masked(rp[n], mask)) - torch.log1p(_masked(rg[n], mask))).abs().mean()
        for n in SPHERES
    ]
    return torch.stack(terms).mean()


# ----------------------------------------------------------------------------- flat-lit


def fit_channel_scale(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel least-squares scale ``s = <p,g>/<p,p>`` applied to ``pred``."""
    p, g = _b4(pred), _b4(gt)
    s = (p * g).sum(dim=(2, 3), keepdim=True) / (p * p).sum(dim=(2, 3), keepdim=True).clamp_min(
        _EPS
    )
    return p * s


def psnr(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image -> ``[B]`` (capped at 100 dB for identical images)."""
    mse = ((_b4(pred) - _b4(gt)) ** 2).mean(dim=(1, 2, 3))
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
    p, g = _b4(pred), _b4(gt)
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
    p, g = _b4(pred), _b4(gt)
    if p.shape != g.shape:
        raise ValueError(f"shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    with torch.no_grad():
        fitted = fit_channel_scale(p, g).clamp(0.0, 1.0)
        return float(psnr(fitted, g).mean()), float(ssim(fitted, g).mean())

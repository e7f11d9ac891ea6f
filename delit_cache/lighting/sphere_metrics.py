"""Env-map scores of delit's three-sphere protocol (torch; differentiable where it helps).

Each map (resampled to 128x256) is tone-mapped with ``protocol_tonemap`` (``x ** (1/2.4)``,
median non-zero value scaled to 0.5, not clipped, as in the StyleLight / DiffusionLight
evaluation code; ``tonemap=False`` scores raw linear renders), rendered with
``render.render_spheres`` (diffuse, matte silver, mirror; 128 px), and the renders are
compared over the sphere mask with

- ``si_rmse``: RMSE after the one least-squares scalar scale ``s = <p, g> / <p, p>``;
- ``angular_error_deg``: mean angle between predicted and true RGB vectors, in degrees
  (a pixel black in both counts 0, black in one 90);
- ``nrmse``: RMSE after mapping each image by its own 0.1 and 99.9 percentiles to 0 and 1;

plus ``light_direction_error_deg``, the angle between the brightest lights of the two maps.
Functions take ``[B,3,H,W]`` (or ``[3,H,W]``) and return per-image ``[B]`` tensors;
``sphere_metrics`` returns python floats averaged over the batch.
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
from delit_cache.lighting.render import LUMA, render_spheres
from delit_cache.utils.tensors import as_image_batch

SPHERES = ("diffuse", "matte", "mirror")
SPHERE_SIZE = 128
LIGHT_CONE_DEG = 10.0  # centroid window around the blurred argmax
TONEMAP_MEDIAN = 0.5  # protocol_tonemap maps the median non-zero value here
_EPS = 1e-12  # floor of denominators


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[B,C,H,W]`` -> ``[B,C,P]`` of the pixels inside ``mask [H,W]`` (all if None)."""
    x = as_image_batch(x)
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


def percentile_normalise(
    x: torch.Tensor, lo: float = 0.001, hi: float = 0.999, min_span: float = 0.0
) -> torch.Tensor:
    """``[B,C,P]`` -> each image mapped so its own ``lo``/``hi`` quantiles go to 0 and 1;
    ``min_span`` > 0 floors the quantiles' span at that share of (max - ``lo`` quantile),
    so that a flat image with a few bright pixels is not blown up (a loss needs that)."""
    flat = x.flatten(1)
    q = torch.quantile(flat, torch.tensor([lo, hi], device=x.device), dim=1)  # [2,B]
    span = torch.maximum(q[1] - q[0], min_span * (flat.amax(1) - q[0])).clamp_min(_EPS)
    return (x - q[0][:, None, None]) / span[:, None, None]


def nrmse(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RMSE after normalising each image by its own 0.1/99.9 percentiles -> ``[B]``."""
    p = percentile_normalise(_masked(pred, mask))
    g = percentile_normalise(_masked(gt, mask))
    return ((p - g) ** 2).mean(dim=(1, 2)).sqrt()


def blurred_luminance(env: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(blurred, raw) luminance ``[B,h,w]``; the blur: a 5-tap binomial twice, wrapping in u."""
    lum = (env * torch.tensor(LUMA, device=env.device)[:, None, None]).sum(1)
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
    x = x.float()
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)  # no overflow near 3e38
    x = resample_env(x, ENV_SIZE)
    h, w = x.shape[-2:]
    blurred, lum = blurred_luminance(x)
    dirs = direction_grid(h, w, device=x.device).flatten(1)  # [3,P]
    peak = dirs[:, blurred.flatten(1).argmax(1)].T  # [B,3]
    near = (peak @ dirs) >= math.cos(math.radians(LIGHT_CONE_DEG))  # [B,P]
    weight = lum.flatten(1) * solid_angles(h, w, device=x.device).flatten() * near
    centroid = weight @ dirs.T  # [B,3]
    centroid = torch.where(centroid.norm(dim=1, keepdim=True) > 0, centroid, peak)
    return centroid / centroid.norm(dim=1, keepdim=True)


def angle_between_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between unit directions ``[B,3]`` -> ``[B]``."""
    return torch.rad2deg(torch.acos((a * b).sum(1).clamp(-1.0, 1.0)))


def light_direction_error_deg(pred_env: torch.Tensor, gt_env: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between the brightest-light directions of two env maps -> ``[B]``."""
    return angle_between_deg(brightest_direction(pred_env), brightest_direction(gt_env))


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

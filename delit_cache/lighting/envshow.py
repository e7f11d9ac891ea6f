"""A quick-look figure of an HDR env map: the tone-mapped panorama beside the three spheres.

Layout (one uint8 RGB image, 256 px tall): the panorama (128x256 map shown at 2x, nearest)
then the diffuse, matte-silver and mirror spheres (256 px each), on a dark gray background.

Tone map: each panel is scaled so that its median luminance (over the sphere mask for the
spheres) maps to a fixed key (0.18 for the panorama and the mirror sphere, whose pixels
are env radiances; 0.3 for the diffuse and matte spheres, to show their shading), then
clipped to [0, 1] and sRGB-encoded. Clipping (not Reinhard) keeps mid-tone colours exact;
the sun and lamps saturate to white.
"""

from __future__ import annotations

import numpy as np
import torch

from delit_cache.data.imageio import linear_to_srgb
from delit_cache.lighting.envmap import ENV_SIZE, as_env_batch, resample_env
from delit_cache.lighting.render import LUMA, render_spheres

PANO_KEY = 0.18
SPHERE_KEY = 0.3
PANEL = 256
GAP = 8
BACKGROUND = 0.12  # display value of the background


def _luminance(x: torch.Tensor) -> torch.Tensor:
    return LUMA[0] * x[0] + LUMA[1] * x[1] + LUMA[2] * x[2]


def tonemap_median_key(
    x: torch.Tensor, key: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Linear ``[3,H,W]`` -> display ``[3,H,W]`` in [0,1]: median luminance -> ``key``, clip, sRGB."""
    lum = _luminance(x)
    vals = lum[mask] if mask is not None else lum.flatten()
    med = float(vals.median()) if vals.numel() else 0.0
    if med <= 0:
        med = float(vals.max()) if vals.numel() and float(vals.max()) > 0 else 1.0
    return linear_to_srgb((x * (key / med)).clamp(0.0, 1.0))


def env_figure(env_hdr: torch.Tensor) -> np.ndarray:
    """Env map ``[3,h,w]`` (or ``[1,3,h,w]``) linear radiance -> figure ``uint8 [256, W, 3]``."""
    x, _ = as_env_batch(env_hdr)
    env = resample_env(x[0].detach().float().cpu(), ENV_SIZE)
    pano = tonemap_median_key(env, PANO_KEY)
    pano = pano.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # 256 x 512
    with torch.no_grad():
        spheres = render_spheres(env, size=PANEL)
    mask = spheres["mask"]
    panels = [pano]
    for name, key in (("diffuse", SPHERE_KEY), ("matte", SPHERE_KEY), ("mirror", PANO_KEY)):
        img = tonemap_median_key(spheres[name][0], key, mask)
        panels.append(torch.where(mask[None], img, torch.full_like(img, BACKGROUND)))
    gap = torch.full((3, PANEL, GAP), BACKGROUND)
    parts = [p for panel in panels for p in (panel, gap)][:-1]
    fig = torch.cat(parts, dim=2)
    return (fig.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)

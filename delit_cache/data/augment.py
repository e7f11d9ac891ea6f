"""Cache-time augmentation: K deterministic variants of each (relit, flat, env) sample.

Variant 0 is the sample itself. Variant k > 0 draws, from a generator seeded by
(seed, key, k) only, so the same variant comes out on any machine, rank or rerun:

* a horizontal flip (probability 0.5) of relit and flat, and the env map mirrored with it:
  in the project's equirectangular convention a left-right image flip maps x to -x, i.e. env
  column u to 1 - u (``torch.flip`` along the width);
* a crop keeping ``crop_min``..1 of each side (same box for relit and flat), resized back to
  the input size (bilinear, antialiased); the env map is unchanged (same lighting);
* an exposure change by ``2**stops`` with stops uniform in ``[-max_stops, max_stops]``:
  relit is scaled in linear light and re-encoded to sRGB (clipped to [0, 1]), the env
  map is scaled by the same factor, the flat image (uniform white light) is unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from delit_cache.data.imageio import linear_to_srgb, srgb_to_linear


@dataclass(frozen=True)
class AugmentParams:
    """The draws of one variant."""

    flip: bool  # mirror left-right (and the env map's u -> 1 - u)
    crop: tuple[float, float, float]  # (scale, top, left): side fraction kept, offsets in [0,1]
    exposure: float  # linear factor applied to relit and env


def variant_seed(seed: int, key: str, variant: int) -> int:
    """A 63-bit seed from (seed, key, variant), stable across processes and platforms."""
    digest = hashlib.sha256(f"{seed}:{key}:{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def draw_params(
    seed: int, key: str, variant: int, crop_min: float = 0.8, max_stops: float = 1.0
) -> AugmentParams:
    """The augmentation draws of ``variant`` (> 0) of sample ``key``."""
    g = torch.Generator().manual_seed(variant_seed(seed, key, variant))
    u = torch.rand(5, generator=g, dtype=torch.float64).tolist()
    scale = crop_min + (1.0 - crop_min) * u[1]
    stops = (2.0 * u[4] - 1.0) * max_stops
    return AugmentParams(flip=u[0] < 0.5, crop=(scale, u[2], u[3]), exposure=2.0**stops)


def _crop_resize(img: torch.Tensor, crop: tuple[float, float, float]) -> torch.Tensor:
    """Crop ``img [C,H,W]`` to ``scale`` of each side at relative offsets, resize back."""
    scale, top_f, left_f = crop
    h, w = img.shape[-2:]
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = round((h - ch) * top_f), round((w - cw) * left_f)
    out = img[None, :, top : top + ch, left : left + cw]
    if (ch, cw) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return out[0].clamp(0.0, 1.0)


def apply_params(
    relit: torch.Tensor, flat: torch.Tensor, env: torch.Tensor, p: AugmentParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply ``p`` to relit/flat ``[3,H,W]`` sRGB in [0,1] and env ``[3,h,w]`` linear HDR."""
    if p.flip:
        relit, flat, env = relit.flip(-1), flat.flip(-1), env.flip(-1)
    relit, flat = _crop_resize(relit, p.crop), _crop_resize(flat, p.crop)
    if p.exposure != 1.0:
        relit = linear_to_srgb((srgb_to_linear(relit) * p.exposure).clamp(0.0, 1.0))
        env = env * p.exposure
    return relit.clamp(0.0, 1.0), flat, env


def augment_sample(
    relit: torch.Tensor,
    flat: torch.Tensor,
    env: torch.Tensor,
    key: str,
    variant: int,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Variant ``variant`` of one sample (0 returns the inputs unchanged); see module doc."""
    if variant < 0:
        raise ValueError(f"variant must be >= 0, got {variant}")
    if variant == 0:
        return relit, flat, env
    return apply_params(relit, flat, env, draw_params(seed, key, variant))

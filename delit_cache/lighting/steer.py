"""Move an env map's brightest light to a given direction, keeping the rest of the map.

The heads' light head reads the dominant light's direction off the face better than the
brightest spot of their own env map shows it (``benchmarks/results/cpu-leave-hdri-out.md``,
twenty-first session). ``move_brightest_light`` carries that direction into the map: the
light (what the map holds above its surroundings within ``cone_deg`` of its brightest
direction) is lifted out and put back, rotated, about the new direction. Radiance per
direction is kept, so the light's energy and shape travel with it; the rest of the map is
untouched. Where what stays behind (the light's surroundings) or another light would still
outshine it, the moved light is scaled up until it is the brightest spot of the map, by at
most ``STEER_MAX_BOOST``: the map then shows the light where the head puts it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from delit_cache.lighting.envmap import ENV_SIZE, direction_grid, direction_to_uv, resample_env
from delit_cache.lighting.sphere_metrics import blurred_luminance, brightest_direction

STEER_CONE_DEG = 25.0  # half-angle of the light moved (it fades out by 1.5x this)
STEER_MAX_BOOST = 2.0  # the most the moved light is scaled up to outshine the rest of the map
STEER_MARGIN = 1.05  # by how much it must outshine it (blurred luminance)


def rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B,3,3]`` rotations taking unit directions ``a`` ``[B,3]`` to ``b`` (Rodrigues;
    about ``a x b``, the identity where they coincide)."""
    axis = torch.cross(a, b, dim=1)
    sin = axis.norm(dim=1)
    cos = (a * b).sum(1)
    k = axis / sin.clamp_min(1e-12)[:, None]
    zero = torch.zeros_like(sin)
    cross = torch.stack(
        [zero, -k[:, 2], k[:, 1], k[:, 2], zero, -k[:, 0], -k[:, 1], k[:, 0], zero], 1
    ).view(-1, 3, 3)
    eye = torch.eye(3, dtype=a.dtype, device=a.device).expand_as(cross)
    return eye + sin[:, None, None] * cross + (1 - cos)[:, None, None] * (cross @ cross)


def sample_env(env: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of equirectangular maps ``[B,C,H,W]`` at directions ``[B,3,h,w]``
    -> ``[B,C,h,w]`` (wrapping in azimuth)."""
    u, v = direction_to_uv(dirs, dim=1)
    w = env.shape[-1]
    wrapped = torch.cat([env[..., -1:], env, env[..., :1]], dim=-1)
    grid = torch.stack([(u * w + 1) / (w + 2) * 2 - 1, v * 2 - 1], dim=-1)
    return F.grid_sample(wrapped, grid, align_corners=False, padding_mode="border")


def move_brightest_light(
    env: torch.Tensor,
    target: torch.Tensor,
    cone_deg: float = STEER_CONE_DEG,
    max_boost: float = STEER_MAX_BOOST,
) -> torch.Tensor:
    """Linear env maps ``[B,3,H,W]`` with their brightest light moved to unit ``target``
    directions ``[B,3]``.

    The light is the map minus its mean over the ring ``cone_deg``-``1.5 cone_deg`` about
    the brightest direction (``brightest_direction``), clamped at zero, faded out linearly
    from ``cone_deg`` to ``1.5 cone_deg``. It is taken out and added back rotated so that its
    centre lands on ``target``, scaled by ``_boost`` (1 to ``max_boost``; 1: never scaled).
    """
    if env.ndim != 4 or env.shape[1] != 3 or target.shape != (env.shape[0], 3):
        raise ValueError(
            f"expected env [B,3,H,W] and target [B,3], got {env.shape}, {target.shape}"
        )
    b, _, h, w = env.shape
    x = env.float()
    target = F.normalize(target.float(), dim=1)
    peak = brightest_direction(x)
    grid = direction_grid(h, w, device=x.device).expand(b, -1, -1, -1)
    angle = _angle_deg(grid, peak)
    ring = ((angle > cone_deg) & (angle < 1.5 * cone_deg)).to(x.dtype)[:, None]
    around = (x * ring).sum((2, 3)) / ring.sum((2, 3)).clamp_min(1.0)
    fade = ((1.5 * cone_deg - angle) / (0.5 * cone_deg)).clamp(0.0, 1.0)[:, None]
    light = (x - around[:, :, None, None]).clamp_min(0.0) * fade
    back = rotation_between(target, peak)  # new place -> old
    moved = sample_env(light, torch.einsum("bij,bjhw->bihw", back, grid))
    rest = x - light
    moved = moved * _boost(rest, moved, target, cone_deg, max_boost)[:, None, None, None]
    return (rest + moved).clamp_min(0.0).to(env.dtype)


def _angle_deg(grid: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Degrees between each pixel's direction of ``grid`` ``[B,3,H,W]`` and ``direction``
    ``[B,3]`` -> ``[B,H,W]``."""
    return torch.rad2deg(torch.acos(torch.einsum("bchw,bc->bhw", grid, direction).clamp(-1, 1)))


def _boost(
    rest: torch.Tensor, moved: torch.Tensor, target: torch.Tensor, cone_deg: float, max_boost: float
) -> torch.Tensor:
    """Per map ``[B]``: the factor (1 to ``max_boost``) by which the ``moved`` light must be
    scaled for its peak to exceed by ``STEER_MARGIN`` the brightest spot of ``rest`` (the map
    without the light) more than ``cone_deg`` from ``target``; brightness as
    ``brightest_direction`` finds lights (blurred luminance at ``ENV_SIZE``)."""
    rest_lum, _ = blurred_luminance(resample_env(rest, ENV_SIZE))
    moved_lum, _ = blurred_luminance(resample_env(moved, ENV_SIZE))
    grid = direction_grid(*ENV_SIZE, device=rest.device).expand(len(rest), -1, -1, -1)
    far = _angle_deg(grid, target) > cone_deg
    at = moved_lum.flatten(1).argmax(1, keepdim=True)
    under = rest_lum.flatten(1).gather(1, at)[:, 0]
    other = (rest_lum * far).flatten(1).amax(1)
    needed = (STEER_MARGIN * other - under) / moved_lum.flatten(1).gather(1, at)[:, 0]
    return needed.nan_to_num(1.0, 1.0, 1.0).clamp(1.0, max(1.0, max_boost))

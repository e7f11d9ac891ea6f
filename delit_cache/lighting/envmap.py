"""Equirectangular environment maps: directions, solid angles, resampling, rotation.

Convention (fixed for the whole project). World: y up, right-handed; the camera sits on +z
looking toward -z at the subject at the origin. A pixel holds the linear radiance arriving
FROM direction d. Pixel (row i, col j) of an h x w map has centre

    u = (j + 0.5) / w,   v = (i + 0.5) / h
    phi = 2*pi*u - pi    (azimuth)          theta = pi*v   (polar angle from +y)
    d = (sin(theta) sin(phi), cos(theta), -sin(theta) cos(phi))

::

    u:   0          0.25         0.5          0.75          1
    v=0  +---------------------- up (+y) -----------------------+
         |            |            |            |               |
         |  behind    |   left     |  ahead     |   right       |
    0.5  |  camera    |   (-x)     |  (-z)      |   (+x)        |  behind camera
         |  (+z)      |            | background |               |  (+z)
         |            |            |            |               |
    v=1  +--------------------- down (-y) ----------------------+

The image centre is the background behind the subject; the left/right edges are the light
behind the camera, which falls on the face. Rotating by +alpha degrees about +y moves light
from azimuth phi to phi + alpha, i.e. rolls the columns right by alpha/360*w.

Env maps are float tensors ``[B,3,h,w]`` or ``[3,h,w]`` of non-negative linear radiance;
every function here accepts both and returns the same rank it was given.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from delit_cache.data.imageio import read_hdr
from delit_cache.utils.errors import DelitError

ENV_SIZE = (128, 256)  # (h, w) of the project's env maps


def direction_grid(
    h: int, w: int, *, device: torch.device | str | None = None, dtype=torch.float32
) -> torch.Tensor:
    """Unit direction of each pixel centre of an ``h x w`` map -> ``[3,h,w]`` (x, y, z)."""
    theta = (torch.arange(h, device=device, dtype=torch.float64) + 0.5) * (math.pi / h)
    phi = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) * (2 * math.pi / w) - math.pi
    return angles_to_direction(theta[:, None], phi[None, :]).to(dtype)


def angles_to_direction(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Polar angle ``theta`` (from +y) and azimuth ``phi`` (broadcastable) -> ``[3, ...]``."""
    theta, phi = torch.broadcast_tensors(theta, phi)
    st = torch.sin(theta)
    return torch.stack([st * torch.sin(phi), torch.cos(theta), -st * torch.cos(phi)], dim=0)


def solid_angles(
    h: int, w: int, *, device: torch.device | str | None = None, dtype=torch.float32
) -> torch.Tensor:
    """Exact solid angle (steradians) of each pixel -> ``[h,w]``; the sum is 4*pi.

    A pixel spans ``2*pi/w`` in azimuth and ``[theta0, theta1]`` in polar angle, so its solid
    angle is ``2*pi/w * (cos(theta0) - cos(theta1))``.
    """
    edges = torch.arange(h + 1, device=device, dtype=torch.float64) * (math.pi / h)
    band = torch.cos(edges[:-1]) - torch.cos(edges[1:])
    return (band[:, None] * (2 * math.pi / w)).expand(h, w).to(dtype).contiguous()


def direction_to_uv(d: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions (x, y, z along ``dim``; need not be unit) -> ``(u, v)``, each in [0, 1].

    ``u`` is the horizontal image coordinate (0 = left edge, azimuth -pi), ``v`` the vertical
    (0 = top = +y). Inverse of the pixel-centre formula in the module docstring.
    """
    x, y, z = d.unbind(dim)
    # atan2 forms keep gradients finite at the poles (acos would give inf there).
    theta = torch.atan2(torch.sqrt(x * x + z * z + 1e-20), y)
    phi = torch.atan2(x, -z)
    return (phi + math.pi) / (2 * math.pi), theta / math.pi


def _axis_weights(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Overlap of source cells with destination cells, normalised per destination cell.

    Edges are increasing 1-D coordinates (a measure: u, or cos-theta made increasing).
    Returns ``[n_dst, n_src]``; row k holds the fraction of destination cell k covered by each
    source cell, so rows sum to 1.
    """
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    overlap = np.clip(hi - lo, 0.0, None)
    return overlap / (dst_edges[1:] - dst_edges[:-1])[:, None]


def resample_matrices(
    src: tuple[int, int], dst: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-averaging matrices ``(A_rows [H,h], A_cols [W,w])`` from ``src=(h,w)`` to ``dst=(H,W)``.

    ``out = A_rows @ env @ A_cols.T`` averages radiance over the exact overlap of each target
    pixel with the source pixels, measured in solid angle (rows in cos(theta), columns in
    azimuth), so total energy sum(radiance * solid angle) is preserved exactly.
    """
    (h, w), (hh, ww) = src, dst
    # -cos(theta) increases with the row index, and solid angle is uniform in it.
    rows = _axis_weights(
        -np.cos(np.linspace(0, np.pi, h + 1)), -np.cos(np.linspace(0, np.pi, hh + 1))
    )
    cols = _axis_weights(np.linspace(0, 1, w + 1), np.linspace(0, 1, ww + 1))
    return torch.from_numpy(rows).float(), torch.from_numpy(cols).float()


def as_env_batch(env: torch.Tensor, name: str = "env") -> tuple[torch.Tensor, bool]:
    """``[3,h,w]`` or ``[B,3,h,w]`` -> (``[B,3,h,w]``, was_unbatched); raises ValueError."""
    if env.dim() == 3:
        env = env.unsqueeze(0)
        squeeze = True
    elif env.dim() == 4:
        squeeze = False
    else:
        raise ValueError(f"{name} must be [3,h,w] or [B,3,h,w], got {tuple(env.shape)}")
    if env.shape[1] != 3:
        raise ValueError(f"{name} must have 3 channels, got {tuple(env.shape)}")
    return env, squeeze


def resample_env(env: torch.Tensor, size: tuple[int, int] = ENV_SIZE) -> torch.Tensor:
    """Area-average an env map ``[B,3,h,w]`` / ``[3,h,w]`` to ``size=(H,W)``; energy-exact.

    Each target pixel gets the solid-angle-weighted mean of the source radiance it covers
    (partial pixels by their overlap, so non-integer ratios like 500x1000 -> 128x256 work).
    Small bright sources are spread, never skipped: energy is kept to float precision.
    Differentiable; returns the rank it was given.
    """
    x, squeeze = as_env_batch(env)
    if tuple(x.shape[-2:]) == tuple(size):
        return env
    a_rows, a_cols = resample_matrices(tuple(x.shape[-2:]), size)
    a_rows = a_rows.to(device=x.device, dtype=x.dtype)
    a_cols = a_cols.to(device=x.device, dtype=x.dtype)
    out = torch.matmul(torch.matmul(a_rows, x), a_cols.T)
    return out[0] if squeeze else out


def rotate_env(env: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the lighting by ``degrees`` about the vertical axis (+y).

    Light formerly from azimuth phi comes from phi + degrees afterwards: the columns move right
    by ``degrees/360*w`` pixels. Whole-pixel shifts are an exact roll; the fractional part is
    linear interpolation between neighbouring columns (energy-preserving, slightly blurring).
    """
    x, squeeze = as_env_batch(env)
    w = x.shape[-1]
    shift = (float(degrees) / 360.0 * w) % w
    whole = math.floor(shift)
    frac = shift - whole
    out = torch.roll(x, shifts=whole, dims=-1)
    if frac > 1e-6:
        out = (1.0 - frac) * out + frac * torch.roll(out, shifts=1, dims=-1)
    return out[0] if squeeze else out


def mirror_env(env: torch.Tensor) -> torch.Tensor:
    """The lighting mirrored left-right (x -> -x): azimuth phi becomes -phi, exactly (the
    pixel centres are symmetric about the map's centre column)."""
    return torch.flip(env, dims=[-1])


def mirror_direction(direction: torch.Tensor) -> torch.Tensor:
    """Directions ``[...,3]`` mirrored left-right as ``mirror_env`` mirrors a map: x -> -x."""
    return direction * direction.new_tensor([-1.0, 1.0, 1.0])


def tilt_env(env: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the lighting by ``degrees`` about the camera's right axis (+x).

    Positive ``degrees`` raise a light ahead of the camera (toward -z, behind the subject) by
    that much and move light from straight up (+y) toward behind the camera (+z). Each output pixel
    reads its source direction bilinearly (wrapping in azimuth), so a tilt of a few degrees
    moves a sun's elevation and keeps its energy to within interpolation error.
    """
    x, squeeze = as_env_batch(env)
    h, w = x.shape[-2:]
    a = math.radians(float(degrees))
    d = direction_grid(h, w, device=x.device, dtype=torch.float64)
    # each output direction reads the source direction it came from (rotated back by -a)
    c, s = math.cos(a), math.sin(a)
    src = torch.stack([d[0], c * d[1] + s * d[2], c * d[2] - s * d[1]])
    u, v = direction_to_uv(src)
    # grid_sample on the map padded by one column each side (azimuth wraps)
    padded = torch.cat([x[..., -1:], x, x[..., :1]], dim=-1)
    gx = (u * w + 1.0) / (w + 2) * 2 - 1
    gy = v * 2 - 1
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)[None].expand(x.shape[0], h, w, 2)
    out = torch.nn.functional.grid_sample(
        padded, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0] if squeeze else out


def scale_exposure(env: torch.Tensor, stops: float) -> torch.Tensor:
    """Multiply radiance by ``2**stops`` (positive stops brighten)."""
    return env * (2.0 ** float(stops))


def env_energy(env: torch.Tensor) -> torch.Tensor:
    """Total energy per channel, sum(radiance * solid angle): ``[...,3,h,w] -> [...,3]``."""
    h, w = env.shape[-2:]
    omega = solid_angles(h, w, device=env.device, dtype=env.dtype)
    return (env * omega).sum(dim=(-2, -1))


def load_env(path: str | Path, size: tuple[int, int] | None = ENV_SIZE) -> torch.Tensor:
    """Read an HDR env map (.exr / .hdr) -> ``[3,H,W]`` float32 linear radiance.

    The map is area-resampled to ``size`` (default 128x256; ``None`` keeps it). Raises
    ``DelitError`` for unreadable files, NaN/Inf/negative radiance, or a map whose aspect is
    not 2:1 within 2 %.
    """
    arr = read_hdr(path)
    h, w = arr.shape[:2]
    if abs(w / h - 2.0) > 0.04:
        raise DelitError(f"{path}: not an equirectangular env map (size {h}x{w}, need 2:1)")
    env = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return env if size is None else resample_env(env, size)


def require_light(env: torch.Tensor, name: object) -> torch.Tensor:
    """``env`` itself; ``DelitError`` naming ``name`` when it holds no light at all (every
    value 0): a portrait lit by it is black, and every sphere metric against it is undefined."""
    if not bool((env > 0).any()):
        raise DelitError(f"{name}: env map holds no light (every value is 0)")
    return env


def fixture_envs() -> dict[str, Path]:
    """The bundled CC0 HDRI fixtures (128x256 half-float EXR): name (file stem) -> path.

    city, courtyard, interior, studio, sunrise; see ``delit_cache/assets/hdri/NOTICE``.
    """
    folder = Path(str(resources.files("delit_cache") / "assets" / "hdri"))
    return {p.stem: p for p in sorted(folder.glob("*.exr"))}

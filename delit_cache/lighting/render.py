"""Differentiable image-based shading under equirectangular env maps (torch, CPU-fast).

Conventions: see ``delit_cache.lighting.envmap`` (y up, camera on +z looking at -z). Env maps are
linear radiance ``[B,3,h,w]`` or ``[3,h,w]``; normals, view and reflection directions are
channel-first unit vectors ``[B,3,H,W]`` or ``[3,H,W]`` in world space. Every shading function
returns ``[B,3,H,W]`` linear radiance (``B`` = the larger of the env and direction batch sizes;
a batch of 1 broadcasts). Everything is differentiable with respect to the env map (and the
albedo, roughness, specular weight).

Method: maps are area-averaged to at most 128x256; the ``LIGHTS_K`` most powerful pixels
(a sun, a lamp) are shaded exactly as point lights, and the rest is convolved over the sphere
at 64x128 with the clamped-cosine or GGX kernel (exact quadrature, one FFT along azimuth per
row pair) onto a 65x128 grid of normals looked up bilinearly. Specular is the split-sum
pre-filter (``n = v = r``, alpha = roughness**2). Tested against brute-force quadrature
within 2 % (diffuse) and 3 % (specular, roughness 0.2-0.7); below roughness ~0.15 the lobe is
narrower than a map pixel and aliases: use ``mirror_lookup``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from delit_cache.lighting.envmap import (
    ENV_SIZE,
    as_env_batch,
    direction_grid,
    direction_to_uv,
    resample_env,
    solid_angles,
)

LIGHTS_K = 8  # brightest pixels shaded exactly
COARSE_SIZE = (64, 128)  # residual env resolution for the convolutions
NORMAL_ROWS = 65  # rows of the irradiance / pre-filter grid, poles included
MIN_ROUGHNESS = 0.05  # smaller roughness is clamped (alpha = 0.0025)
RESIDUAL_MIN_ALPHA2 = 0.05**2  # lobes narrower than the 64x128 grid are widened for the residual
ROUGHNESS_LEVELS = (0.224, 0.35, 0.5, 0.7, 1.0)  # for per-pixel roughness maps
LUMA = (0.2126, 0.7152, 0.0722)
SPHERE_ALBEDO = 0.8
MATTE_ROUGHNESS = 0.33


@dataclass
class PreparedEnv:
    """An env map split for shading: exact point lights plus a coarse residual.

    Shapes: ``env [B,3,h,w]`` (<= 128x256), ``light_dirs [B,K,3]``, ``light_power [B,3,K]``
    (radiance x solid angle), ``residual [B,3,64,128]``.
    """

    env: torch.Tensor
    light_dirs: torch.Tensor
    light_power: torch.Tensor
    residual: torch.Tensor


def prepare_env(env: torch.Tensor) -> PreparedEnv:
    """Split an env map ``[B,3,h,w]`` / ``[3,h,w]`` for fast shading (see module docstring)."""
    x, _ = as_env_batch(env)
    x = x.float()
    h, w = x.shape[-2:]
    if h * w > ENV_SIZE[0] * ENV_SIZE[1]:
        x = resample_env(x, ENV_SIZE)
        h, w = ENV_SIZE
    b = x.shape[0]
    omega = solid_angles(h, w, device=x.device).flatten()
    flat = x.flatten(2)
    luma = torch.tensor(LUMA, device=x.device)
    power = (flat * luma[None, :, None]).sum(1) * omega
    k = min(LIGHTS_K, h * w)
    idx = power.detach().topk(k, dim=1).indices  # [B,K]
    rad = flat.gather(2, idx[:, None, :].expand(b, 3, k))
    light_power = rad * omega[idx][:, None, :]
    light_dirs = direction_grid(h, w, device=x.device).flatten(1).T[idx]
    keep = torch.ones_like(power).scatter_(1, idx, 0.0)
    residual = (flat * keep[:, None, :]).view(b, 3, h, w)
    return PreparedEnv(x, light_dirs, light_power, resample_env(residual, COARSE_SIZE))


# ----------------------------------------------------------------------------- helpers


def _dirs4(d: torch.Tensor, name: str) -> torch.Tensor:
    if d.dim() == 3:
        d = d.unsqueeze(0)
    if d.dim() != 4 or d.shape[1] != 3:
        raise ValueError(f"{name} must be [3,H,W] or [B,3,H,W], got {tuple(d.shape)}")
    return d.float()


def _batch_size(*sizes: int) -> int:
    b = max(sizes)
    if any(s not in (1, b) for s in sizes):
        raise ValueError(f"batch sizes {sizes} do not broadcast")
    return b


def _expand(t: torch.Tensor, b: int) -> torch.Tensor:
    return t if t.shape[0] == b else t.expand(b, *t.shape[1:])


def _ggx_weight(cos_rl: torch.Tensor, alpha2: torch.Tensor | float) -> torch.Tensor:
    """Split-sum GGX weight ``D(h) * max(r.l, 0)`` with ``n = v = r``; ``(r.h)^2 = (1+r.l)/2``."""
    # D = a2 / (pi * (nh2 * (a2 - 1) + 1)^2) with nh2 = (1 + c) / 2, in few passes.
    a2 = torch.as_tensor(alpha2, dtype=cos_rl.dtype, device=cos_rl.device)
    t = torch.addcmul((a2 + 1.0) * 0.5, cos_rl, (a2 - 1.0) * 0.5)
    return torch.relu(cos_rl) / t.square() * (a2 / math.pi)


def _ggx_norm(alpha2: torch.Tensor) -> torch.Tensor:
    """Closed-form integral over the sphere of ``_ggx_weight`` (4 as alpha -> 0, 1 at alpha=1)."""
    a2 = alpha2.double().clamp(1e-8, 1.0 - 1e-4)
    one = 1.0 - a2
    val = 8.0 * a2 * torch.log(2.0 * a2 / (1.0 + a2)) / one**2 + 4.0 / one
    return val.to(alpha2.dtype)


def _alpha2(roughness: torch.Tensor | float) -> torch.Tensor:
    r = torch.as_tensor(roughness, dtype=torch.float32)
    return r.clamp(MIN_ROUGHNESS, 1.0) ** 2


def _cos_table(h_out: int, h_in: int, w: int, device) -> torch.Tensor:
    """Cosine between output-grid row ``o`` (theta = pi*o/(h_out-1)) and input pixel rows ``k``
    at azimuth offset ``2*pi*j/w`` -> ``[h_out, h_in, w]``."""
    t_out = torch.linspace(0.0, math.pi, h_out, device=device, dtype=torch.float64)
    t_in = (torch.arange(h_in, device=device, dtype=torch.float64) + 0.5) * (math.pi / h_in)
    dphi = torch.arange(w, device=device, dtype=torch.float64) * (2 * math.pi / w)
    s = torch.sin(t_out)[:, None, None] * torch.sin(t_in)[None, :, None]
    c = torch.cos(t_out)[:, None, None] * torch.cos(t_in)[None, :, None]
    return (s * torch.cos(dphi)[None, None, :] + c).float()


def _sphere_conv(env: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``out[o, j] = sum_{k,l} kernel[o, k, l - j] env[k, l]`` by FFT along azimuth.

    ``env [B,3,h_in,w]``, ``kernel [..., h_out, h_in, w]`` (even in the last axis) ->
    ``[B,3,h_out,w]`` (or ``[B,3,L,h_out,w]`` for a leading level axis on the kernel).
    """
    w = env.shape[-1]
    env_f = torch.view_as_real(torch.fft.rfft(env, dim=-1))  # [B,3,h_in,F,2]
    ker_f = torch.fft.rfft(kernel, dim=-1).real  # real: the kernel is even in azimuth
    if kernel.dim() == 3:
        out_f = torch.einsum("okf,bckfz->bcofz", ker_f, env_f)
    else:
        out_f = torch.einsum("lokf,bckfz->bclofz", ker_f, env_f)
    return torch.fft.irfft(torch.view_as_complex(out_f.contiguous()), n=w, dim=-1)


def _pad_azimuth(m: torch.Tensor) -> torch.Tensor:
    return torch.cat([m[..., -1:], m, m[..., :1]], dim=-1)


def _grid_xy(dirs: torch.Tensor, w: int, h: int, pole_rows: bool) -> tuple[torch.Tensor, ...]:
    """grid_sample coordinates (align_corners=True, one wrap column each side)."""
    u, v = direction_to_uv(dirs, dim=1)
    gx = (u * w + 0.5) / (w + 1) * 2.0 - 1.0
    gy = v * 2.0 - 1.0 if pole_rows else (v * h - 0.5) / max(h - 1, 1) * 2.0 - 1.0
    return gx, gy


def _lookup(m: torch.Tensor, dirs: torch.Tensor, pole_rows: bool) -> torch.Tensor:
    """Bilinear lookup of map ``m [B,3,h,w]`` in directions ``dirs [B,3,H,W]`` (azimuth wraps).

    ``pole_rows``: rows sit at theta = pi*i/(h-1) (a normal grid) rather than pixel centres.
    """
    h, w = m.shape[-2:]
    gx, gy = _grid_xy(dirs, w, h, pole_rows)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(
        _pad_azimuth(m), grid, mode="bilinear", padding_mode="border", align_corners=True
    )


def _lookup_levels(m: torch.Tensor, dirs: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Trilinear lookup in ``m [B,3,L,h,w]`` (pole rows); ``level [B,H,W]`` fractional index."""
    n_levels, h, w = m.shape[-3:]
    gx, gy = _grid_xy(dirs, w, h, pole_rows=True)
    gz = level / max(n_levels - 1, 1) * 2.0 - 1.0
    grid = torch.stack([gx, gy, gz], dim=-1)[:, None]
    out = F.grid_sample(
        _pad_azimuth(m), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[:, :, 0]


def _point_lights(prep: PreparedEnv, dirs: torch.Tensor, weight_fn) -> torch.Tensor:
    """``sum_k power_k * weight_fn(dir_k . d)`` for ``dirs [B,3,H,W]`` -> ``[B,3,H,W]``."""
    b, _, h, w = dirs.shape
    ld, lp = _expand(prep.light_dirs, b), _expand(prep.light_power, b)
    cos = torch.bmm(ld, dirs.reshape(b, 3, h * w))  # [B,K,N]
    return torch.bmm(lp, weight_fn(cos)).view(b, 3, h, w)


# ----------------------------------------------------------------------------- public API


def diffuse_shading(env: torch.Tensor | PreparedEnv, normals: torch.Tensor) -> torch.Tensor:
    """Radiance leaving a white Lambertian surface (albedo 1): irradiance(n) / pi.

    ``env [B,3,h,w]`` / ``[3,h,w]`` (or a ``PreparedEnv``), ``normals [B,3,H,W]`` / ``[3,H,W]``
    unit -> ``[B,3,H,W]`` linear radiance, >= 0. Exactly 1 under a uniform env of radiance 1.
    """
    prep = env if isinstance(env, PreparedEnv) else prepare_env(env)
    n = _dirs4(normals, "normals").to(prep.env.device)
    b = _batch_size(prep.env.shape[0], n.shape[0])
    n = _expand(n, b)
    hc, wc = prep.residual.shape[-2:]
    cos = _cos_table(NORMAL_ROWS, hc, wc, n.device)
    omega = solid_angles(hc, wc, device=n.device)[:, :1]  # [h_in,1]
    kernel = cos.clamp_min(0.0) * omega / math.pi
    irr_map = _sphere_conv(prep.residual, kernel)
    out = _lookup(_expand(irr_map, b), n, pole_rows=True)
    return out + _point_lights(prep, n, lambda c: c.clamp_min(0.0) / math.pi)


def _residual_specular(prep: PreparedEnv, r: torch.Tensor, alpha2: torch.Tensor) -> torch.Tensor:
    """Pre-filtered residual in directions ``r``; ``alpha2`` scalar or per-pixel ``[B,H,W]``."""
    hc, wc = prep.residual.shape[-2:]
    cos = _cos_table(NORMAL_ROWS, hc, wc, r.device)
    omega = solid_angles(hc, wc, device=r.device)[:, :1]
    b = r.shape[0]
    if alpha2.dim() == 0:
        ker = _ggx_weight(cos, alpha2.clamp_min(RESIDUAL_MIN_ALPHA2)) * omega
        ker = ker / ker.sum(dim=(-2, -1), keepdim=True)
        return _lookup(_expand(_sphere_conv(prep.residual, ker), b), r, pole_rows=True)
    levels = torch.tensor(ROUGHNESS_LEVELS, device=r.device)
    la2 = (levels**2).clamp_min(RESIDUAL_MIN_ALPHA2)[:, None, None, None]
    ker = _ggx_weight(cos[None], la2) * omega
    ker = ker / ker.sum(dim=(-2, -1), keepdim=True)
    maps = _expand(_sphere_conv(prep.residual, ker), b)
    rough = alpha2.sqrt().clamp(levels[0], levels[-1]).contiguous()
    hi = torch.searchsorted(levels, rough.detach()).clamp(1, len(levels) - 1)
    lo_v, hi_v = levels[hi - 1], levels[hi]
    level = (hi - 1).float() + (rough - lo_v) / (hi_v - lo_v)
    return _lookup_levels(maps, r, level)


def _roughness_alpha2(roughness: torch.Tensor | float, b: int, h: int, w: int, device):
    """Roughness (scalar or broadcastable to ``[B,1,H,W]``) -> alpha^2, 0-dim or ``[B,H,W]``."""
    a2 = _alpha2(roughness).to(device)
    if a2.numel() == 1:
        return a2.reshape(())
    if a2.dim() == 2:
        a2 = a2[None, None]
    elif a2.dim() == 3:
        a2 = a2[:, None] if a2.shape[0] != 1 or a2.shape[-2:] != (h, w) else a2[None]
    return a2.expand(b, 1, h, w)[:, 0]


def specular_shading(
    env: torch.Tensor | PreparedEnv,
    normals: torch.Tensor,
    view_dirs: torch.Tensor,
    roughness: float | torch.Tensor,
) -> torch.Tensor:
    """Pre-filtered GGX radiance around the reflection direction (split sum), no Fresnel.

    ``normals``, ``view_dirs`` (surface -> camera): unit ``[B,3,H,W]`` / ``[3,H,W]``.
    ``roughness`` in [0, 1] (clamped to >= 0.05; alpha = roughness**2): a float or a tensor
    broadcastable to ``[B,1,H,W]``. Returns ``[B,3,H,W]`` linear radiance, >= 0; exactly the
    env radiance under a uniform env.
    """
    prep = env if isinstance(env, PreparedEnv) else prepare_env(env)
    n = _dirs4(normals, "normals").to(prep.env.device)
    v = _dirs4(view_dirs, "view_dirs").to(n.device)
    b = _batch_size(prep.env.shape[0], n.shape[0], v.shape[0])
    n, v = _expand(n, b), _expand(v, b)
    r = _reflect(n, v)
    h, w = n.shape[-2:]
    a2 = _roughness_alpha2(roughness, b, h, w, n.device)
    res = _residual_specular(prep, r, a2)
    a2_px = a2 if a2.dim() == 0 else a2.reshape(b, 1, h * w)
    norm = _ggx_norm(a2_px)
    lights = _point_lights(prep, r, lambda c: _ggx_weight(c, a2_px) / norm)
    return res + lights


def mirror_lookup(env: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Env radiance in ``directions [B,3,H,W]`` / ``[3,H,W]`` (bilinear in the full-res map,
    azimuth wraps, rows clamp at the poles) -> ``[B,3,H,W]``."""
    x, _ = as_env_batch(env)
    d = _dirs4(directions, "directions").to(x.device)
    b = _batch_size(x.shape[0], d.shape[0])
    return _lookup(_expand(x.float(), b), _expand(d, b), pole_rows=False)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Channel dot product of ``[B,3,H,W]`` tensors -> ``[B,1,H,W]`` (faster than sum(1))."""
    return (a[:, 0:1] * b[:, 0:1]).addcmul_(a[:, 1:2], b[:, 1:2]).addcmul_(a[:, 2:3], b[:, 2:3])


def _reflect(n: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unit reflection ``2 (n.v) n - v`` of ``v`` about ``n`` (both ``[B,3,H,W]``)."""
    r = 2.0 * _dot(n, v) * n - v
    return r * torch.rsqrt(_dot(r, r).clamp_min(1e-16))


def _camera_dirs(like: torch.Tensor) -> torch.Tensor:
    v = torch.zeros_like(like)
    v[:, 2] = 1.0
    return v


def shade(
    env: torch.Tensor,
    normals: torch.Tensor,
    albedo: torch.Tensor,
    roughness: float | torch.Tensor = 0.4,
    specular: float | torch.Tensor = 0.04,
    view_dirs: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear radiance of a dielectric surface: ``albedo * diffuse + F * specular_shading``.

    ``albedo``: linear ``[B,3,H,W]`` / ``[3,H,W]`` in [0, 1]. ``F`` is Schlick's Fresnel with
    ``f0 = specular`` (float or tensor broadcastable to ``[B,1,H,W]``) and ``f90 =
    min(1, 50 f0)`` (Filament's convention: plain Schlick for f0 >= 0.02, and
    ``specular=0`` switches the specular term off). ``view_dirs=None``: an
    orthographic camera looking along -z (view direction +z). ``mask`` (``[B,1,H,W]``,
    ``[H,W]``..., bool or float) zeroes the background. Returns ``[B,3,H,W]``.
    """
    prep = prepare_env(env)
    n = _dirs4(normals, "normals").to(prep.env.device)
    v = _camera_dirs(n) if view_dirs is None else _dirs4(view_dirs, "view_dirs").to(n.device)
    alb = _dirs4(albedo, "albedo").to(n.device)
    diffuse = diffuse_shading(prep, n)
    spec = specular_shading(prep, n, v, roughness)
    b = _batch_size(diffuse.shape[0], spec.shape[0], alb.shape[0])
    cos_v = _dot(_expand(n, b), _expand(v, b)).clamp(0.0, 1.0)
    f0 = torch.as_tensor(specular, dtype=torch.float32, device=n.device)
    f90 = (50.0 * f0).clamp(0.0, 1.0)  # Filament / UE4: no specular at all when f0 = 0
    fresnel = f0 + (f90 - f0) * (1.0 - cos_v) ** 5
    out = alb * diffuse + fresnel * spec
    if mask is not None:
        out = out * mask.to(out.device, out.dtype)
    return out


def sphere_normals(size: int = 128, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normals ``[3,S,S]`` of a unit sphere seen by an orthographic camera on +z, and its mask
    ``[S,S]`` bool (pixel centres inside the disc). Normals outside the mask are +z."""
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    y, x = -c[:, None].expand(size, size), c[None, :].expand(size, size)
    r2 = x * x + y * y
    mask = r2 < 1.0
    z = torch.sqrt((1.0 - r2).clamp_min(0.0))
    n = torch.stack([x, y, z])
    n = torch.where(mask[None], n, torch.tensor([0.0, 0.0, 1.0], device=device)[:, None, None])
    return n, mask


def render_spheres(env: torch.Tensor, size: int = 128) -> dict[str, torch.Tensor]:
    """The three-sphere protocol under an orthographic camera on +z, differentiable in ``env``.

    ``env [B,3,h,w]`` / ``[3,h,w]`` -> dict with ``diffuse`` (gray Lambertian, albedo 0.8),
    ``matte`` (matte silver: metallic GGX, roughness 0.33, f0 = 1, so pre-filtered radiance),
    ``mirror`` (perfect mirror), each ``[B,3,S,S]`` linear radiance, 0 outside the disc, and
    ``mask [S,S]`` bool.
    """
    prep = prepare_env(env)
    n, mask = sphere_normals(size, device=prep.env.device)
    v = torch.zeros_like(n)
    v[2] = 1.0
    m = mask.float()
    diffuse = SPHERE_ALBEDO * diffuse_shading(prep, n) * m
    matte = specular_shading(prep, n, v, MATTE_ROUGHNESS) * m
    r = 2.0 * n[2:3] * n - v
    mirror = mirror_lookup(prep.env, r) * m
    return {"diffuse": diffuse, "matte": matte, "mirror": mirror, "mask": mask}


def reference_diffuse_shading(
    env: torch.Tensor, normals: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """Slow exact reference: brute-force quadrature of irradiance/pi over every env pixel.

    Same shapes as ``diffuse_shading``; for tests and checks only (O(pixels x env pixels)).
    """
    x, _ = as_env_batch(env)
    x = x.double()
    n = _dirs4(normals, "normals").double()
    b = _batch_size(x.shape[0], n.shape[0])
    h, w = x.shape[-2:]
    dirs = direction_grid(h, w, dtype=torch.float64).flatten(1)  # [3,P]
    power = _expand(x, b).flatten(2) * solid_angles(h, w, dtype=torch.float64).flatten()
    nf = _expand(n, b).flatten(2)  # [B,3,N]
    outs = []
    for s in range(0, nf.shape[-1], chunk):
        cos = torch.einsum("pd,bdn->bpn", dirs.T, nf[..., s : s + chunk]).clamp_min(0.0)
        outs.append(torch.bmm(power, cos) / math.pi)
    return torch.cat(outs, dim=-1).view(b, 3, *n.shape[-2:]).float()


def sphere_operators(
    size: int, env_size: tuple[int, int], device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear maps from an ``h x w`` env map to the diffuse and matte spheres (for losses).

    Returns ``ops [2, h*w, M]`` (diffuse, matte silver, as in ``render_spheres``) and the
    sphere mask ``[S,S]`` with its ``M`` pixels: ``sphere[b, c, m] = sum_p env[b, c, p] *
    ops[k, p, m]``. Exact quadrature over the map's pixels (each one a point light at its
    centre); the matte weights of each sphere pixel are normalised to sum to 1, so a uniform
    map renders exactly. Cheap enough to apply every training step, and the targets'
    spheres come from the same operator, so loss and target agree on any aliasing.
    """
    n, mask = sphere_normals(size, device=device)
    nm = n[:, mask]  # [3,M]
    dirs = direction_grid(*env_size, device=device).flatten(1)  # [3,P]
    omega = solid_angles(*env_size, device=device).flatten()[:, None]  # [P,1]
    diffuse = SPHERE_ALBEDO * (dirs.T @ nm).clamp_min(0.0) / math.pi * omega
    view = torch.zeros_like(nm)
    view[2] = 1.0
    r = 2.0 * (nm * view).sum(0, keepdim=True) * nm - view
    matte = _ggx_weight(dirs.T @ r, _alpha2(MATTE_ROUGHNESS)) * omega
    matte = matte / matte.sum(0, keepdim=True).clamp_min(1e-12)
    return torch.stack([diffuse, matte]), mask

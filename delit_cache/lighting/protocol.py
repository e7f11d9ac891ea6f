"""The ``diffusionlight`` env-map protocol (DiffusionLight's evaluation, itself StyleLight's),
reproduced without Blender.

What the reference does (``shared/notes/lighting-eval.md``) and how this module does it:

1. Resize the HDR map to 128 x 256 by a plain box mean of pixels (``box_resize``), clamp
   negative radiance to 0, and tone map: ``y = alpha * x**(1/2.4)`` with ``alpha = 0.5 /
   (median of the non-zero x**(1/2.4) + 1e-10)``, not clipped (``reference_tonemap``).
2. Render three spheres with the tone-mapped map as the only light (``render_reference``):
   Blender's UV sphere (32 segments, 16 rings) with one Catmull-Clark level at the origin,
   seen by an 85 mm lens (36 mm sensor, horizontal fit) from (0, -16, 2) tracking the origin,
   1920 x 1080 at 50 % (960 x 540), transparent film. The subdivided mesh lies on the limit
   surface of the control net, which shrinks a unit sphere by ``k = (4 + 2 cos(pi/16)) / 6``
   along each curved direction: an ellipsoid with horizontal semi-axes ``k**2`` and vertical
   semi-axis ``k``. The mask is
   alpha > 0, alpha being the sphere's coverage under Cycles' 1.5 px Blackman-Harris pixel
   filter. Materials (Cycles 3.4 Principled BSDF, base colour 0.8, single-scatter GGX,
   alpha = roughness**2, Smith shadowing; Fresnel interpolated from the base colour (metals)
   or 0.08 * specular to 1 by the dielectric Fresnel of ``ior = 2 / (1 - sqrt(0.08 *
   specular)) - 1``):

   - ``diffuse``: metallic 0, specular 0.5, roughness 0.364: Cycles' principled diffuse
     (Lambert with Schlick factors plus retro-reflection) under a GGX coat;
   - ``matte_silver``: metallic 1, specular 0 (so the Fresnel is the constant 0.8),
     roughness 0.3271;
   - ``mirror``: metallic 1, specular 0.2, roughness 0: the Fresnel-weighted reflection,
     looked up bilinearly in the map (Blender's "Linear" interpolation).

   Blender's world is z up with the equirect ``u = 0.5 - atan2(y, x) / 2pi``; in delit's
   convention (``envmap``: y up, ``u = 0.5 + atan2(x, -z) / 2pi``) a Blender direction
   ``(bx, by, bz)`` is ``(-by, bz, -bx)``, so the reference camera sits on delit's +x axis: a
   quarter turn from delit's own sphere camera on +z.
3. Score each pair like the reference's ``fast_rmse.py`` (``reference_scores``): over the mask,
   si-RMSE with the closed-form scalar scale, the squared error summed over RGB and divided
   by the number of mask pixels; the mean angle between RGB vectors (cosine clipped to
   [0, 1], NaN counted as 0); nRMSE after mapping each frame by its own 0.01 and 99.9
   percentiles, taken over the whole 960 x 540 x 3 frame including the black background.

Shading: the ``LIGHTS_K`` brightest pixels of the 128 x 256 map are shaded exactly at every
mask pixel; the rest (area-averaged to 64 x 128) by quadrature at every ``STRIDE``-th pixel
(the weights are a fixed matrix per material, built once per process) and
interpolated bilinearly. Not modelled: Cycles' depth of field (f/0.5 focused on the sphere
centre: under 2 px of blur) and the pixel filter's blur inside the sphere. The agreement with
the reference's own renders and scores is measured by ``benchmarks/reference_protocol.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
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

SPHERES = ("diffuse", "matte_silver", "mirror")
FRAME = (540, 960)  # (h, w): 1920 x 1080 at 50 %
LENS_MM, SENSOR_MM = 85.0, 36.0
CAMERA = (0.0, -16.0, 2.0)  # Blender world coordinates, z up
UV_SEGMENTS, UV_RINGS = 32, 16
FILTER_WIDTH = 1.5  # Cycles' Blackman-Harris pixel filter, in pixels
FILTER_TAPS = 8  # per axis, for the coverage of edge pixels
BASE = 0.8
LIGHT_STRIDE = 2  # pixel step of the grid where the brightest pixels are shaded
STRIDE = 6  # pixel step of the grid where the residual is shaded
RESIDUAL_SIZE = (32, 64)
LIGHTS_K = 32
LUMA = (0.2126, 0.7152, 0.0722)
MATERIALS = {  # metallic, specular, roughness
    "diffuse": (0.0, 0.5, 0.364),
    "matte_silver": (1.0, 0.0, 0.3271),
    "mirror": (1.0, 0.2, 0.0),
}
_BLENDER_TO_DELIT = torch.tensor(
    [[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]], dtype=torch.float64
)


# ----------------------------------------------------------------------------- steps 1: maps


def box_resize(env: torch.Tensor, size: tuple[int, int] = ENV_SIZE) -> torch.Tensor:
    """Plain (not solid-angle weighted) box mean of pixels to ``size``: ``[B,3,h,w]`` /
    ``[3,h,w]`` -> same rank. Exact block means for integer ratios; otherwise each target pixel
    averages the source pixels it overlaps, weighted by the overlap length in each axis."""
    x, squeeze = as_env_batch(env)
    if tuple(x.shape[-2:]) != tuple(size):
        rows = _box_matrix(x.shape[-2], size[0]).to(x)
        cols = _box_matrix(x.shape[-1], size[1]).to(x)
        x = rows @ x @ cols.T
    return x[0] if squeeze else x


def _box_matrix(n_src: int, n_dst: int) -> torch.Tensor:
    src = np.linspace(0.0, 1.0, n_src + 1)
    dst = np.linspace(0.0, 1.0, n_dst + 1)
    lo = np.maximum(dst[:-1, None], src[None, :-1])
    hi = np.minimum(dst[1:, None], src[None, 1:])
    overlap = np.clip(hi - lo, 0.0, None)
    return torch.from_numpy(overlap / overlap.sum(1, keepdims=True)).float()


def reference_tonemap(env: torch.Tensor) -> torch.Tensor:
    """The protocol's tone map of ``[B,3,h,w]`` / ``[3,h,w]`` linear maps: negatives clamped to 0,
    ``x**(1/2.4)`` scaled so the median of its non-zero values (all channels pooled, the lower
    median of an even count as numpy's percentile interpolates) is 0.5; not clipped."""
    x, squeeze = as_env_batch(env)
    power = x.double().clamp_min(0.0) ** (1.0 / 2.4)
    scales = []
    for img in power:
        nonzero = img[img > 0]
        med = torch.quantile(nonzero, 0.5) if nonzero.numel() else img.new_tensor(0.0)
        scales.append(0.5 / (med + 1e-10))
    out = (power * torch.stack(scales).view(-1, 1, 1, 1)).float()
    return out[0] if squeeze else out


def prepare_map(env: torch.Tensor) -> torch.Tensor:
    """Step 1 for maps of any 2:1 size: box resize to 128 x 256, clamp, tone map."""
    return reference_tonemap(box_resize(env.float().clamp_min(0.0)))


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class ShadingGrid:
    """Every ``stride``-th pixel over the sphere's box: ``normal``/``view [P,3]`` (points off the
    sphere take the nearest rim point's), ``shape`` (rows, cols) and ``sample [N,2]``: each
    mask pixel's ``grid_sample`` coordinate in it (align_corners=True)."""

    normal: torch.Tensor
    view: torch.Tensor
    shape: tuple[int, int]
    sample: torch.Tensor


@dataclass(frozen=True)
class SphereView:
    """The reference camera's view of the sphere (delit world coordinates).

    ``index [N]``: flat indices into the 540 x 960 frame of the mask pixels (alpha > 0);
    ``alpha [N]``; ``normal``/``view [N,3]`` at each mask pixel (view: surface -> camera);
    ``lights``/``residual``: the grids where the brightest pixels and the rest are shaded.
    """

    index: torch.Tensor
    alpha: torch.Tensor
    normal: torch.Tensor
    view: torch.Tensor
    lights: ShadingGrid
    residual: ShadingGrid


def _limit_shrink() -> float:
    """Radius of the Catmull-Clark limit of a circle's control polygon (vertex weights 1-4-1)."""
    return (4.0 + 2.0 * math.cos(2.0 * math.pi / UV_SEGMENTS)) / 6.0


def _camera() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Camera centre, forward, right, up (Blender world) and focal length in pixels."""
    c = torch.tensor(CAMERA, dtype=torch.float64)
    fwd = -c / c.norm()
    right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    right = right / right.norm()
    up = torch.linalg.cross(right, fwd)
    return c, fwd, right, up, LENS_MM / SENSOR_MM * FRAME[1]


def _hit(px: torch.Tensor, py: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays through frame coordinates (pixel units, origin top-left) against the mesh's limit
    ellipsoid -> (hit mask, unit normal, unit view direction), Blender world, ``[...,3]``."""
    c, fwd, right, up, focal = _camera()
    x = (px - FRAME[1] / 2) / focal
    y = -(py - FRAME[0] / 2) / focal
    d = fwd + x[..., None] * right + y[..., None] * up
    d = d / d.norm(dim=-1, keepdim=True)
    k = _limit_shrink()
    inv = torch.tensor([1 / k**2, 1 / k**2, 1 / k], dtype=torch.float64)
    dd, cc = d * inv, c * inv  # the ellipsoid mapped to the unit sphere
    a = (dd * dd).sum(-1)
    b = (dd * cc).sum(-1)
    disc = b * b - a * ((cc * cc).sum() - 1.0)
    hit = disc > 0
    t = (-b - disc.clamp_min(0.0).sqrt()) / a
    p = c + t[..., None] * d
    n = p * inv * inv
    n = n / n.norm(dim=-1, keepdim=True)
    return hit, n, -d


def _blackman_harris(x: torch.Tensor) -> torch.Tensor:
    t = x / FILTER_WIDTH + 0.5
    w = torch.pi * 2 * t
    return (
        0.35875 - 0.48829 * torch.cos(w) + 0.14128 * torch.cos(2 * w) - 0.01168 * torch.cos(3 * w)
    )


def _coverage(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Filtered coverage (alpha) of the pixels ``rows``/``cols`` ``[M]``: 1 (0) where the
    filter footprint's four corners all hit (miss) the convex silhouette, else quadrature."""
    half = FILTER_WIDTH / 2
    corners = torch.tensor([[-half, -half], [-half, half], [half, -half], [half, half]])
    hits, _, _ = _hit(cols[:, None] + 0.5 + corners[:, 1], rows[:, None] + 0.5 + corners[:, 0])
    alpha = hits.all(1).double()
    edge = hits.any(1) & ~hits.all(1)
    alpha[edge] = _filtered_coverage(rows[edge], cols[edge])
    return alpha


def _filtered_coverage(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    half = FILTER_WIDTH / 2
    offs = (torch.arange(FILTER_TAPS, dtype=torch.float64) + 0.5) / FILTER_TAPS * 2 * half - half
    w1 = _blackman_harris(offs)
    w2 = (w1[:, None] * w1[None, :]).flatten()
    oy, ox = torch.meshgrid(offs, offs, indexing="ij")
    py = rows[:, None] + 0.5 + oy.flatten()[None]
    px = cols[:, None] + 0.5 + ox.flatten()[None]
    hit, _, _ = _hit(px, py)
    return (hit.double() * w2).sum(1) / w2.sum()


def _clamped_geometry(py: torch.Tensor, px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal and view (delit world) at frame points, points off the sphere pulled radially
    onto its rim (so shading is defined, and smooth, just outside the silhouette)."""
    cy, cx = FRAME[0] / 2, FRAME[1] / 2
    dy, dx = py - cy, px - cx
    scale = torch.ones_like(py)
    miss = ~_hit(px, py)[0]
    lo, hi = (
        torch.zeros(int(miss.sum()), dtype=py.dtype),
        torch.ones(int(miss.sum()), dtype=py.dtype),
    )
    for _ in range(30):  # bisection on the radial scale of the misses: lo hits, hi misses
        mid = (lo + hi) / 2
        hit = _hit(cx + dx[miss] * mid, cy + dy[miss] * mid)[0]
        lo, hi = torch.where(hit, mid, lo), torch.where(hit, hi, mid)
    scale[miss] = lo
    _, n, v = _hit(cx + dx * scale, cy + dy * scale)
    rot = _BLENDER_TO_DELIT
    return (n @ rot.T).float(), (v @ rot.T).float()


def _box() -> tuple[int, int, int, int]:
    """Frame rows and columns ``[r0, r1)``, ``[c0, c1)`` that hold the sphere, with a margin."""
    h, w = FRAME
    k = _limit_shrink()
    radius = LENS_MM / SENSOR_MM * w * k / math.sqrt(sum(c * c for c in CAMERA) - k * k)
    return (
        int(h / 2 - radius - 3),
        int(h / 2 + radius + 3),
        int(w / 2 - radius - 3),
        int(w / 2 + radius + 3),
    )


def _shading_grid(stride: int, rows: torch.Tensor, cols: torch.Tensor) -> ShadingGrid:
    r0, r1, c0, c1 = _box()
    gy = torch.arange(r0, r1 + stride, stride, dtype=torch.float64)
    gx = torch.arange(c0, c1 + stride, stride, dtype=torch.float64)
    py, px = torch.meshgrid(gy + 0.5, gx + 0.5, indexing="ij")
    normal, view = _clamped_geometry(py.flatten(), px.flatten())
    sample = torch.stack(
        [(cols - c0) / (gx[-1] - c0) * 2 - 1, (rows - r0) / (gy[-1] - r0) * 2 - 1], dim=-1
    )
    return ShadingGrid(normal, view, (len(gy), len(gx)), sample.float())


@lru_cache(maxsize=1)
def sphere_view() -> SphereView:
    """The reference camera's view of the sphere (computed once per process; a few seconds)."""
    r0, r1, c0, c1 = _box()
    rows, cols = torch.meshgrid(
        torch.arange(r0, r1, dtype=torch.float64),
        torch.arange(c0, c1, dtype=torch.float64),
        indexing="ij",
    )
    rows, cols = rows.flatten(), cols.flatten()
    alpha = _coverage(rows, cols)
    keep = alpha > 0
    rows, cols, alpha = rows[keep], cols[keep], alpha[keep]
    normal, view = _clamped_geometry(rows + 0.5, cols + 0.5)
    return SphereView(
        index=(rows * FRAME[1] + cols).long(),
        alpha=alpha.float(),
        normal=normal,
        view=view,
        lights=_shading_grid(LIGHT_STRIDE, rows, cols),
        residual=_shading_grid(STRIDE, rows, cols),
    )


# ----------------------------------------------------------------------------- materials


def _dielectric_fresnel(cos: torch.Tensor, ior: float) -> torch.Tensor:
    c = cos.abs()
    g2 = ior * ior - 1.0 + c * c
    g = g2.clamp_min(0.0).sqrt()
    a = (g - c) / (g + c)
    b = (c * (g + c) - 1.0) / (c * (g - c) + 1.0)
    return torch.where(g2 > 0, 0.5 * a * a * (1.0 + b * b), torch.ones_like(c))


def _fresnel(cos_lh: torch.Tensor, metallic: float, specular: float) -> torch.Tensor:
    """Cycles' Principled Fresnel: from ``cspec0`` at normal incidence to 1 at grazing."""
    cspec0 = specular * 0.08 * (1.0 - metallic) + BASE * metallic
    ior = 2.0 / (1.0 - math.sqrt(0.08 * specular)) - 1.0
    f0 = float(_dielectric_fresnel(torch.tensor(1.0), ior))
    if f0 >= 1.0 - 1e-9 or ior <= 1.0 + 1e-9:
        return torch.full_like(cos_lh, cspec0)
    fh = (_dielectric_fresnel(cos_lh, ior) - f0) / (1.0 - f0)
    return cspec0 * (1.0 - fh) + fh


def _smith_g1(cos: torch.Tensor, a2: float) -> torch.Tensor:
    c2 = (cos * cos).clamp_min(1e-12)
    return 2.0 / (1.0 + torch.sqrt(1.0 + a2 * (1.0 - c2) / c2))


def brdf_cos(material: str, n: torch.Tensor, v: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """BRDF x cos(n, l) of a sphere material: ``n``, ``v`` ``[P,3]``, light ``dirs`` ``[E,3]`` ->
    ``[P,E]``
    (radiance = sum over directions of this x radiance x solid angle). Not for the mirror."""
    metallic, specular, rough = MATERIALS[material]
    cos_nl = n @ dirs.T
    cos_nv = (n * v).sum(-1, keepdim=True).clamp_min(1e-6)
    cos_lv = v @ dirs.T
    front = cos_nl > 0
    cos_nl = cos_nl.clamp_min(1e-6)
    # half vector: |l + v|^2 = 2 + 2 l.v
    inv_len = torch.rsqrt((2.0 + 2.0 * cos_lv).clamp_min(1e-12))
    cos_nh = (cos_nl + cos_nv) * inv_len
    cos_lh = (1.0 + cos_lv) * inv_len
    a2 = rough**4
    t = cos_nh * cos_nh * (a2 - 1.0) + 1.0
    d = a2 / (math.pi * t * t)
    spec = d * _smith_g1(cos_nv, a2) * _smith_g1(cos_nl, a2) / (4.0 * cos_nv)
    out = spec * _fresnel(cos_lh, metallic, specular)
    if metallic < 1.0:
        fl, fv = (1.0 - cos_nl) ** 5, (1.0 - cos_nv) ** 5
        rr = rough * (1.0 + cos_lv)
        f = (1.0 - 0.5 * fv) * (1.0 - 0.5 * fl) + rr * (fl + fv + fl * fv * (rr - 1.0))
        out = out + (1.0 - metallic) * BASE / math.pi * f * cos_nl
    return torch.where(front, out, torch.zeros_like(out))


@lru_cache(maxsize=2)
def _residual_weights(material: str) -> torch.Tensor:
    """Quadrature weights ``[P, e]`` of the area-averaged residual on the residual grid."""
    grid = sphere_view().residual
    dirs = direction_grid(*RESIDUAL_SIZE).flatten(1).T
    omega = solid_angles(*RESIDUAL_SIZE).flatten()
    chunks = []
    for s in range(0, grid.normal.shape[0], 1024):
        n, v = grid.normal[s : s + 1024], grid.view[s : s + 1024]
        chunks.append(brdf_cos(material, n, v, dirs) * omega)
    return torch.cat(chunks)


# ----------------------------------------------------------------------------- rendering


def _split_lights(env: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B,3,128,256]`` -> light directions ``[B,K,3]``, power ``[B,3,K]`` (radiance x solid
    angle) of the K brightest pixels, and the rest area-averaged to 64 x 128."""
    b, _, h, w = env.shape
    omega = solid_angles(h, w).flatten()
    flat = env.flatten(2)
    luma = torch.tensor(LUMA)[None, :, None]
    idx = ((flat * luma).sum(1) * omega).topk(LIGHTS_K, dim=1).indices
    power = flat.gather(2, idx[:, None].expand(b, 3, LIGHTS_K)) * omega[idx][:, None]
    dirs = direction_grid(h, w).flatten(1).T[idx]
    keep = torch.ones(b, h * w).scatter_(1, idx, 0.0)
    residual = resample_env((flat * keep[:, None]).view(b, 3, h, w), RESIDUAL_SIZE)
    return dirs, power, residual


def _mirror(env: torch.Tensor, view: SphereView) -> torch.Tensor:
    """Fresnel-weighted bilinear env lookup in the reflection direction -> ``[B,3,N]``."""
    n, v = view.normal, view.view
    cos = (n * v).sum(-1, keepdim=True)
    r = 2.0 * cos * n - v
    u, t = direction_to_uv(r, dim=-1)
    h, w = env.shape[-2:]
    gx = (u * w + 0.5) / (w + 1) * 2.0 - 1.0  # one wrapped column each side
    gy = (t * h - 0.5) / (h - 1) * 2.0 - 1.0
    padded = torch.cat([env[..., -1:], env, env[..., :1]], dim=-1)
    grid = torch.stack([gx, gy], -1)[None, None].expand(env.shape[0], 1, -1, 2)
    out = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=True)
    metallic, specular, _ = MATERIALS["mirror"]
    return out[:, :, 0] * _fresnel(cos.clamp(0.0, 1.0), metallic, specular).T[None]


def _upsample(values: torch.Tensor, grid: ShadingGrid) -> torch.Tensor:
    """Grid values ``[B,3,P]`` -> bilinear at the mask pixels ``[B,3,N]``."""
    b = values.shape[0]
    img = values.reshape(b, 3, *grid.shape)
    where = grid.sample[None, None].expand(b, 1, -1, 2)
    return F.grid_sample(img, where, mode="bilinear", align_corners=True)[:, :, 0]


def _glossy(material: str, lights, view: SphereView) -> torch.Tensor:
    """Diffuse / matte silver radiance at the mask pixels -> ``[B,3,N]``."""
    dirs, power, residual = lights
    rest = _residual_weights(material) @ residual.flatten(2).transpose(1, 2)
    out = _upsample(rest.transpose(1, 2), view.residual)
    grid = view.lights
    exact = torch.stack(
        [power[i] @ brdf_cos(material, grid.normal, grid.view, dirs[i]).T for i in range(len(dirs))]
    )
    return out + _upsample(exact, grid)


def render_reference(tonemapped: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three reference spheres under tone-mapped maps ``[B,3,128,256]`` / ``[3,128,256]``.

    Returns ``{sphere: [B,3,N]}`` premultiplied linear RGB (times alpha, as Cycles writes it)
    at the ``N`` mask pixels of ``sphere_view()``; ``frame_of`` pastes one into the
    540 x 960 frame.
    """
    x, _ = as_env_batch(tonemapped)
    x = x.float()
    if tuple(x.shape[-2:]) != ENV_SIZE:
        raise ValueError(f"tone-mapped maps must be 128x256, got {tuple(x.shape)}")
    view = sphere_view()
    lights = _split_lights(x)
    out = {name: _glossy(name, lights, view) for name in ("diffuse", "matte_silver")}
    out["mirror"] = _mirror(x, view)
    return {k: out[k] * view.alpha for k in SPHERES}


def frame_of(pixels: torch.Tensor) -> torch.Tensor:
    """Mask-pixel values ``[3,N]`` -> the 540 x 960 frame ``[4,H,W]`` (RGB + alpha)."""
    view = sphere_view()
    frame = torch.zeros(4, FRAME[0] * FRAME[1])
    frame[:3, view.index] = pixels
    frame[3, view.index] = view.alpha
    return frame.view(4, *FRAME)


# ----------------------------------------------------------------------------- scores


def _frame_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's (linear) percentile ``q`` in [0,1] of each frame ``[B, M]`` of mask values padded
    with the background's zeros to 540 x 960 x 3 values (values are >= 0)."""
    total = FRAME[0] * FRAME[1] * 3
    zeros = total - values.shape[1]
    pos = q * (total - 1)
    lo = math.floor(pos)
    frac = pos - lo
    ranked = torch.sort(values, dim=1).values

    def at(i: int) -> torch.Tensor:
        return ranked[:, i - zeros] if i >= zeros else torch.zeros_like(ranked[:, 0])

    return at(lo) * (1 - frac) + at(min(lo + 1, total - 1)) * frac


def reference_scores(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """``fast_rmse.py``'s si-RMSE, angular error (degrees) and nRMSE per image -> ``{name: [B]}``
    for mask-pixel renders ``[B,3,N]`` (from ``render_reference``)."""
    p, g = pred.double(), gt.double()
    n = p.shape[-1]
    a, b, c = (p * p).sum((1, 2)), (p * g).sum((1, 2)), (g * g).sum((1, 2))
    si = ((c - b * b / a.clamp_min(1e-30)).clamp_min(0.0) / n).sqrt()
    cos = (p * g).sum(1) / (p.norm(dim=1) * g.norm(dim=1))
    ang = torch.nan_to_num(torch.arccos(cos.clamp(0.0, 1.0)), nan=0.0)
    angular = torch.rad2deg(ang.sum(1) / n)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        lo, hi = _frame_quantile(flat, 0.0001), _frame_quantile(flat, 0.999)
        return (x - lo[:, None, None]) / (hi - lo)[:, None, None]

    nrmse = (((normalise(p) - normalise(g)) ** 2).sum((1, 2)) / n).sqrt()
    return {"si_rmse": si.float(), "angular_deg": angular.float(), "nrmse": nrmse.float()}


def diffusionlight_errors(pred_env: torch.Tensor, gt_env: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image protocol scores of linear HDR maps ``[B,3,h,w]`` / ``[3,h,w]`` (any 2:1 size):
    ``{"diffuse_si_rmse": [B], ..., "mirror_nrmse": [B], "light_dir_deg": [B]}`` where
    ``light_dir_deg`` is EnvMapNet's dominant-light error (NaN where a map has no light)."""
    from delit_cache.lighting.lights import dominant_light_error_deg

    p, _ = as_env_batch(pred_env)
    g, _ = as_env_batch(gt_env)
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"batch sizes differ: {p.shape[0]} vs {g.shape[0]}")
    p, g = box_resize(p.float().clamp_min(0.0)), box_resize(g.float().clamp_min(0.0))
    rp, rg = render_reference(reference_tonemap(p)), render_reference(reference_tonemap(g))
    out = {}
    for name in SPHERES:
        for key, value in reference_scores(rp[name], rg[name]).items():
            out[f"{name}_{key}"] = value
    out["light_dir_deg"] = torch.tensor(
        [dominant_light_error_deg(a, b) for a, b in zip(p, g, strict=True)]
    )
    return out


def diffusionlight_metrics(pred_env: torch.Tensor, gt_env: torch.Tensor) -> dict:
    """Protocol scores averaged over the batch, as python floats::

    {"diffuse": {"si_rmse", "angular_deg", "nrmse"}, "matte_silver": {...},
     "mirror": {...}, "light_dir_deg": float (mean over pairs where both maps have a
     light, as EnvMapNet's script averages; None if none), "light_pairs": int}
    """
    with torch.no_grad():
        errs = diffusionlight_errors(pred_env, gt_env)
    result: dict = {
        s: {k: float(errs[f"{s}_{k}"].mean()) for k in ("si_rmse", "angular_deg", "nrmse")}
        for s in SPHERES
    }
    light = errs["light_dir_deg"]
    valid = ~torch.isnan(light)
    result["light_dir_deg"] = float(light[valid].mean()) if valid.any() else None
    result["light_pairs"] = int(valid.sum())
    return result

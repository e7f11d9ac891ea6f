"""Shading, ambient occlusion, background and exposure of one synthetic sample.

Image model (linear radiance, before exposure):

* ``relit = AO * (albedo * diffuse + F(f0) * specular)`` on the subject (the model of
  ``render.shade``: Lambertian diffuse + Schlick-Fresnel GGX specular with one roughness per
  sample, both multiplied by the ambient occlusion), and the env map itself seen through the camera
  (``render.mirror_lookup`` of the ray directions) on the background.
* ``flat = AO * albedo`` on the subject and ``1.0`` on the background: the same scene under a
  uniform white env map of radiance 1 with the specular term left out (a white background
  lit by uniform white light reads as 1.0). So under a uniform env of radiance L and with
  specular off, ``relit == L * flat`` everywhere, which the tests check.

AO is geometric: a cavity term from the face displacement (eye sockets, mouth line, nostrils)
times a term from the depth map (neck under the chin, hair over the face, body behind the
head), ``ao = exp(-k_c * relu(blur(disp) - disp)) * exp(-k_d * relu(depth - blur(depth)))``.

Exposure: one scale per sample, applied to ``relit`` and ``env`` alike so that the env target
is in the photo's units. It is metered like an incident-light meter: the 90th percentile of
the white-albedo diffuse shading over the face maps to ``0.8 * 2**U(-0.4, 0.25)``, so darker
skin stays darker in the photo. A Gaussian of 0.5 px (a lens) softens edges of relit, flat
and mask alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from delit_cache.data.imageio import linear_to_srgb
from delit_cache.lighting import render
from delit_cache.lighting.render import (
    diffuse_shading,
    mirror_lookup,
    prepare_env,
    specular_shading,
)
from delit_cache.synth.environments import LightingOptions, sample_env
from delit_cache.synth.geometry import (
    EAR,
    NECK,
    SKIN,
    Camera,
    GBuffer,
    Subject,
    sample_camera,
    sample_subject,
    trace,
)
from delit_cache.synth.materials import Look, material_maps, sample_look

LUMA = torch.tensor(render.LUMA)
METER_TARGET = 0.8
CAVITY_K = 10.0
DEPTH_K = 2.5


@dataclass
class SynthSample:
    """One rendered sample. relit/flat: linear ``[3,H,W]`` (relit after exposure, unclipped);
    env ``[3,128,256]`` linear in the photo's units; mask ``[1,H,W]`` in [0,1]; normal
    ``[3,H,W]`` (0 outside); ao ``[1,H,W]`` in (0,1]; meta: JSON-able dict."""

    key: str
    relit: torch.Tensor
    flat: torch.Tensor
    env: torch.Tensor
    mask: torch.Tensor
    normal: torch.Tensor
    ao: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def display(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(relit, flat)`` sRGB-encoded and clipped to [0,1], as stored in PNG."""
        return linear_to_srgb(self.relit.clamp(0, 1)), linear_to_srgb(self.flat.clamp(0, 1))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[C,H,W]`` (reflect padding); sigma in pixels."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def _masked_blur(x: torch.Tensor, m: torch.Tensor, sigma: float, down: int = 1) -> torch.Tensor:
    """Normalised blur of ``x [H,W]`` over the mask ``m [H,W]`` (optionally at 1/down res)."""
    stack = torch.stack([x * m, m])
    if down > 1:
        stack = F.avg_pool2d(stack[None], down)[0]
    b = gaussian_blur(stack, sigma / down)
    if down > 1:
        b = F.interpolate(b[None], size=x.shape, mode="bilinear", align_corners=False)[0]
    return b[0] / b[1].clamp_min(1e-6)


def ambient_occlusion(g: GBuffer) -> torch.Tensor:
    """Geometric AO ``[H,W]`` in (0, 1] from the face displacement and the depth map."""
    h = g.mask.shape[0]
    px = h / 256.0
    m = g.mask.float()
    cavity = (_masked_blur(g.disp, m, 3.0 * px, down=2) - g.disp).clamp_min(0)
    depth = torch.where(g.mask, g.depth, torch.zeros(()))
    occl = (depth - _masked_blur(depth, m, 14.0 * px, down=4)).clamp_min(0)
    ao = torch.exp(-CAVITY_K * cavity) * torch.exp(-DEPTH_K * occl)
    return torch.where(g.mask, ao.clamp(0.15, 1.0), torch.ones(()))


def _pixels(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather ``[C,H,W]`` at flat indices ``idx [N]`` -> a ``[1,C,1,N]`` 'image' of pixels."""
    return x.reshape(x.shape[0], -1)[:, idx][None, :, None, :]


def shade_subject(
    env: torch.Tensor, g: GBuffer, albedo, f0, roughness: float, specular: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear radiance ``[3,H,W]`` of the subject pixels (0 elsewhere; AO not applied) and the
    white-albedo diffuse shading ``[3,H,W]`` (for metering).

    ``albedo * diffuse_shading + F * specular_shading`` with Schlick's Fresnel of per-pixel
    ``f0`` -- the model of ``render.shade`` -- computed on the subject pixels only, from one
    ``prepare_env`` and with one (scalar) GGX roughness per sample, which keeps it fast.
    ``specular=False`` drops the specular term (physics tests).
    """
    h, w = g.mask.shape
    idx = g.mask.reshape(-1).nonzero().squeeze(1)
    n = _pixels(g.normal, idx)
    prep = prepare_env(env)
    white = diffuse_shading(prep, n)
    px = _pixels(albedo, idx) * white
    if specular:
        view = _pixels(-g.rays, idx)
        cos_v = (n * view).sum(1, keepdim=True).clamp(0.0, 1.0)
        f0_px = _pixels(f0, idx)
        fresnel = f0_px + (1.0 - f0_px) * (1.0 - cos_v) ** 5
        px = px + fresnel * specular_shading(prep, n, view, roughness)
    out = torch.zeros(3, h * w)
    out[:, idx] = px[0, :, 0]
    wh = torch.zeros(3, h * w)
    wh[:, idx] = white[0, :, 0]
    return out.view(3, h, w), wh.view(3, h, w)


def exposure_scale(white: torch.Tensor, g: GBuffer, jitter: float) -> float:
    """Scale so the 90th percentile of the face's white-albedo shading maps to the target."""
    face = (g.part == SKIN) | (g.part == NECK) | (g.part == EAR)
    sel = face if face.any() else g.mask
    lum = (white * LUMA[:, None, None]).sum(0)[sel]
    level = float(torch.quantile(lum, 0.9)) if lum.numel() else 1.0
    return METER_TARGET * jitter / max(level, 1e-8)


@dataclass
class Scene:
    """Everything random about one sample (drawn from one seeded generator)."""

    subject: Subject
    camera: Camera
    look: Look
    env: torch.Tensor
    env_meta: dict
    jitter: float
    background_env: torch.Tensor | None = None  # seen behind the subject instead of ``env``


def sample_scene(
    seed: int, index: int, hdris: list[Path], lighting: LightingOptions = LightingOptions()
) -> Scene:
    """Draw the scene of sample ``index`` for ``seed`` (independent of any other sample).

    The other background (``lighting.p_other_background``) is drawn from a generator of its
    own, so the same seed and index give the same subject and lighting whatever that is."""
    rng = np.random.default_rng([seed, index])
    subject = sample_subject(rng)
    camera = sample_camera(rng)
    look = sample_look(rng)
    env, env_meta = sample_env(rng, hdris, lighting)
    jitter = float(2.0 ** rng.uniform(-0.4, 0.25))
    scene = Scene(subject, camera, look, env, env_meta, jitter)
    other = np.random.default_rng([seed, index, 1])
    if other.uniform() < lighting.p_other_background:
        scene.background_env, meta = sample_env(other, hdris, lighting)
        scene.env_meta = {**env_meta, "background_source": meta["env_source"]}
    return scene


def render_scene(
    scene: Scene, size: int, specular: bool = True, exposure: bool = True
) -> SynthSample:
    """Render a scene at ``size x size``; see the module docstring for the image model."""
    g = trace(scene.subject, scene.camera, (size, size))
    albedo, _, f0 = material_maps(g, scene.subject, scene.look)
    ao = ambient_occlusion(g)[None]
    lit, white = shade_subject(scene.env, g, albedo, f0, scene.look.skin_roughness, specular)
    scale = exposure_scale(white, g, scene.jitter) if exposure else 1.0
    m = g.mask[None]
    shown = scene.env if scene.background_env is None else scene.background_env
    background = mirror_lookup(shown, g.rays)[0]
    relit = torch.where(m, lit * ao, background) * scale
    flat = torch.where(m, albedo * ao, torch.ones(()))
    soft = gaussian_blur(torch.cat([relit, flat, m.float()]), 0.5)
    relit, flat, mask = soft[:3], soft[3:6], soft[6:]
    meta = {
        **scene.env_meta,
        "exposure_scale": scale,
        **scene.subject.to_meta(),
        **scene.camera.to_meta(),
        **scene.look.to_meta(),
        "size": size,
    }
    return SynthSample("", relit, flat, scene.env * scale, mask, g.normal, ao, meta)


def sample_key(seed: int, index: int) -> str:
    """The shard key of sample ``index`` of the dataset with ``seed``."""
    return f"{seed:04d}_{index:08d}"


def render_sample(
    seed: int,
    index: int,
    size: int = 256,
    hdris: list[Path] | None = None,
    lighting: LightingOptions = LightingOptions(),
) -> SynthSample:
    """Sample ``index`` of the dataset with ``seed``: deterministic in its arguments."""
    scene = sample_scene(seed, index, list(hdris or []), lighting)
    out = render_scene(scene, size)
    out.key = sample_key(seed, index)
    out.meta.update({"seed": seed, "index": index})
    return out

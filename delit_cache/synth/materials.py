"""Materials of synthetic portraits: skin, eyes, lips, brows, hair and clothing.

All albedos are linear RGB. Skin tones are drawn along a log-linear line from very light
(0.64, 0.46, 0.38) to very dark (0.055, 0.032, 0.022) with small hue jitter, which spans the
measured range of human skin albedo. Textures are value noise (bicubic upsampling of random
grids, sampled with ``grid_sample`` at surface coordinates), stripes and checks.
``material_maps`` returns per-pixel albedo, GGX roughness and Fresnel f0 for the subject
pixels of a G-buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from delit_cache.synth.geometry import CLOTH, EAR, HAIR, NECK, SKIN, GBuffer, Subject

SKIN_LIGHT = np.array([0.64, 0.46, 0.38])
SKIN_DARK = np.array([0.055, 0.032, 0.022])
HAIR_COLOURS = {
    "black": (0.018, 0.014, 0.012),
    "dark_brown": (0.05, 0.03, 0.018),
    "brown": (0.12, 0.07, 0.035),
    "auburn": (0.2, 0.07, 0.03),
    "blonde": (0.42, 0.3, 0.15),
    "grey": (0.35, 0.34, 0.33),
}
HAIR_WEIGHTS = (0.3, 0.25, 0.17, 0.08, 0.12, 0.08)
IRIS_COLOURS = [(0.06, 0.03, 0.015), (0.12, 0.07, 0.03), (0.08, 0.13, 0.2), (0.08, 0.12, 0.07)]
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "heather")


@dataclass
class Look:
    """Colours and surface parameters of one subject."""

    skin_t: float  # 0 = very light, 1 = very dark
    skin: torch.Tensor  # [3] linear albedo
    hair: torch.Tensor
    hair_name: str
    iris: torch.Tensor
    cloth: torch.Tensor
    cloth2: torch.Tensor
    pattern: str
    stripe_freq: float
    skin_roughness: float
    hair_roughness: float
    cloth_roughness: float
    stubble: float
    lip_tint: torch.Tensor
    noise_seed: int

    def to_meta(self) -> dict:
        return {
            "skin_tone": round(self.skin_t, 4),
            "skin_albedo": [round(float(v), 4) for v in self.skin],
            "hair_colour": self.hair_name,
            "cloth_pattern": self.pattern,
            "skin_roughness": round(self.skin_roughness, 3),
        }


def skin_albedo(t: float, rng: np.random.Generator) -> torch.Tensor:
    """Linear skin albedo ``[3]`` at tone ``t`` in [0, 1] (log-linear light->dark, hue jitter)."""
    base = np.exp((1 - t) * np.log(SKIN_LIGHT) + t * np.log(SKIN_DARK))
    jitter = np.exp(rng.normal(0, [0.04, 0.03, 0.05]))
    return torch.tensor(np.clip(base * jitter, 0.01, 0.8), dtype=torch.float32)


def random_colour(rng: np.random.Generator) -> torch.Tensor:
    """A clothing colour: random hue, saturation 0-0.85, linear value 0.02-0.7 (log-uniform)."""
    hue, sat = rng.uniform(0, 1), rng.uniform(0, 0.85) ** 1.3
    value = math.exp(rng.uniform(math.log(0.02), math.log(0.7)))
    rgb = np.array([max(0.0, math.cos(2 * math.pi * (hue - k / 3))) for k in range(3)])
    rgb = (1 - sat) + sat * rgb / rgb.max()
    return torch.tensor(rgb * value, dtype=torch.float32)


def sample_look(rng: np.random.Generator) -> Look:
    """Draw the subject's colours: skin tone uniform over the range, hair, eyes, clothing."""
    t = float(rng.uniform(0, 1))
    names = list(HAIR_COLOURS)
    dark_bias = np.array(HAIR_WEIGHTS) * np.array(
        [1 + 2 * t, 1 + t, 1, 1 - 0.6 * t, 1 - 0.8 * t, 1]
    )
    hair_name = str(rng.choice(names, p=dark_bias / dark_bias.sum()))
    hair = torch.tensor(HAIR_COLOURS[hair_name]) * float(np.exp(rng.normal(0, 0.15)))
    iris_p = np.array([4 + 6 * t, 3, 2 * (1 - t) + 0.1, 1.5 * (1 - t) + 0.1])
    iris = torch.tensor(IRIS_COLOURS[int(rng.choice(4, p=iris_p / iris_p.sum()))])
    return Look(
        skin_t=t,
        skin=skin_albedo(t, rng),
        hair=hair,
        hair_name=hair_name,
        iris=iris,
        cloth=random_colour(rng),
        cloth2=random_colour(rng),
        pattern=str(rng.choice(PATTERNS, p=[0.4, 0.15, 0.1, 0.1, 0.25])),
        stripe_freq=float(rng.uniform(3, 10)),
        skin_roughness=float(rng.uniform(0.35, 0.6)),
        hair_roughness=float(rng.uniform(0.35, 0.55)),
        cloth_roughness=float(rng.uniform(0.65, 0.95)),
        stubble=float(rng.uniform(0.2, 0.6)) if rng.uniform() < 0.2 else 0.0,
        lip_tint=torch.tensor([0.85, 0.55, 0.58]) * float(rng.uniform(0.8, 1.0)),
        noise_seed=int(rng.integers(2**31)),
    )


def value_noise(
    u: torch.Tensor, v: torch.Tensor, grid: tuple[int, int], gen: torch.Generator
) -> torch.Tensor:
    """Smooth noise in about [-1, 1] at coordinates ``u, v`` in [-1, 1] (any shape).

    A random ``grid`` (rows, cols) is sampled bicubically; coordinates outside wrap by border.
    """
    g = torch.rand(1, 1, *grid, generator=gen) * 2 - 1
    pts = torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)[None, None]
    out = F.grid_sample(g, pts, mode="bicubic", padding_mode="reflection", align_corners=False)
    return out.reshape(u.shape).clamp(-1.5, 1.5)


def _smooth_in(x: torch.Tensor, edge: float) -> torch.Tensor:
    """1 inside (``x < 1``), 0 outside, with a soft edge of relative width ``edge``."""
    return ((1 + edge - x) / (2 * edge)).clamp(0, 1)


def _face_albedo(p: torch.Tensor, base: torch.Tensor, look: Look, sub: Subject, gen) -> tuple:
    """Albedo ``[N,3]``, roughness ``[N]``, f0 ``[N]`` of head skin at head-frame points ``p``."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    front = (z > 0.3).float()
    alb = base.expand(len(x), 3).clone()
    alb = alb * (1 + 0.07 * value_noise(x, y, (10, 10), gen))[:, None]
    blush = torch.exp(-(((x.abs() - 0.36) / 0.14) ** 2 + ((y + 0.3) / 0.12) ** 2) / 2) * front
    alb = alb * (1 + blush[:, None] * torch.tensor([0.06, -0.07, -0.06]))
    lips = _smooth_in(((x / 0.17) ** 2 + ((y + 0.615) / 0.06) ** 2), 0.25) * front
    alb = alb * (1 + lips[:, None] * (look.lip_tint - 1))
    ax = x.abs() - 0.29 * sub.head_width
    brow_y = 0.17 + 0.035 * (1 - (ax / 0.16) ** 2)
    brow = _smooth_in(((ax / 0.17) ** 2 + ((y - brow_y) / 0.025) ** 2), 0.4) * front
    brow = brow * (0.6 + 0.4 * value_noise(x * 8, y, (4, 40), gen).abs())
    alb = alb * (1 - brow[:, None]) + look.hair * brow[:, None]
    if look.stubble > 0:
        beard = (((-0.5 - y) / 0.1).clamp(0, 1) * (1 - lips) * front * (x.abs() < 0.55)).float()
        amt = look.stubble * beard * (0.7 + 0.3 * value_noise(x * 20, y * 20, (32, 32), gen))
        alb = alb * (1 - amt[:, None]) + look.hair * amt[:, None]
    eye, eye_alb = _eyes(ax, y, look)
    alb = alb * (1 - eye[:, None]) + eye_alb * eye[:, None]
    rough = torch.full_like(x, look.skin_roughness) * (1 - 0.25 * lips) * (1 - eye) + 0.08 * eye
    f0 = 0.028 + 0.012 * lips + 0.02 * eye
    return alb, rough, f0


def _eyes(ax: torch.Tensor, y: torch.Tensor, look: Look) -> tuple[torch.Tensor, torch.Tensor]:
    """Eye-opening weight ``[N]`` and eye albedo ``[N,3]`` (sclera, iris, pupil, lash line)."""
    opening = _smooth_in((ax / 0.085) ** 2 + ((y + 0.005 + 0.2 * ax * ax) / 0.034) ** 2, 0.15)
    r = torch.sqrt(ax * ax + (y + 0.002) ** 2)
    sclera = torch.tensor([0.42, 0.38, 0.35])
    iris = (r < 0.034).float()[:, None]
    pupil = (r < 0.013).float()[:, None]
    alb = sclera * (1 - iris) + look.iris * iris
    alb = alb * (1 - pupil) + 0.008 * pupil
    upper = _smooth_in((ax / 0.095) ** 2 + ((y - 0.03) / 0.012) ** 2, 0.3)
    lash = (upper * (1 - opening)).clamp(0, 1)
    alb = alb * opening[:, None] + 0.02 * lash[:, None]
    return (opening + lash).clamp(0, 1), alb / (opening + lash).clamp_min(1e-6)[:, None]


def _hair_albedo(p: torch.Tensor, look: Look, gen) -> torch.Tensor:
    az = torch.atan2(p[:, 0], p[:, 2]) / math.pi
    strands = value_noise(az, p[:, 1] * 0.5, (6, 120), gen)
    fine = value_noise(az * 3, p[:, 1] * 0.5, (4, 200), gen)
    return look.hair * (1.0 + 0.45 * strands + 0.25 * fine)[:, None].clamp_min(0.2)


def _cloth_albedo(p: torch.Tensor, look: Look, gen) -> torch.Tensor:
    x, y = p[:, 0], p[:, 1]
    f = look.stripe_freq
    if look.pattern == "hstripes":
        m = (torch.sin(2 * math.pi * f * y / 2) > 0.2).float()
    elif look.pattern == "vstripes":
        m = (torch.sin(2 * math.pi * f * x / 2) > 0.2).float()
    elif look.pattern == "checks":
        m = ((torch.sin(math.pi * f * x) > 0) ^ (torch.sin(math.pi * f * y) > 0)).float() * 0.5
    else:
        m = torch.zeros_like(x)
    alb = look.cloth * (1 - m[:, None]) + look.cloth2 * m[:, None]
    amp = 0.12 if look.pattern == "heather" else 0.05
    grain = value_noise(x * 0.5, y * 0.5 + 1.25, (160, 160), gen)
    return alb * (1 + amp * grain)[:, None]


def _neckline_skin(p: torch.Tensor, sub: Subject) -> torch.Tensor:
    """Which body-frame cloth points ``[N]`` are bare skin inside the neckline."""
    ax, y = p[:, 0].abs(), p[:, 1]
    if sub.neckline == "vneck":
        inside = (ax < 0.5) & (y > -2.0 + 1.3 * ax)
    elif sub.neckline == "open":
        inside = (ax < 0.75) & (y > -1.85 + 0.7 * ax)
    else:
        inside = (ax < 0.55) & (y > -1.5 + 0.35 * (ax / 0.5) ** 2)
    return inside & (p[:, 2] > -0.25)


def material_maps(
    g: GBuffer, sub: Subject, look: Look
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Albedo ``[3,H,W]`` (linear, 0 outside), roughness ``[1,H,W]`` and f0 ``[1,H,W]``."""
    gen = torch.Generator().manual_seed(look.noise_seed)
    h, w = g.mask.shape
    part = g.part.reshape(-1)
    pts = g.local.reshape(3, -1).T
    alb = torch.zeros(h * w, 3)
    rough = torch.full((h * w,), 0.5)
    f0 = torch.full((h * w,), 0.03)
    skin = (part == SKIN).nonzero().squeeze(1)
    if len(skin):
        a, r, f = _face_albedo(pts[skin], look.skin, look, sub, gen)
        alb[skin], rough[skin], f0[skin] = a, r, f
    for pid, tint in ((EAR, (1.04, 0.95, 0.95)), (NECK, (0.95, 0.95, 0.95))):
        sel = (part == pid).nonzero().squeeze(1)
        alb[sel] = look.skin * torch.tensor(tint)
        rough[sel] = look.skin_roughness
        f0[sel] = 0.028
    hair = (part == HAIR).nonzero().squeeze(1)
    if len(hair):
        alb[hair] = _hair_albedo(pts[hair], look, gen)
        rough[hair], f0[hair] = look.hair_roughness, 0.035
    cloth = (part == CLOTH).nonzero().squeeze(1)
    if len(cloth):
        bare = _neckline_skin(pts[cloth], sub)
        ca = _cloth_albedo(pts[cloth], look, gen)
        alb[cloth] = torch.where(bare[:, None], look.skin * 0.95, ca)
        rough[cloth] = torch.where(bare, look.skin_roughness, look.cloth_roughness)
        f0[cloth] = torch.where(bare, 0.028, 0.03)
    alb = alb.clamp(0, 0.95)
    return alb.T.reshape(3, h, w), rough.view(1, h, w), f0.view(1, h, w)

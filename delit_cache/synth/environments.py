"""Lighting for synthetic portraits: real HDRIs (rotated, exposed) and procedural env maps.

Procedural kinds (all ``[3,128,256]`` linear radiance in the project's equirectangular
convention, see ``delit_cache.lighting.envmap``): ``sky`` (clear sky with a sun disc and lit ground),
``overcast`` (CIE-like overcast sky), ``indoor`` (room with ceiling area lights and a window; or,
by ``LightingOptions.indoor_layout``, one dominant lamp or window),
``studio`` (dark studio with key, fill and rim soft boxes), ``neon`` (dark room with
saturated coloured lights) and ``key`` (one dominant source anywhere on the sphere, from a
soft box to a point-like lamp, over a dim coloured ambient). Small sources are normalised by
their integrated energy, so a source of a few pixels keeps the intended irradiance.

``sample_env`` adds the variation that no single kind has: a white-balance tint, a second
source mixed in, and HDRIs rotated and exposed at random. ``HELDOUT_HDRIS`` names the packaged
HDRIs that training data leaves out, so that evaluation sees lighting the heads never saw.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from delit_cache.lighting import render
from delit_cache.lighting.envmap import (
    ENV_SIZE,
    direction_grid,
    load_env,
    mirror_env,
    require_light,
    rotate_env,
    solid_angles,
    tilt_env,
)

KINDS = ("sky", "overcast", "indoor", "studio", "neon", "key")
KIND_WEIGHTS = (0.25, 0.1, 0.2, 0.15, 0.1, 0.2)
# Packaged HDRIs kept out of training data (delit demo, scripts/make_training_data.sh) and
# used alone for the leave-HDRI-out evaluation: one outdoor and one indoor scene.
HELDOUT_HDRIS = ("courtyard", "interior")
# (kelvin, rgb) for colour temperatures, luminance-normalised below
_KELVIN = [
    (2700, (1.0, 0.62, 0.32)),
    (3200, (1.0, 0.7, 0.45)),
    (4000, (1.0, 0.8, 0.62)),
    (5000, (1.0, 0.9, 0.8)),
    (5600, (1.0, 0.94, 0.88)),
    (6500, (1.0, 1.0, 1.0)),
    (8000, (0.86, 0.91, 1.0)),
    (10000, (0.76, 0.84, 1.0)),
]
LUMA = torch.tensor(render.LUMA)


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached direction grid ``[3,h,w]`` and solid angles ``[h,w]``."""
    return direction_grid(h, w), solid_angles(h, w)


def kelvin_rgb(kelvin: float) -> torch.Tensor:
    """Colour ``[3]`` of a black-body-like source at ``kelvin`` (2700-10000), luminance 1."""
    ks = [k for k, _ in _KELVIN]
    cols = np.array([c for _, c in _KELVIN])
    rgb = torch.tensor([np.interp(kelvin, ks, cols[:, i]) for i in range(3)], dtype=torch.float32)
    return rgb / (rgb @ LUMA)


def direction(azimuth_deg: float, elevation_deg: float) -> torch.Tensor:
    """Unit vector for an azimuth (0 = straight ahead of the camera, -z; 90 = +x; 180 = toward
    the camera, +z) and an elevation above the horizon, in degrees."""
    phi, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return torch.tensor([math.cos(el) * math.sin(phi), math.sin(el), -math.cos(el) * math.cos(phi)])


def lobe(dirs: torch.Tensor, centre: torch.Tensor, kappa: float) -> torch.Tensor:
    """von Mises-Fisher-like lobe ``exp(kappa (d.c - 1))`` -> ``[h,w]`` in [0, 1]."""
    return torch.exp(kappa * ((dirs * centre[:, None, None]).sum(0) - 1.0))


def add_source(
    env: torch.Tensor, centre: torch.Tensor, kappa: float, irradiance: float, rgb: torch.Tensor
) -> None:
    """Add a lobe whose integral (radiance x solid angle) is ``irradiance * rgb`` (in place)."""
    dirs, omega = _grid(*env.shape[-2:])
    shape = lobe(dirs, centre, kappa)
    env += rgb[:, None, None] * (irradiance / float((shape * omega).sum())) * shape


def soft_rect(
    dirs: torch.Tensor, az: float, el: float, half_w: float, half_h: float, soft: float = 2.0
) -> torch.Tensor:
    """Soft-edged rectangle in (azimuth, elevation) degrees -> ``[h,w]`` weights in [0, 1]."""
    azm = torch.rad2deg(torch.atan2(dirs[0], -dirs[2]))
    elv = torch.rad2deg(torch.asin(dirs[1].clamp(-1, 1)))
    daz = (azm - az + 180.0) % 360.0 - 180.0
    wx = ((half_w - daz.abs()) / soft).clamp(0, 1)
    wy = ((half_h - (elv - el).abs()) / soft).clamp(0, 1)
    return wx * wy


def _sky(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    dirs, _ = _grid(h, w)
    up = dirs[1].clamp_min(0)
    zenith = torch.tensor([0.18, 0.32, 0.75]) * float(rng.uniform(0.6, 1.2))
    horizon = torch.tensor([0.6, 0.7, 0.85]) * float(rng.uniform(0.8, 1.4))
    t = up.sqrt()[None]
    env = horizon[:, None, None] * (1 - t) + zenith[:, None, None] * t
    el, az = float(rng.uniform(5, 70)), float(rng.uniform(-180, 180))
    sun_dir = direction(az, el)
    env = env + 0.4 * horizon[:, None, None] * lobe(dirs, sun_dir, 8.0)
    sun_e = float(rng.uniform(3.0, 8.0)) * float(rng.choice([1.0, 1.0, 0.35]))
    ground = torch.tensor(np.array([1.0, 0.85, 0.65]) * rng.uniform(0.08, 0.3), dtype=torch.float32)
    ground = ground * torch.tensor(np.exp(rng.normal(0, 0.08, 3)), dtype=torch.float32)
    g_rad = ground * (sun_e * math.sin(math.radians(el)) + 2.0) / math.pi
    below = (dirs[1] < 0)[None]
    env = torch.where(below, g_rad[:, None, None].expand_as(env), env)
    add_source(env, sun_dir, 1500.0, sun_e, kelvin_rgb(float(rng.uniform(4500, 6000))))
    return env


def _overcast(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    dirs, _ = _grid(h, w)
    lz = float(rng.uniform(0.8, 1.6))
    col = kelvin_rgb(float(rng.uniform(6000, 8000)))
    sky = lz * (1 + 2 * dirs[1].clamp_min(0)) / 3
    bright = direction(float(rng.uniform(-180, 180)), float(rng.uniform(20, 60)))
    sky = sky * (1 + float(rng.uniform(0, 1.5)) * lobe(dirs, bright, 4.0))
    ground = float(rng.uniform(0.05, 0.2)) * lz
    rad = torch.where(dirs[1] >= 0, sky, torch.full_like(sky, ground))
    return col[:, None, None] * rad[None]


def _walls(rng: np.random.Generator, dirs: torch.Tensor) -> torch.Tensor:
    """A room's dim walls and darker floor -> ``[3,h,w]``."""
    wall = torch.tensor(rng.uniform(0.4, 0.9, 3), dtype=torch.float32) * float(
        rng.uniform(0.05, 0.2)
    )
    floor = wall * float(rng.uniform(0.3, 0.7))
    return torch.where((dirs[1] >= -0.2)[None], wall[:, None, None], floor[:, None, None]).clone()


def _indoor(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    dirs, _ = _grid(h, w)
    env = _walls(rng, dirs)
    lamp = kelvin_rgb(float(rng.uniform(2700, 5000)))
    for _ in range(int(rng.integers(1, 4))):
        rect = soft_rect(dirs, rng.uniform(-180, 180), rng.uniform(45, 80), rng.uniform(6, 20),
                         rng.uniform(3, 8))  # fmt: skip
        env += lamp[:, None, None] * float(rng.uniform(4, 15)) * rect
    if rng.uniform() < 0.75:
        win = soft_rect(dirs, rng.uniform(-180, 180), rng.uniform(0, 20), rng.uniform(10, 30),
                        rng.uniform(12, 25))  # fmt: skip
        env += (
            kelvin_rgb(float(rng.uniform(6000, 9000)))[:, None, None]
            * float(rng.uniform(2, 8))
            * win
        )
    return env


def _room(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    """A room lit mostly by one source where rooms put one: a ceiling lamp at any height
    above the horizon (20-85 deg), a window or a floor or desk lamp near the horizon; the
    other lamps and windows are dimmer (10-50 % of its radiance), so the face shows which
    one is the light."""
    dirs, _ = _grid(h, w)
    env = _walls(rng, dirs)
    lamp = kelvin_rgb(float(rng.uniform(2700, 5000)))
    daylight = kelvin_rgb(float(rng.uniform(6000, 9000)))
    key = float(rng.uniform(4, 15))
    source = str(rng.choice(["ceiling", "window", "floor"], p=[0.5, 0.35, 0.15]))
    if source == "ceiling":
        rect = soft_rect(dirs, rng.uniform(-180, 180), rng.uniform(20, 85), rng.uniform(6, 20),
                         rng.uniform(3, 8))  # fmt: skip
        env += lamp[:, None, None] * key * rect
    elif source == "window":
        rect = soft_rect(dirs, rng.uniform(-180, 180), rng.uniform(0, 30), rng.uniform(10, 30),
                         rng.uniform(12, 25))  # fmt: skip
        env += daylight[:, None, None] * key * rect
    else:
        add_source(env, direction(rng.uniform(-180, 180), rng.uniform(-10, 25)),
                   float(rng.uniform(100, 800)), key * float(rng.uniform(0.05, 0.2)), lamp)  # fmt: skip
    for _ in range(int(rng.integers(0, 3))):
        rect = soft_rect(dirs, rng.uniform(-180, 180), rng.uniform(20, 85), rng.uniform(6, 20),
                         rng.uniform(3, 8))  # fmt: skip
        env += lamp[:, None, None] * key * float(rng.uniform(0.1, 0.5)) * rect
    if source != "window" and rng.uniform() < 0.5:
        win = soft_rect(dirs, rng.uniform(-180, 180), rng.uniform(0, 20), rng.uniform(10, 30),
                        rng.uniform(12, 25))  # fmt: skip
        env += daylight[:, None, None] * key * float(rng.uniform(0.1, 0.5)) * win
    return env


def _studio(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    env = torch.full((3, h, w), float(rng.uniform(0.005, 0.05)))
    side = float(rng.choice([-1.0, 1.0]))
    key = kelvin_rgb(float(rng.uniform(4500, 6500)))
    key_e = float(rng.uniform(2.0, 5.0))
    add_source(env, direction(180 - side * rng.uniform(20, 70), rng.uniform(10, 45)),
               float(rng.uniform(15, 80)), key_e, key)  # fmt: skip
    fill = key if rng.uniform() < 0.7 else _saturated(rng)
    add_source(env, direction(180 + side * rng.uniform(30, 80), rng.uniform(0, 30)),
               float(rng.uniform(5, 20)), key_e * float(rng.uniform(0.05, 0.5)), fill)  # fmt: skip
    if rng.uniform() < 0.7:
        rim = key if rng.uniform() < 0.6 else _saturated(rng)
        add_source(env, direction(side * rng.uniform(20, 70), rng.uniform(10, 40)),
                   float(rng.uniform(40, 200)), key_e * float(rng.uniform(0.3, 1.5)), rim)  # fmt: skip
    return env


def _saturated(rng: np.random.Generator) -> torch.Tensor:
    """A saturated random colour with luminance 1."""
    hue = float(rng.uniform(0, 1))
    rgb = torch.tensor([max(0.0, math.cos(2 * math.pi * (hue - k / 3))) ** 2 for k in range(3)])
    rgb = rgb + 0.05
    return rgb / (rgb @ LUMA)


def _neon(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    dirs, _ = _grid(h, w)
    env = torch.full((3, h, w), float(rng.uniform(0.005, 0.03)))
    for _ in range(int(rng.integers(2, 5))):
        col = _saturated(rng)
        if rng.uniform() < 0.5:
            add_source(env, direction(rng.uniform(-180, 180), rng.uniform(-10, 50)),
                       float(rng.uniform(10, 60)), float(rng.uniform(0.5, 3)), col)  # fmt: skip
        else:
            strip = soft_rect(dirs, rng.uniform(-180, 180), rng.uniform(-10, 30), rng.uniform(1, 3),
                              rng.uniform(10, 40), soft=1.0)  # fmt: skip
            env += col[:, None, None] * float(rng.uniform(1, 6)) * strip
    return env


def _light_colour(rng: np.random.Generator) -> torch.Tensor:
    """A light colour: mostly a colour temperature, sometimes a saturated gel."""
    return _saturated(rng) if rng.uniform() < 0.2 else kelvin_rgb(float(rng.uniform(2700, 10000)))


def _key(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    dirs, _ = _grid(h, w)
    ambient = _light_colour(rng) * float(10 ** rng.uniform(-2.5, -0.7))
    up = 0.5 + 0.5 * dirs[1]  # brighter above: a ceiling or sky bounce
    env = ambient[:, None, None] * (0.4 + 0.6 * up)[None]
    kappa = float(10 ** rng.uniform(1.0, 3.3))  # soft box (10) .. hard lamp (2000)
    centre = direction(rng.uniform(-180, 180), rng.uniform(-20, 80))
    add_source(env, centre, kappa, float(rng.uniform(2, 8)), _light_colour(rng))
    return env


_BUILDERS = {
    "sky": _sky,
    "overcast": _overcast,
    "indoor": _indoor,
    "studio": _studio,
    "neon": _neon,
    "key": _key,
}
# How the ``indoor`` kind lays out its lights (``LightingOptions.indoor_layout``):
# "ceiling", the first recipe: 1-3 equal ceiling lamps 45-80 deg up and a dimmer window;
# "one-source": ``_room``, one dominant lamp or window at any height a room has one.
INDOOR_LAYOUTS = {"ceiling": _indoor, "one-source": _room}


def procedural_env(
    kind: str,
    rng: np.random.Generator,
    size: tuple[int, int] = ENV_SIZE,
    indoor_layout: str = "ceiling",
) -> torch.Tensor:
    """A random env map of ``kind`` (one of ``KINDS``) -> ``[3,h,w]`` linear radiance >= 0.

    ``indoor_layout``: how ``indoor`` places its lights, a key of ``INDOOR_LAYOUTS``."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown procedural env kind {kind!r}; choose from {KINDS}")
    if indoor_layout not in INDOOR_LAYOUTS:
        raise ValueError(
            f"unknown indoor layout {indoor_layout!r}; choose from {', '.join(INDOOR_LAYOUTS)}"
        )
    build = INDOOR_LAYOUTS[indoor_layout] if kind == "indoor" else _BUILDERS[kind]
    return build(rng, *size).clamp_min(0.0).contiguous()


def packaged_hdri_dir() -> Path | None:
    """The packaged ``delit_cache/assets/hdri`` folder, if it holds any ``.exr``."""
    d = Path(__file__).resolve().parent.parent / "assets" / "hdri"
    return d if d.is_dir() and any(d.glob("*.exr")) else None


def list_hdris(
    hdri_dir: str | Path | None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> list[Path]:
    """Sorted ``.exr``/``.hdr`` files of ``hdri_dir`` (``None``: the packaged folder or none).

    ``include``: keep only these stems; ``exclude``: drop these stems. A name that matches no
    file is an error (a typo must not silently change the split)."""
    d = Path(hdri_dir) if hdri_dir is not None else packaged_hdri_dir()
    files = (
        [] if d is None else sorted(p for p in d.iterdir() if p.suffix.lower() in (".exr", ".hdr"))
    )
    stems = {p.stem for p in files}
    for name in [*(include or ()), *exclude]:
        if name not in stems:
            raise ValueError(f"no HDRI named {name!r} in {d} (have: {', '.join(sorted(stems))})")
    if include is not None:
        files = [p for p in files if p.stem in include]
    return [p for p in files if p.stem not in exclude]


@functools.lru_cache(maxsize=64)
def load_hdri(path: str) -> torch.Tensor:
    """A training HDRI at ``ENV_SIZE``; ``DelitError`` naming it when unreadable, not a 2:1
    map, NaN, Inf, clearly negative or without any light (cached: workers load each once)."""
    return require_light(load_env(path), path)


@dataclass(frozen=True)
class LightingOptions:
    """How ``sample_env`` draws the lighting of one sample."""

    p_hdri: float = 0.5  # probability of a real HDRI (when any are given), else procedural
    p_tint: float = 0.5  # probability of a white-balance tint (2700-10000 K) over the map
    p_mix: float = 0.35  # probability of a second procedural source mixed in
    gain_stops: float = 1.0  # HDRI exposure drawn from 2**U(-gain_stops, gain_stops)
    # probability that the background shows another, independently drawn env map: the
    # shading on the subject is then the only view of the light (a model cannot learn the
    # lighting by recognising a training HDRI behind the person)
    p_other_background: float = 0.0
    # real HDRIs only: probability of mirroring the map left-right, and the largest tilt
    # (degrees, drawn uniformly either way, about the camera's right axis) that moves its
    # sun or window up or down. Both make new light layouts from few HDRIs; at 0 (the
    # defaults) no random number is drawn for them, so older recipes draw the same samples.
    p_mirror: float = 0.0
    max_tilt_deg: float = 0.0
    # how procedural ``indoor`` maps place their lights, a key of ``INDOOR_LAYOUTS``
    # ("ceiling", the default, draws the same samples as before the option existed)
    indoor_layout: str = "ceiling"


def _draw_kind(rng: np.random.Generator) -> str:
    """A procedural kind drawn by ``KIND_WEIGHTS``."""
    return str(rng.choice(KINDS, p=np.array(KIND_WEIGHTS) / sum(KIND_WEIGHTS)))


def _tint(rng: np.random.Generator) -> torch.Tensor:
    """A white-balance tint ``[3]`` relative to 6500 K (luminance 1)."""
    return kelvin_rgb(float(rng.uniform(2700, 10000))) / kelvin_rgb(6500.0)


def _energy(env: torch.Tensor) -> float:
    _, omega = _grid(*env.shape[-2:])
    return float((env.mean(0) * omega).sum())


def sample_env(
    rng: np.random.Generator, hdris: list[Path], options: LightingOptions = LightingOptions()
) -> tuple[torch.Tensor, dict]:
    """Draw an env map ``[3,128,256]`` and its metadata.

    With probability ``options.p_hdri`` (if ``hdris`` is not empty) a real HDRI rotated by a
    random angle and exposed by 2**U(-1, 1) (then, by ``options``, mirrored and tilted); otherwise a procedural kind drawn by
    ``KIND_WEIGHTS``. Then, each with its probability, a second procedural map mixed in at
    5-60 % of the first one's energy and a white-balance tint.
    """
    if hdris and rng.uniform() < options.p_hdri:
        path = hdris[int(rng.integers(len(hdris)))]
        rot = float(rng.uniform(0, 360))
        gain = float(2.0 ** rng.uniform(-options.gain_stops, options.gain_stops))
        env = rotate_env(load_hdri(str(path)), rot) * gain
        meta = {"env_source": f"hdri:{path.name}", "env_rotation": round(rot, 3), "env_gain": gain}
        if options.p_mirror > 0 and rng.uniform() < options.p_mirror:
            env = mirror_env(env)
            meta["env_mirror"] = True
        if options.max_tilt_deg > 0:
            tilt = float(rng.uniform(-options.max_tilt_deg, options.max_tilt_deg))
            env = tilt_env(env, tilt)
            meta["env_tilt"] = round(tilt, 3)
    else:
        kind = _draw_kind(rng)
        env = procedural_env(kind, rng, indoor_layout=options.indoor_layout)
        meta = {"env_source": f"procedural:{kind}", "env_rotation": 0.0, "env_gain": 1.0}
    if rng.uniform() < options.p_mix:
        kind = _draw_kind(rng)
        extra = procedural_env(kind, rng, indoor_layout=options.indoor_layout)
        share = float(rng.uniform(0.05, 0.6))
        env = env + extra * (share * _energy(env) / max(_energy(extra), 1e-12))
        meta["env_mix"] = f"procedural:{kind}@{share:.3f}"
    if rng.uniform() < options.p_tint:
        tint = _tint(rng)
        env = env * tint[:, None, None]
        meta["env_tint"] = [round(float(c), 4) for c in tint]
    return env.contiguous(), meta

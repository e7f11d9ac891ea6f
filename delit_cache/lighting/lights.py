"""EnvMapNet's dominant-light direction error (Somanath & Kurz, CVPR 2021), as the DiffusionLight
evaluation scores it (``envmapnet/compute_directional_error.py``), written for delit.

Not the same measure as ``sphere_metrics.light_direction_error_deg`` (delit's own: the
angle between the single brightest light of each map). Here each map yields up to 15 light blobs:

1. ``G``: the reference script's grey image. Its loop meant a luminance but keeps only the
   last term, ``0.0722 * blue``; the detection below is scale-free, so this is the blue
   channel. Blurred by a Gaussian of ``k = 2 * int(h / 200) + 1`` pixels (none for h < 200,
   so none for delit's 128 x 256 maps), weighted by ``sin(theta)`` per row.
2. Repeatedly: the brightest unclaimed value is a seed; its 8-connected component of unclaimed
   pixels within 0.3 x the seed value becomes light number ``n``. Stop after 15 lights, when
   under 10 % of the pixels are unclaimed, or when the unclaimed energy is under 20 % of the
   total.
3. Lights larger than half the map, or whose major axis spans over 90 % of its width, are
   dropped; the rest are merged (dilated by a 2 x 2 square, relabelled 8-connected, in raster
   order). Each light's direction comes from its pixel centroid ``(x, y)``:
   ``elevation = (y + 1) / h * pi``, ``azimuth = (1 - (x + 1) / (2h)) * 2pi`` (EnvMapNet's
   formula; the reference fits an ellipse to the blob's contour, whose centre is this
   centroid up to sub-pixel differences).
4. Error: with ``k = min(5, lights in each map)`` (a single light counts twice), the mean over
   the first ``k`` lights of each map of the angle to the nearest of the other map's first
   ``k``, in both directions. A pair where either map has no light has no score (NaN); the
   reference averages over the rest.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch

MAX_LIGHTS = 15
ENERGY_RATIO = 0.3
MIN_ENERGY_LEFT = 0.2
MIN_PIXELS_LEFT = 0.1
TOP_K = 5
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _flood(allowed: np.ndarray, seeds: list[tuple[int, int]]) -> np.ndarray:
    """8-connected pixels of ``allowed`` reachable from ``seeds`` -> bool mask."""
    h, w = allowed.shape
    out = np.zeros_like(allowed)
    queue = deque(s for s in seeds if allowed[s])
    for s in queue:
        out[s] = True
    while queue:
        y, x = queue.popleft()
        for dy, dx in _NEIGHBOURS:
            ny, nx = y + dy, x + dx
            if 0 <= ny < h and 0 <= nx < w and allowed[ny, nx] and not out[ny, nx]:
                out[ny, nx] = True
                queue.append((ny, nx))
    return out


def _label(binary: np.ndarray) -> list[np.ndarray]:
    """8-connected components of ``binary`` in raster order of their first pixel."""
    left = binary.copy()
    parts = []
    for y, x in zip(*np.nonzero(binary), strict=True):
        if left[y, x]:
            part = _flood(left, [(y, x)])
            left &= ~part
            parts.append(part)
    return parts


def _weighted_grey(env: np.ndarray) -> np.ndarray:
    """Step 1: ``[h,w,3]`` -> blurred, sin(theta)-weighted grey ``[h,w]``."""
    h = env.shape[0]
    grey = env[..., 2] * 0.0722
    k = int(h * 0.01 / 2) * 2 + 1
    if k > 1:
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
        x = np.arange(k) - (k - 1) / 2
        g = np.exp(-(x**2) / (2 * sigma**2))
        g /= g.sum()
        t = torch.from_numpy(grey)[None, None].double()
        kern = torch.from_numpy(g)
        t = torch.nn.functional.pad(t, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
        t = torch.nn.functional.conv2d(t, kern.view(1, 1, 1, k))
        t = torch.nn.functional.conv2d(t, kern.view(1, 1, k, 1))
        grey = t[0, 0].numpy()
    theta = np.linspace(np.pi / (2 * h), np.pi - np.pi / (2 * h), h)
    return grey * np.sin(theta)[:, None]


def _segment(weighted: np.ndarray) -> list[np.ndarray]:
    """Step 2: light segments (bool masks) in detection order."""
    free = np.ones(weighted.shape, dtype=bool)
    total = weighted.sum()
    lights = []
    while True:
        avail = np.where(free, weighted, 0.0)
        seed = avail.max()
        seeds = list(zip(*np.nonzero(avail >= seed), strict=True))
        light = _flood(avail >= seed * ENERGY_RATIO, seeds)
        lights.append(light)
        free &= ~light
        if free.sum() < weighted.size * MIN_PIXELS_LEFT or len(lights) >= MAX_LIGHTS:
            break
        if np.where(free, weighted, 0.0).sum() < MIN_ENERGY_LEFT * total:
            break
    return lights


def _major_axis(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([ys, xs]).astype(np.float64), bias=True)
    return 4.0 * math.sqrt(max(float(np.linalg.eigvalsh(np.atleast_2d(cov)).max()), 0.0))


def detect_lights(env: torch.Tensor) -> np.ndarray:
    """Light directions ``[L,3]`` (EnvMapNet's frame) of a linear map ``[3,h,w]``, in the
    order the reference lists them (steps 1-3 of the module docstring); ``L`` may be 0."""
    img = env.detach().double().cpu().numpy().transpose(1, 2, 0)
    h, w = img.shape[:2]
    keep = np.zeros((h, w), dtype=bool)
    for light in _segment(_weighted_grey(img)):
        if light.sum() / (h * w) > 0.5 or _major_axis(light) / w > 0.9:
            continue
        keep |= light
    grown = keep.copy()
    grown[1:, :] |= keep[:-1, :]
    grown[:, 1:] |= grown[:, :-1].copy()
    dirs = []
    for part in _label(grown):
        ys, xs = np.nonzero(part)
        el = (ys.mean() + 1.0) / h * math.pi
        az = (1.0 - (xs.mean() + 1.0) / (2.0 * h)) * 2.0 * math.pi
        dirs.append([math.sin(el) * math.cos(az), math.sin(el) * math.sin(az), math.cos(el)])
    return np.asarray(dirs, dtype=np.float64).reshape(-1, 3)


def dominant_light_error_deg(pred_env: torch.Tensor, gt_env: torch.Tensor) -> float:
    """EnvMapNet's symmetric top-5 nearest-light angular error in degrees between two linear
    maps ``[3,h,w]``; NaN when either map has no detected light (left out of averages)."""
    gt, pred = detect_lights(gt_env), detect_lights(pred_env)
    if len(gt) == 0 or len(pred) == 0:
        return math.nan
    gt = np.concatenate([gt, gt]) if len(gt) < 2 else gt
    pred = np.concatenate([pred, pred]) if len(pred) < 2 else pred
    k = min(TOP_K, len(gt), len(pred))
    chord = np.linalg.norm(gt[:k, None, :] - pred[None, :k, :], axis=-1)
    angle = 2.0 * np.arcsin(np.clip(0.5 * chord, 0.0, 1.0))
    return math.degrees((angle.min(1).sum() + angle.min(0).sum()) / (2 * k))

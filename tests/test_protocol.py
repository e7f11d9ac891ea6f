"""The ``diffusionlight`` protocol against the reference renderer's own output (the oracle in
``shared/data/diffusionlight-eval-reference``) and on pairs whose relation is known."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from delit_cache.data.imageio import read_hdr
from delit_cache.lighting import protocol
from delit_cache.lighting.envmap import fixture_envs, load_env, rotate_env
from delit_cache.lighting.lights import detect_lights, dominant_light_error_deg

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "diffusionlight-eval-reference"
needs_oracle = pytest.mark.skipif(
    not (ORACLE / "scores.csv").is_file(),
    reason=f"the reference protocol's oracle is not at {ORACLE} (shared/ beside the clone)",
)
# (relative tolerance for si-RMSE and nRMSE, absolute for the angular error in degrees)
TOLERANCE = {"diffuse": (0.05, 0.3), "matte_silver": (0.05, 0.3), "mirror": (0.10, 0.5)}


def _hdr(name: str) -> torch.Tensor:
    return torch.from_numpy(read_hdr(ORACLE / "hdr128" / f"{name}.exr").transpose(2, 0, 1).copy())


def _rgba(path: Path) -> np.ndarray:
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as f:
        chans = {k: np.asarray(v.pixels) for k, v in f.channels().items()}
    return np.stack([chans[c] for c in "RGBA"]).astype(np.float64).reshape(4, -1)


@needs_oracle
def test_tonemap_matches_the_reference_tonemap():
    for path in sorted((ORACLE / "tonemapped").glob("*.exr")):
        ours = protocol.prepare_map(_hdr(path.stem))
        ref = torch.from_numpy(read_hdr(path).transpose(2, 0, 1).copy())
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6), path.stem


@needs_oracle
@pytest.mark.parametrize("sphere", protocol.SPHERES)
def test_renders_match_the_reference_renders(sphere):
    """Mean per-pixel relative RGB error inside the fully covered sphere under 5 %, and the
    mask (alpha > 0) within 0.5 % of the reference's pixel count."""
    view = protocol.sphere_view()
    names = ["city", "courtyard", "interior", "studio", "sunrise"]
    renders = protocol.render_reference(torch.stack([protocol.prepare_map(_hdr(n)) for n in names]))
    inner = view.alpha > 0.999
    for i, name in enumerate(names):
        ref = _rgba(ORACLE / "render" / sphere / f"{name}.exr")
        assert abs(view.index.numel() / (ref[3] > 0).sum() - 1) < 0.005
        ours = renders[sphere][i][:, inner].double()
        theirs = torch.from_numpy(ref[:3][:, view.index.numpy()])[:, inner]
        rel = (ours - theirs).norm(dim=0) / theirs.norm(dim=0).clamp_min(1e-6)
        assert float(rel.mean()) < 0.05, (name, float(rel.mean()))


@needs_oracle
def test_scores_reproduce_every_reference_pair():
    with open(ORACLE / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    pairs = sorted({(r["pred"], r["gt"]) for r in rows})
    ours = {pair: protocol.diffusionlight_errors(_hdr(pair[0]), _hdr(pair[1])) for pair in pairs}
    for row in rows:
        rel_tol, deg_tol = TOLERANCE[row["sphere"]]
        errs = ours[(row["pred"], row["gt"])]
        for key in ("si_rmse", "nrmse"):
            mine, ref = float(errs[f"{row['sphere']}_{key}"][0]), float(row[key])
            assert abs(mine / ref - 1) < rel_tol, (row["pred"], row["gt"], key, mine, ref)
        mine = float(errs[f"{row['sphere']}_angular_deg"][0])
        assert abs(mine - float(row["angular_deg"])) < deg_tol, (row, mine)


def test_identical_and_rescaled_maps_score_zero():
    """The tone map removes exposure, so a map against itself x 4 scores (near) 0 everywhere."""
    env = load_env(fixture_envs()["courtyard"])
    scores = protocol.diffusionlight_metrics(env * 4.0, env)
    for sphere in protocol.SPHERES:
        assert scores[sphere]["si_rmse"] < 1e-3
        assert scores[sphere]["angular_deg"] < 0.05
        assert scores[sphere]["nrmse"] < 1e-3
    assert scores["light_dir_deg"] < 1e-6


def test_rotation_error_grows_with_the_angle():
    env = load_env(fixture_envs()["sunrise"])
    small = protocol.diffusionlight_metrics(rotate_env(env, 22.5), env)
    large = protocol.diffusionlight_metrics(rotate_env(env, 90.0), env)
    for sphere in protocol.SPHERES:
        assert 0 < small[sphere]["si_rmse"] < large[sphere]["si_rmse"]


def test_si_rmse_sums_over_rgb_and_ignores_scale():
    """fast_rmse.py: the best scalar scale, then the error summed over RGB divided by the
    pixel count (not by three times it)."""
    gt = torch.rand(1, 3, 1000) + 0.5
    assert float(protocol.reference_scores(gt * 2.5, gt)["si_rmse"][0]) < 1e-6
    pred = gt.clone()
    pred[:, 0] += 0.1
    a, b = (pred * pred).sum(), (pred * gt).sum()
    expected = math.sqrt(float(((b / a * pred - gt) ** 2).sum()) / 1000)
    assert float(protocol.reference_scores(pred, gt)["si_rmse"][0]) == pytest.approx(expected)


def test_dominant_light_error_finds_a_rotated_sun():
    env = torch.full((3, 128, 256), 0.05)
    env[:, 40:43, 100:103] = 500.0
    assert len(detect_lights(env)) == 1
    shifted = torch.roll(env, shifts=64, dims=-1)  # a quarter turn at elevation ~ 57 deg
    err = dominant_light_error_deg(shifted, env)
    el = (41.5 + 1) / 128 * math.pi  # rows 40-42, one row longer after the 2 x 2 dilation
    expected = math.degrees(2 * math.asin(math.sin(el) * math.sin(math.pi / 4)))
    assert err == pytest.approx(expected, abs=0.5)
    assert math.isnan(dominant_light_error_deg(torch.zeros(3, 128, 256), env))

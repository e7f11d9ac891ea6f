"""Tests for delit_cache.lighting.envmap: the equirectangular convention, resampling, rotation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from delit_cache.data.imageio import write_exr
from delit_cache.lighting.envmap import (
    direction_grid,
    direction_to_uv,
    env_energy,
    fixture_envs,
    load_env,
    mirror_direction,
    mirror_env,
    resample_env,
    rotate_env,
    scale_exposure,
    solid_angles,
    tilt_env,
)
from delit_cache.lighting.sphere_metrics import angle_between_deg, brightest_direction
from delit_cache.synth.environments import direction, lobe
from delit_cache.utils.errors import DelitError


def test_direction_grid_convention():
    d = direction_grid(64, 128)
    assert d.shape == (3, 64, 128)
    assert torch.allclose(d.norm(dim=0), torch.ones(64, 128), atol=1e-6)
    # image centre (u = v = 0.5, between pixels 31/32 and 63/64): straight ahead, -z
    centre = d[:, 31:33, 63:65].mean(dim=(1, 2))
    assert torch.allclose(centre / centre.norm(), torch.tensor([0.0, 0.0, -1.0]), atol=1e-3)
    assert d[0, 32, 96] > 0.99  # u = 0.75 -> +x (camera's right)
    assert d[1, 0].min() > 0.99  # top row -> +y
    assert d[2, 32, 0] > 0.99 and d[2, 32, -1] > 0.99  # left/right edges -> +z


def test_solid_angles_sum_to_4pi():
    for h, w in ((128, 256), (7, 13)):
        omega = solid_angles(h, w)
        assert omega.shape == (h, w)
        assert math.isclose(omega.double().sum().item(), 4 * math.pi, rel_tol=1e-6)
        assert omega[h // 2, 0] > omega[0, 0]  # equator pixels are larger than pole pixels


def test_direction_to_uv_inverts_grid():
    h, w = 16, 32
    u, v = direction_to_uv(direction_grid(h, w))
    j = (torch.arange(w) + 0.5) / w
    i = (torch.arange(h) + 0.5) / h
    assert torch.allclose(u, j[None].expand(h, w), atol=1e-5)
    assert torch.allclose(v, i[:, None].expand(h, w), atol=1e-5)


def test_resample_keeps_one_pixel_sun_energy_non_integer_ratio():
    env = torch.full((3, 500, 1000), 0.5)
    env[:, 123, 777] = 5.0e4  # a tiny 1-pixel sun
    out = resample_env(env, (128, 256))
    assert out.shape == (3, 128, 256)
    e_in, e_out = env_energy(env.double()), env_energy(out.double())
    assert ((e_out - e_in).abs() / e_in).max() < 0.005
    # the sun lands in the right target pixel: same direction within one target pixel
    i, j = divmod(int(out[0].argmax()), 256)
    assert abs(i - 123 * 128 / 500) <= 1 and abs(j - 777 * 256 / 1000) <= 1
    assert torch.allclose(out[:, 5:10, 5:10], torch.tensor(0.5), rtol=1e-5)  # flat stays flat


def test_resample_integer_ratio_is_solid_angle_weighted_box():
    env = torch.rand(2, 3, 8, 16, generator=torch.Generator().manual_seed(0))
    out = resample_env(env, (4, 8))
    omega = solid_angles(8, 16)
    blocks = (env * omega).reshape(2, 3, 4, 2, 8, 2).sum(dim=(3, 5))
    w = omega.reshape(4, 2, 8, 2).sum(dim=(1, 3))
    assert torch.allclose(out, blocks / w, atol=1e-6)
    up = resample_env(env, (16, 32))  # upsampling is piecewise constant, energy-exact
    assert torch.allclose(env_energy(up), env_energy(env), rtol=1e-5)
    assert resample_env(env[0], (4, 8)).shape == (3, 4, 8)


def test_rotate_env_moves_light_by_azimuth():
    env = torch.zeros(3, 8, 16)
    env[:, 4, 8] = 1.0  # just right of centre (-z)
    r = rotate_env(env, 90.0)  # +90 degrees: column + 4 (towards +x)
    assert r[0, 4, 12] == 1.0 and r.sum() == env.sum()
    assert torch.equal(rotate_env(env, 360.0), env)
    assert torch.equal(rotate_env(env, -90.0)[:, :, 4], env[:, :, 8])
    half = rotate_env(env, 360.0 / 16 / 2)  # half a pixel: split between columns 8 and 9
    assert torch.allclose(half[0, 4, 8:10], torch.tensor([0.5, 0.5]))
    assert torch.allclose(env_energy(half), env_energy(env))
    batched = rotate_env(env[None].repeat(2, 1, 1, 1), 45.0)
    assert batched.shape == (2, 3, 8, 16)


def _lobe_env(elevation, azimuth):
    """A small bright lobe at (elevation, azimuth) degrees over a dim floor, ``[3,64,128]``."""
    return (0.01 + lobe(direction_grid(64, 128), direction(azimuth, elevation), 300.0)).repeat(
        3, 1, 1
    )


def _off_by_deg(env, elevation, azimuth):
    """Degrees between the brightest light of ``env`` and (elevation, azimuth)."""
    found = brightest_direction(env)
    return float(angle_between_deg(found, direction(azimuth, elevation)[None]))


def test_mirror_env_negates_azimuth_exactly():
    env = _lobe_env(20.0, 60.0)
    mirrored = mirror_direction(brightest_direction(env))
    assert torch.allclose(brightest_direction(mirror_env(env)), mirrored, atol=1e-6)
    assert mirrored[0, 0] == -brightest_direction(env)[0, 0] != 0
    assert _off_by_deg(mirror_env(env), 20.0, -60.0) < 2.0
    assert torch.equal(mirror_env(mirror_env(env)), env)
    assert torch.allclose(env_energy(mirror_env(env)), env_energy(env))


@pytest.mark.parametrize(("tilt", "elevation"), [(15.0, 25.0), (-20.0, -10.0), (0.0, 10.0)])
def test_tilt_env_raises_a_light_ahead_and_keeps_energy(tilt, elevation):
    env = _lobe_env(10.0, 0.0)  # ahead of the camera, 10 degrees up
    out = tilt_env(env, tilt)
    assert _off_by_deg(out, elevation, 0.0) < 2.0
    assert torch.allclose(env_energy(out), env_energy(env), rtol=0.01)
    side = _lobe_env(0.0, 90.0)  # on the tilt axis (+x): stays where it is
    assert _off_by_deg(tilt_env(side, 30.0), 0.0, 90.0) < 2.0
    assert tilt_env(env[None].repeat(2, 1, 1, 1), tilt).shape == (2, 3, 64, 128)
    if tilt == 0.0:
        assert torch.allclose(out, env, atol=1e-5)


def test_scale_exposure():
    env = torch.rand(3, 4, 8)
    assert torch.allclose(scale_exposure(env, 1.0), 2 * env)
    assert torch.allclose(scale_exposure(env, -2.0), env / 4)


def test_fixtures_load_and_are_small():
    envs = fixture_envs()
    assert set(envs) == {"city", "courtyard", "interior", "studio", "sunrise"}
    total = sum(p.stat().st_size for p in envs.values())
    assert total < 1_000_000
    assert (next(iter(envs.values())).parent / "NOTICE").read_text().count("CC0") >= 1
    env = load_env(envs["city"])
    assert env.shape == (3, 128, 256) and env.dtype == torch.float32
    assert env.min() >= 0 and env.max() > 1000  # the sun survives downsampling


def test_load_env_resamples_and_rejects_bad_maps(tmp_path):
    arr = np.full((64, 128, 3), 0.25, np.float32)
    write_exr(tmp_path / "a.exr", arr)
    assert load_env(tmp_path / "a.exr").shape == (3, 128, 256)
    assert load_env(tmp_path / "a.exr", size=None).shape == (3, 64, 128)
    write_exr(tmp_path / "square.exr", np.ones((32, 32, 3), np.float32))
    with pytest.raises(DelitError, match=r"square\.exr.*2:1"):
        load_env(tmp_path / "square.exr")
    bad = arr.copy()
    bad[3, 3, 0] = np.nan
    write_exr(tmp_path / "nan.exr", bad, half=False)
    with pytest.raises(DelitError, match=r"nan\.exr.*NaN"):
        load_env(tmp_path / "nan.exr")
    with pytest.raises(DelitError, match="not found"):
        load_env(tmp_path / "missing.exr")
    with pytest.raises(ValueError):
        resample_env(torch.zeros(4, 8, 16), (4, 8))

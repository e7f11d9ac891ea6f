"""Tests for delit_cache.lighting.render: exactness against brute force, conventions, batching, grads."""

from __future__ import annotations

import math

import pytest
import torch

from delit_cache.lighting import render as R
from delit_cache.lighting.envmap import (
    direction_grid,
    fixture_envs,
    load_env,
    rotate_env,
    solid_angles,
)


@pytest.fixture(scope="module")
def sphere():
    n, mask = R.sphere_normals(32)
    v = torch.zeros_like(n)
    v[2] = 1.0
    return n, v, mask


def _small_light_env() -> torch.Tensor:
    env = torch.full((3, 128, 256), 0.2)
    env[:, 40:42, 100:102] = torch.tensor([5000.0, 4000.0, 3000.0])[:, None, None]
    return env


def _max_rel_err(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """Max relative error over mask pixels where the reference exceeds 1 % of its max."""
    keep = mask & (ref.amax(0) > 0.01 * ref.max())
    return float(((out - ref).abs() / ref.clamp_min(1e-12))[:, keep].max())


def _ref_specular(env: torch.Tensor, r: torch.Tensor, rough: float) -> torch.Tensor:
    """Brute-force split-sum GGX over every env pixel."""
    a2 = torch.tensor(rough**2)
    h, w = env.shape[-2:]
    d = direction_grid(h, w).flatten(1)
    weight = R._ggx_weight(r.flatten(1).T @ d, a2) * solid_angles(h, w).flatten()
    out = (weight @ env.flatten(1).T) / R._ggx_norm(a2)
    return out.T.reshape(3, *r.shape[-2:])


@pytest.mark.parametrize("name", ["city", "sunrise", "synthetic"])
def test_diffuse_matches_bruteforce_within_2_percent(sphere, name):
    n, _, mask = sphere
    env = _small_light_env() if name == "synthetic" else load_env(fixture_envs()[name])
    ref = R.reference_diffuse_shading(env, n)[0]
    out = R.diffuse_shading(env, n)[0]
    assert _max_rel_err(out, ref, mask) < 0.02


@pytest.mark.parametrize("rough", [0.2, 0.33, 0.7])
def test_specular_matches_bruteforce(sphere, rough):
    n, v, mask = sphere
    r = 2.0 * n[2:3] * n - v
    for env in (load_env(fixture_envs()["city"]), _small_light_env()):
        out = R.specular_shading(env, n, v, rough)[0]
        assert _max_rel_err(out, _ref_specular(env, r, rough), mask) < 0.03


def test_uniform_env_gives_exact_radiance(sphere):
    n, v, mask = sphere
    env = torch.full((3, 64, 128), 2.5)
    assert torch.allclose(R.diffuse_shading(env, n)[0][:, mask], torch.tensor(2.5), rtol=1e-3)
    for rough in (0.25, 0.33, 1.0):
        spec = R.specular_shading(env, n, v, rough)[0][:, mask]
        assert torch.allclose(spec, torch.tensor(2.5), rtol=2e-3)
    r = 2.0 * n[2:3] * n - v
    assert torch.allclose(R.mirror_lookup(env, r), torch.tensor(2.5), rtol=1e-6)


def test_point_light_cosine_law():
    env = torch.zeros(3, 64, 128)
    env[:, 32, 96] = 1000.0  # one pixel near the equator at u ~ 0.75 (+x)
    d = direction_grid(64, 128)[:, 32, 96]
    power = 1000.0 * solid_angles(64, 128)[32, 96]
    normals = torch.stack(
        [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.6, 0.8, 0.0]), torch.tensor([-1.0, 0, 0])]
    ).T[:, :, None]  # [3,3,1]
    out = R.diffuse_shading(env, normals)[0, 0, :, 0]
    expected = power * (d @ normals[:, :, 0]).clamp_min(0) / math.pi
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-7)


def test_light_from_camera_right_lights_right_half():
    env = torch.full((3, 64, 128), 0.01)
    env[:, 30:34, 94:98] = 100.0  # u ~ 0.75 -> +x, the camera's right
    sp = R.render_spheres(env, size=32)
    d = sp["diffuse"][0, 1]
    assert d[:, 16:].sum() > 10 * d[:, :16].sum()
    env_up = torch.full((3, 64, 128), 0.01)
    env_up[:, :3] = 100.0  # the top rows: light from above
    d_up = R.render_spheres(env_up, size=32)["diffuse"][0, 1]
    assert d_up[:16].sum() > 10 * d_up[16:].sum()


def test_mirror_sphere_centre_sees_behind_camera_and_rim_sees_background():
    env = torch.zeros(3, 64, 128)
    env[0, :, :4] = 1.0  # left edge: +z, behind the camera -> red
    env[0, :, -4:] = 1.0
    env[2, :, 40:88] = 1.0  # centre +-67 degrees: -z, the background -> blue
    sp = R.render_spheres(env, size=33)
    mirror = sp["mirror"][0]
    assert mirror[0, 16, 16] > 0.99 and mirror[2, 16, 16] < 0.01
    assert mirror[2, 16, 0] > 0.99 and mirror[2, 0, 16] > 0.99  # the rim reflects -z


def test_mirror_lookup_at_pixel_centres_is_exact():
    env = torch.rand(2, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    dirs = direction_grid(16, 32)
    assert torch.allclose(R.mirror_lookup(env, dirs), env, atol=1e-5)


def test_batching_and_broadcast(sphere):
    n, v, _ = sphere
    envs = torch.stack([load_env(fixture_envs()["city"]), _small_light_env()])
    both = R.diffuse_shading(envs, n)
    assert both.shape == (2, 3, 32, 32)
    assert torch.allclose(both[1], R.diffuse_shading(envs[1], n)[0], rtol=1e-4, atol=1e-4)
    spec = R.specular_shading(envs, n[None].expand(2, -1, -1, -1), v, 0.4)
    assert spec.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError):
        R.diffuse_shading(envs, torch.zeros(3, 3, 8, 8))
    with pytest.raises(ValueError):
        R.diffuse_shading(envs, torch.zeros(2, 8, 8))


def test_roughness_map_matches_scalar(sphere):
    n, v, mask = sphere
    env = load_env(fixture_envs()["courtyard"])
    for rough in (0.35, 0.5):
        scalar = R.specular_shading(env, n, v, rough)[0]
        mapped = R.specular_shading(env, n, v, torch.full((1, 1, 32, 32), rough))[0]
        assert _max_rel_err(mapped, scalar, mask) < 0.02


def test_shade_combines_terms(sphere):
    n, v, mask = sphere
    env = load_env(fixture_envs()["interior"])
    albedo = torch.full((3, 32, 32), 0.5)
    no_spec = R.shade(env, n, albedo, specular=0.0)
    assert torch.allclose(no_spec, 0.5 * R.diffuse_shading(env, n), rtol=1e-5, atol=1e-6)
    full = R.shade(env, n, albedo, roughness=0.3, specular=1.0)
    expected = 0.5 * R.diffuse_shading(env, n) + R.specular_shading(env, n, v, 0.3)
    assert torch.allclose(full, expected, rtol=1e-4, atol=1e-5)
    masked = R.shade(env, n, albedo, mask=mask)
    assert masked[0][:, ~mask].abs().max() == 0 and masked[0][:, mask].min() > 0


def test_render_spheres_shapes_and_gradients():
    env = load_env(fixture_envs()["sunrise"])[None].repeat(2, 1, 1, 1).requires_grad_()
    sp = R.render_spheres(env, size=32)
    for key in ("diffuse", "matte", "mirror"):
        assert sp[key].shape == (2, 3, 32, 32)
        assert sp[key][:, :, ~sp["mask"]].abs().max() == 0
    assert sp["mask"].shape == (32, 32) and sp["mask"].dtype == torch.bool
    assert abs(sp["mask"].float().mean().item() - math.pi / 4) < 0.02
    loss = sum(sp[k].mean() for k in ("diffuse", "matte", "mirror"))
    loss.backward()
    assert torch.isfinite(env.grad).all() and env.grad.abs().sum() > 0


def test_rotation_changes_spheres():
    env = load_env(fixture_envs()["city"])
    a = R.render_spheres(env, size=24)["diffuse"]
    b = R.render_spheres(rotate_env(env, 90), size=24)["diffuse"]
    assert (a - b).abs().max() > 0.05 * a.max()


@pytest.mark.parametrize("name", ["city", "interior", "studio"])
def test_sphere_operators_match_render_spheres(name):
    """The loss's linear sphere operators agree with render_spheres on real HDRIs (< 0.5 %)."""
    from delit_cache.lighting.envmap import resample_env

    env = resample_env(load_env(fixture_envs()[name]), (32, 64))[None]
    ops, mask = R.sphere_operators(32, (32, 64))
    lin = torch.einsum("bcp,kpm->bckm", env.flatten(2), ops)
    ref = R.render_spheres(env, size=32)
    assert torch.equal(mask, ref["mask"])
    for k, sphere in enumerate(("diffuse", "matte")):
        r = ref[sphere][0][:, mask]
        assert float((lin[0, :, k] - r).abs().sum() / r.abs().sum()) < 5e-3


def test_sphere_operators_uniform_env():
    ops, _ = R.sphere_operators(16, (16, 32))
    out = torch.einsum("cp,kpm->ckm", torch.full((3, 16 * 32), 2.0), ops)
    # diffuse: quadrature over 16x32 pixels (within 0.5 %); matte: normalised weights (exact)
    expected = torch.full_like(out[:, 0], 2.0 * R.SPHERE_ALBEDO)
    torch.testing.assert_close(out[:, 0], expected, rtol=5e-3, atol=0)
    torch.testing.assert_close(out[:, 1], torch.full_like(out[:, 1], 2.0))

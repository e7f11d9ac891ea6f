"""Tests for delit_cache.lighting.sphere_metrics: sphere scores, light direction, sphere loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from delit_cache.lighting.envmap import direction_grid, fixture_envs, load_env, rotate_env
from delit_cache.lighting.sphere_metrics import (
    angular_error_deg,
    brightest_direction,
    light_direction_error_deg,
    nrmse,
    si_rmse,
    sphere_loss,
    sphere_metrics,
)

GEN = torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def city():
    return load_env(fixture_envs()["city"])


def test_si_rmse_closed_form():
    gt = torch.rand(2, 3, 8, 8, generator=GEN)
    assert torch.allclose(si_rmse(3.0 * gt, gt), torch.zeros(2), atol=1e-6)
    pred = gt + 0.1 * torch.rand(2, 3, 8, 8, generator=GEN)
    p, g = pred[0].numpy().ravel(), gt[0].numpy().ravel()
    s = (p @ g) / (p @ p)
    expected = np.sqrt(np.mean((s * p - g) ** 2))
    assert si_rmse(pred, gt)[0].item() == pytest.approx(expected, rel=1e-5)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 2:5] = True
    sub = si_rmse(pred[:, :, 2:5, 2:5], gt[:, :, 2:5, 2:5])
    assert torch.allclose(si_rmse(pred, gt, mask), sub)


def test_angular_error():
    red = torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 2, 2)
    green = torch.tensor([0, 1.0, 0]).view(3, 1, 1).expand(3, 2, 2)
    assert angular_error_deg(red, green).item() == pytest.approx(90.0, abs=1e-3)
    assert angular_error_deg(5 * red, red).item() == pytest.approx(0.0, abs=0.05)
    yellow = red + green
    assert angular_error_deg(yellow, red).item() == pytest.approx(45.0, abs=1e-3)


def test_nrmse_uses_each_images_own_percentiles():
    gt = torch.rand(1, 3, 16, 16, generator=GEN)
    assert nrmse(2.0 * gt + 5.0, gt).item() == pytest.approx(0.0, abs=1e-5)
    assert nrmse(torch.rand(1, 3, 16, 16, generator=GEN), gt).item() > 0.2


def test_brightest_direction_and_error():
    env = torch.full((3, 128, 256), 0.1)
    env[:, 30:32, 200:202] = 1e4
    d = brightest_direction(env)[0]
    target = direction_grid(128, 256)[:, 30:32, 200:202].mean(dim=(1, 2))
    assert torch.rad2deg(torch.acos((d @ target / target.norm()).clamp(max=1))) < 1.0
    rotated = rotate_env(env, 30.0)
    err = light_direction_error_deg(rotated, env).item()
    # a 30-degree azimuth turn at polar angle ~43 deg moves the light by ~20.6 deg of arc
    theta = math.pi * 31 / 128
    arc = math.degrees(
        math.acos(math.sin(theta) ** 2 * math.cos(math.radians(30)) + math.cos(theta) ** 2)
    )
    assert err == pytest.approx(arc, abs=1.0)


def test_sphere_metrics_invariances(city):
    scores = sphere_metrics(4.0 * city, city)
    assert set(scores) == {"diffuse", "matte", "mirror", "light_dir_deg"}
    for name in ("diffuse", "matte", "mirror"):
        assert set(scores[name]) == {"si_rmse", "angular_deg", "nrmse"}
        assert scores[name]["si_rmse"] < 1e-3 * 4
        assert scores[name]["angular_deg"] < 0.1
    assert scores["light_dir_deg"] < 0.5
    small = sphere_metrics(rotate_env(city, 5.0), city)
    big = sphere_metrics(rotate_env(city, 90.0), city)
    for name in ("diffuse", "matte", "mirror"):
        for m in ("si_rmse", "angular_deg", "nrmse"):
            assert big[name][m] > 1.5 * small[name][m], (name, m)
    assert big["light_dir_deg"] > 45 > 10 > small["light_dir_deg"]  # sun is high: arc < 90


def test_sphere_metrics_batched_mean(city):
    other = load_env(fixture_envs()["sunrise"])
    pred, gt = torch.stack([city, 2 * other]), torch.stack([other, other])
    batch = sphere_metrics(pred, gt)
    single = sphere_metrics(city, other)
    assert batch["diffuse"]["si_rmse"] == pytest.approx(single["diffuse"]["si_rmse"] / 2, rel=1e-3)


def test_sphere_loss_differentiable(city):
    gt = city[None]
    assert sphere_loss(gt, gt).item() == pytest.approx(0.0, abs=1e-7)
    pred = (0.5 * gt).requires_grad_()
    loss = sphere_loss(pred, gt)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0

"""Moving an env map's brightest light: where it lands, what it carries, what stays."""

import math

import pytest
import torch

from delit_cache.lighting.envmap import angles_to_direction, direction_grid, solid_angles
from delit_cache.lighting.sphere_metrics import angle_between_deg, brightest_direction
from delit_cache.lighting.steer import move_brightest_light, rotation_between


def _sun_map(direction: torch.Tensor, h: int = 64, w: int = 128) -> torch.Tensor:
    """A dim blue-grey sky with a small warm sun (a 6-degree Gaussian lobe) at ``direction``."""
    grid = direction_grid(h, w)
    cos = torch.einsum("chw,c->hw", grid, direction)
    sun = torch.exp((cos - 1) / (1 - math.cos(math.radians(6))))
    sky = torch.tensor([0.3, 0.35, 0.5])[:, None, None] * (1.2 + 0.3 * grid[1])
    return sky + torch.tensor([40.0, 30.0, 20.0])[:, None, None] * sun


def _direction(elevation_deg: float, azimuth_deg: float) -> torch.Tensor:
    return angles_to_direction(
        torch.tensor(math.radians(90 - elevation_deg)), torch.tensor(math.radians(azimuth_deg))
    ).float()


def _energy(env: torch.Tensor) -> torch.Tensor:
    return (env * solid_angles(*env.shape[-2:])).sum((-2, -1))


def test_rotation_between_takes_a_to_b_and_is_a_rotation():
    a = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    b = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    b[0] = a[0]  # coincident: the identity
    r = rotation_between(a, b)
    torch.testing.assert_close(torch.einsum("bij,bj->bi", r, a), b, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        r @ r.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(r[0], torch.eye(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("start", "target"), [((30, 40), (10, -100)), ((60, 170), (55, -170)), ((5, 0), (45, 90))]
)
def test_the_sun_lands_on_the_target_with_its_energy(start, target):
    env = _sun_map(_direction(*start))[None]
    goal = _direction(*target)[None]
    moved = move_brightest_light(env, goal)
    assert angle_between_deg(brightest_direction(moved), goal).item() < 2.0
    # radiance per direction travels with the light: total energy and colour kept
    torch.testing.assert_close(_energy(moved), _energy(env), rtol=0.02, atol=0)
    # far from both places the map is untouched
    grid = direction_grid(*env.shape[-2:])
    far = torch.ones(env.shape[-2:], dtype=torch.bool)
    for d in (_direction(*start), goal[0]):
        far &= torch.einsum("chw,c->hw", grid, d) < math.cos(math.radians(40))
    assert torch.equal(moved[0][:, far], env[0][:, far])
    assert torch.isfinite(moved).all() and moved.min() >= 0


def test_a_light_already_in_place_stays_put_and_each_map_has_its_own_target():
    suns = [_direction(30, 40), _direction(20, -120)]
    env = torch.stack([_sun_map(d) for d in suns])
    peaks = brightest_direction(env)
    same = move_brightest_light(env, peaks)
    torch.testing.assert_close(same, env, atol=1e-4, rtol=1e-4)
    swapped = move_brightest_light(env, peaks.flip(0))
    assert angle_between_deg(brightest_direction(swapped), peaks.flip(0)).max() < 2.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="target"):
        move_brightest_light(torch.ones(2, 3, 8, 16), torch.ones(1, 3))
    with pytest.raises(ValueError, match="env"):
        move_brightest_light(torch.ones(3, 8, 16), torch.ones(1, 3))


def test_a_light_left_dimmer_than_another_is_scaled_up_until_it_is_the_brightest():
    """A sun on a glow (which partly stays behind) moved into the dark, beside a second sun
    almost as bright: unscaled, the second sun stays the brightest spot; the boost makes the
    moved light the brightest at a small cost in energy, and never beyond ``max_boost``."""
    sun, other, goal = _direction(30, 40), _direction(20, -120), _direction(-10, 150)[None]
    grid = direction_grid(64, 128)

    def lobe(d, deg):
        return torch.exp(
            (torch.einsum("chw,c->hw", grid, d) - 1) / (1 - math.cos(math.radians(deg)))
        )

    env = (_sun_map(sun) + 5 * lobe(sun, 20) + 36 * lobe(other, 6))[None]
    assert angle_between_deg(brightest_direction(env), sun[None]).item() < 1.0
    plain = move_brightest_light(env, goal, max_boost=1.0)
    assert angle_between_deg(brightest_direction(plain), goal).item() > 60
    boosted = move_brightest_light(env, goal)
    assert angle_between_deg(brightest_direction(boosted), goal).item() < 2.0
    gain = _energy(boosted) / _energy(env)
    assert (gain > 1.005).all() and (gain < 1.05).all(), gain
    assert _energy(move_brightest_light(env, goal, max_boost=1.01)).sum() < _energy(boosted).sum()

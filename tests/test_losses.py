"""Training losses: targets computed once equal targets computed per step; the detail and
light-direction terms; the global-context block."""

from __future__ import annotations

import math

import numpy as np
import torch

from delit_cache.cache.store import LatentCache
from delit_cache.lighting.envmap import angles_to_direction
from delit_cache.lighting.sphere_metrics import brightest_direction
from delit_cache.models.config import DelitConfig
from delit_cache.models.heads import create_heads
from delit_cache.models.layers import GlobalContext
from delit_cache.train.batches import CacheData, Derived
from delit_cache.train.config import load_config
from delit_cache.train.losses import (
    compute_losses,
    detail_loss,
    direction_loss,
    env_nrmse_loss,
    loss_targets,
    nrmse_view,
    render_loss_spheres,
    soft_light_direction,
    sphere_losses,
    tone_diffuse_sphere,
)
from tests.test_train import make_random_cache


def _sun_env(theta: float, phi: float, h: int = 128, w: int = 256) -> torch.Tensor:
    """A dim sky with one bright 3x3-pixel sun at polar angle theta, azimuth phi."""
    env = torch.full((3, h, w), 0.2)
    r = min(h - 2, max(1, int(theta / math.pi * h)))
    c = int((phi + math.pi) / (2 * math.pi) * w) % w
    env[:, r - 1 : r + 2, [(c - 1) % w, c, (c + 1) % w]] = 500.0
    return env


def _cfg(**changes):
    base = {"sphere_diffuse_weight": 0.5, "sphere_matte_weight": 0.5, "sphere_colour_weight": 0.5}
    return load_config("tiny", {**base, **changes})


def test_targets_once_equal_targets_per_step():
    cfg = _cfg(
        light_dir_weight=0.3,
        flat_detail_weight=0.5,
        env_nrmse_weight=0.5,
        sphere_tone_colour_weight=1.0,
    )
    g = torch.Generator().manual_seed(0)
    heads = create_heads(cfg.heads_config(), seed=0)
    relit = torch.randn(3, 16, 4, 4, generator=g)
    flat = torch.randn(3, 16, 4, 4, generator=g)
    env = torch.rand(3, 3, 128, 256, generator=g) ** 4 * 20
    out = heads(relit)
    per_step = compute_losses(out, {"flat_latent": flat, "env": env}, cfg)
    once = compute_losses(out, {"flat_latent": flat, **loss_targets(env, cfg)}, cfg)
    expected = {"light_dir", "flat_detail", "sphere_diffuse", "env_nrmse", "sphere_tone_colour"}
    assert set(per_step) == set(once) >= expected
    for name in per_step:
        torch.testing.assert_close(per_step[name], once[name])


def test_cache_data_computes_targets_at_load_and_drops_env(tmp_path):
    cache = make_random_cache(tmp_path / "c.zarr", n=6)
    cfg = _cfg()
    fn = lambda env: loss_targets(env, cfg)  # noqa: E731
    derived = Derived(fn, keep_env=False)
    in_memory = CacheData(LatentCache(cache.path), list(range(6)), True, derived)
    streamed = CacheData(LatentCache(cache.path), list(range(6)), False, derived)
    pos = np.array([4, 1])
    a, b = in_memory.batch(pos, torch.device("cpu")), streamed.batch(pos, torch.device("cpu"))
    assert "env" not in a and set(a) == set(b) == {
        "relit_latent",
        "flat_latent",
        "env_code",
        "spheres",
    }
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    env = torch.from_numpy(cache.read("env", [4]))
    torch.testing.assert_close(a["env_code"][:1], loss_targets(env, cfg)["env_code"])


def test_cache_data_loads_in_chunks_and_says_what_it_holds(tmp_path, monkeypatch):
    """Loading chunk by chunk gives the arrays a single read gives; ``in_memory_bytes`` is
    what the arrays take (targets included, which outweigh the env maps); "auto" keeps the
    data on disk when that is over ``memory_fraction`` of the memory available."""
    from delit_cache.train import batches

    cache = LatentCache(make_random_cache(tmp_path / "c.zarr", n=7).path)
    cfg = _cfg(env_nrmse_weight=0.5)
    fn = lambda env: loss_targets(env, cfg)  # noqa: E731
    idx = np.arange(7)
    derived = batches.Derived(fn, keep_env=False)
    whole = batches._read(cache, idx, derived)
    chunked = batches._load(cache, idx, derived, chunk=3)
    assert set(chunked) == set(whole) >= {"env_code", "env_nrmse_view", "spheres"}
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name])  # BLAS sums per batch size
    empty = batches._load(cache, idx[:0], derived)  # an empty validation split
    assert all(len(t) == 0 for t in empty.values())
    held = sum(t.numel() * t.element_size() for t in chunked.values())
    assert batches.in_memory_bytes(cache, 7, derived) == held
    env_bytes = 7 * 4 * 3 * 128 * 256
    assert batches.in_memory_bytes(cache, 7, batches.Derived(fn)) == held + env_bytes
    assert held > env_bytes  # the targets outweigh the env maps they replace
    monkeypatch.setattr(batches, "available_memory", lambda: 4 * held)
    auto = load_config("tiny", {"in_memory": "auto", "memory_fraction": 0.5})
    assert batches.decide_in_memory(auto, held) and not batches.decide_in_memory(auto, 3 * held)
    forced = load_config("tiny", {"in_memory": "yes"})
    assert batches.decide_in_memory(forced, 3 * held)


def test_soft_light_direction_finds_the_sun():
    for theta, phi in [(0.6, 0.3), (1.4, -2.0), (2.2, 2.9)]:
        env = _sun_env(theta, phi)[None]
        true = angles_to_direction(torch.tensor(theta), torch.tensor(phi)).float()
        soft = soft_light_direction(env, sharpness=4.0)[0]
        assert math.degrees(math.acos(float((soft @ true).clamp(-1, 1)))) < 6.0
        hard = brightest_direction(env)[0]
        assert math.degrees(math.acos(float((soft @ hard).clamp(-1, 1)))) < 6.0


def test_soft_light_direction_follows_the_brightest_light_as_sharpness_grows():
    """A wide dim source holds most of the light, a small bright one the brightest pixels:
    at sharpness 1 the soft direction is the light's mass (near the wide source), at 16 it
    is the brightest light that the metric scores (``brightest_direction``)."""
    env = torch.full((3, 128, 256), 0.05)
    env[:, 40:90, 20:90] = 3.0  # wide source, left of the panorama centre
    env[:, 50:53, 190:193] = 40.0  # small bright lamp on the right
    env = env[None]
    hard = brightest_direction(env)[0]
    angle = {
        s: math.degrees(math.acos(float((soft_light_direction(env, s)[0] @ hard).clamp(-1, 1))))
        for s in (1.0, 16.0)
    }
    assert angle[1.0] > 60.0 and angle[16.0] < 5.0


def test_light_direction_loss_is_differentiable_and_orders_predictions():
    cfg = _cfg(light_dir_weight=1.0)
    target = loss_targets(_sun_env(1.0, 0.5)[None], cfg)["light_dir"]
    near = _sun_env(1.1, 0.6)[None].requires_grad_()
    far = _sun_env(2.0, -2.5)[None]
    err = [(1 - (soft_light_direction(e, 4.0) * target).sum(1)).mean() for e in (near, far)]
    assert float(err[0].detach()) < 0.02 < float(err[1])
    err[0].backward()
    assert near.grad is not None and near.grad.abs().sum() > 0


def test_env_nrmse_loss_tracks_the_mirror_sphere_nrmse():
    from delit_cache.lighting.envcode import decode_env, encode_env
    from delit_cache.lighting.sphere_metrics import sphere_errors

    g = torch.Generator().manual_seed(1)
    sky = torch.linspace(2.0, 0.2, 128)[:, None]  # brighter overhead, as the sky is

    def suns(offset):
        return torch.stack([_sun_env(0.4 + 0.3 * i + offset, -2.5 + 1.1 * i) for i in range(5)])

    true = suns(0.0) * sky * (0.5 + torch.rand(5, 3, 1, 1, generator=g))  # coloured
    target = nrmse_view(true)
    guesses = {
        "itself x 7": true * 7.0,  # the metric ignores exposure; so does the loss
        "blurred": torch.nn.functional.avg_pool2d(true, 5, 1, 2, count_include_pad=False),
        "the sun 6 deg off": suns(0.1) * sky,
        "another's light": true.roll(1, 0),
    }
    losses, metric = [], []
    for env in guesses.values():
        code = encode_env(env).requires_grad_()
        loss = env_nrmse_loss(decode_env(code), target)
        loss.backward()
        assert torch.isfinite(code.grad).all() and code.grad.abs().sum() > 0
        losses.append(float(loss.detach()))
        metric.append(float(sphere_errors(env, true)["mirror_nrmse"].mean()))
    assert losses[0] < 0.01 and metric[0] < 0.01
    assert np.argsort(losses).tolist() == np.argsort(metric).tolist() == [0, 1, 3, 2]


def test_sphere_renders_track_the_angular_metric_only_through_the_tone_curve():
    """The tone colour loss's renders (``tone_diffuse_sphere``) give the metric's diffuse angular
    error (the protocol tone-maps before it renders); from linear radiance a bright coloured
    source dominates the colour and the angle differs (``benchmarks/sphere_proxy.py``)."""
    import torch.nn.functional as F

    from delit_cache.lighting.sphere_metrics import sphere_errors

    g = torch.Generator().manual_seed(2)
    sky = torch.linspace(2.0, 0.2, 128)[:, None]
    true = torch.stack([_sun_env(0.5 + 0.4 * i, -2.0 + 1.3 * i) for i in range(4)]) * sky
    true = true * (0.5 + torch.rand(4, 3, 1, 1, generator=g))  # coloured skies and suns
    guess = true.roll(1, 0)
    metric = sphere_errors(guess, true)["diffuse_angular_deg"]
    angles = {}
    for tonemap in (False, True):
        if tonemap:  # the tone colour loss's render
            rp, rg = (tone_diffuse_sphere(m, 32, (32, 64)) for m in (guess, true))
        else:
            rp, rg = (render_loss_spheres(m, 32, (32, 64))[:, :, 0] for m in (guess, true))
        cos = (F.normalize(rp, dim=1) * F.normalize(rg, dim=1)).sum(1).clamp(-1, 1)
        angles[tonemap] = torch.rad2deg(torch.acos(cos)).mean(-1)
    torch.testing.assert_close(angles[True], metric, rtol=0.1, atol=0.2)
    assert float((angles[False] - metric).abs().max()) > 1.0


def test_tone_colour_loss_ranks_colour_casts_as_the_metric_does():
    """Under a bright white sun, a tinted sky costs the diffuse angular error about a hundred
    times more than an equally tinted sun (the protocol tone-maps before it renders); the
    tone colour term weighs the two as the metric does, while the linear colour term spends
    a quarter of its penalty on the sun's tint, which the metric hardly sees."""
    from delit_cache.lighting.sphere_metrics import sphere_errors

    true = torch.stack([_sun_env(0.6 + 0.5 * i, -1.5 + 1.2 * i) for i in range(3)])
    sun = true > 1.0
    true = torch.where(sun, true * 10.0, true)  # 5000 against a sky of 0.2
    tint = torch.tensor([1.0, 0.8, 0.6])[:, None, None]
    guesses = {
        "itself": true,
        "tinted sky": torch.where(sun, true, true * tint),
        "tinted sun": torch.where(sun, true * tint, true),
    }
    cfg = _cfg(sphere_tone_colour_weight=1.0)
    size, env_size = cfg.sphere_size, cfg.sphere_env_size
    targets = loss_targets(true, cfg)
    tone, linear, metric = {}, {}, {}
    for name, env in guesses.items():
        pred = env.clone().requires_grad_()
        loss = direction_loss(tone_diffuse_sphere(pred, size, env_size), targets["tone_sphere"])
        loss.backward()
        assert torch.isfinite(pred.grad).all()
        tone[name] = float(loss.detach())
        linear[name] = float(sphere_losses(env, targets["spheres"], size, env_size)["colour"])
        metric[name] = float(sphere_errors(env, true)["diffuse_angular_deg"].mean())
    assert tone["itself"] < 1e-5 and metric["itself"] < 1e-3
    assert metric["tinted sky"] > 2.0 > 50 * metric["tinted sun"]  # degrees
    assert tone["tinted sun"] < 0.02 * tone["tinted sky"]
    assert linear["tinted sun"] > 0.2 * linear["tinted sky"]


def test_env_nrmse_view_stays_bounded_on_a_flat_map_with_a_small_sun():
    view = nrmse_view(_sun_env(1.0, 0.5)[None])  # its 99.9th percentile is the flat sky
    assert torch.isfinite(view).all() and float(view.abs().max()) <= 20.0 + 1e-4


def test_light_head_loss_is_one_minus_cos_and_trains_the_head():
    cfg = _cfg(light_head_weight=2.0, model={**_cfg().model, "light_head": True})
    heads = create_heads(cfg.heads_config(), seed=0)
    env = torch.stack([_sun_env(1.0, 0.5), _sun_env(2.0, -2.5)])
    out = heads(torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(2)))
    batch = {"flat_latent": out["flat_latent"].detach(), **loss_targets(env, cfg)}
    losses = compute_losses(out, batch, cfg)
    cos = (out["light_dir"] * brightest_direction(env)).sum(1)
    torch.testing.assert_close(losses["light_head"], (1 - cos).mean())
    losses["light_head"].backward()
    assert heads.env_decoder.light_head.out[-1].weight.grad.abs().sum() > 0
    assert "light_head" not in compute_losses(out, batch, _cfg(model=cfg.model))


def test_detail_loss_ignores_offsets_and_sees_texture():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(2, 16, 8, 8, generator=g)
    assert float(detail_loss(target + 0.7, target, None)) < 1e-6
    noisy = target + 0.1 * torch.randn(2, 16, 8, 8, generator=g)
    assert float(detail_loss(noisy, target, None)) > 0.05
    std = torch.full((16,), 2.0)
    torch.testing.assert_close(
        detail_loss(noisy, target, std), detail_loss(noisy / 2, target / 2, None)
    )


def test_global_context_starts_as_identity_and_is_saved_in_the_config():
    block = GlobalContext(8)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), x)
    cfg = DelitConfig(
        feature_channels=8,
        extractor_width=16,
        extractor_blocks=2,
        flat_width=16,
        env_width=16,
        env_dim=32,
        env_heads=2,
        env_min_channels=4,
        global_context=True,
    )
    heads = create_heads(cfg, seed=0)
    assert sum(isinstance(m, GlobalContext) for m in heads.modules()) == 2
    assert DelitConfig.from_dict(cfg.to_dict()).global_context

"""Synthetic portraits: physics of the image model, determinism, shards that pass the check."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from cli.app import main
from delit_cache.lighting.envmap import rotate_env
from delit_cache.synth.compose import render_sample, render_scene, sample_scene
from delit_cache.synth.environments import KINDS, add_source, direction, procedural_env
from delit_cache.synth.geometry import SKIN
from delit_cache.synth.writer import encode_synth, synth
from delit_cache.utils.errors import DelitError

SIZE = 96
LUMA = torch.tensor([0.2126, 0.7152, 0.0722])


@pytest.fixture(autouse=True)
def one_thread():
    """Render with one torch thread, as synth workers do (many small ops: threads only cost)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frontal_scene(env: torch.Tensor, index: int = 1):
    """A scene posed straight at a centred camera, with the given env map."""
    sc = sample_scene(0, index, [])
    sub = dataclasses.replace(sc.subject, yaw=0.0, pitch=0.0, roll=0.0, body_yaw=0.0, body_roll=0.0)
    cam = dataclasses.replace(sc.camera, offset=(0.0, 0.0))
    return dataclasses.replace(sc, subject=sub, camera=cam, env=env)


def sun_env(azimuth: float) -> torch.Tensor:
    env = torch.full((3, 128, 256), 0.05)
    add_source(env, direction(azimuth, 10.0), 400.0, 5.0, torch.ones(3))
    return env


def face_halves(s, scene) -> tuple[float, float]:
    """Mean shading (relit / flat luminance) of the left and right half of the face."""
    from delit_cache.synth.geometry import trace

    g = trace(scene.subject, scene.camera, (SIZE, SIZE))
    face = (g.part == SKIN) & (g.local[2] > 0.3)
    ratio = (s.relit * LUMA[:, None, None]).sum(0) / (s.flat * LUMA[:, None, None]).sum(0)
    x = g.local[0]
    return float(ratio[face & (x < -0.1)].mean()), float(ratio[face & (x > 0.1)].mean())


def test_uniform_env_relit_is_flat_times_constant():
    scene = frontal_scene(torch.full((3, 128, 256), 0.7))
    s = render_scene(scene, SIZE, specular=False, exposure=False)
    assert s.mask.sum() > 0.2 * SIZE * SIZE
    assert torch.allclose(s.relit, 0.7 * s.flat, rtol=1e-3, atol=1e-5)
    # with exposure the constant is 0.7 * the exposure scale, for the whole image
    e = render_scene(scene, SIZE, specular=False, exposure=True)
    k = 0.7 * e.meta["exposure_scale"]
    assert torch.allclose(e.relit, k * e.flat, rtol=1e-3, atol=1e-5)
    assert torch.allclose(e.env, scene.env * e.meta["exposure_scale"])
    # AO darkens the flat image in cavities but never lightens it
    assert s.ao.min() < 0.9 and s.ao.max() <= 1.0


def test_uniform_env_with_specular_adds_light():
    scene = frontal_scene(torch.full((3, 128, 256), 0.7))
    spec = render_scene(scene, SIZE, specular=True, exposure=False)
    diff = render_scene(scene, SIZE, specular=False, exposure=False)
    inside = spec.mask[0] > 0.99
    extra = (spec.relit - diff.relit)[:, inside]
    assert extra.min() >= -1e-5 and extra.mean() > 0.0


def test_sun_on_plus_x_lights_the_right_half():
    scene = frontal_scene(sun_env(90.0))  # azimuth 90 = +x = camera right
    s = render_scene(scene, SIZE, specular=False, exposure=False)
    left, right = face_halves(s, scene)
    assert right > 1.5 * left


def test_rotating_the_env_moves_the_shading():
    env = sun_env(90.0)
    scene = frontal_scene(env)
    rot = frontal_scene(rotate_env(env, 180.0))  # the sun moves to -x
    a = render_scene(scene, SIZE, specular=False, exposure=False)
    b = render_scene(rot, SIZE, specular=False, exposure=False)
    left_a, right_a = face_halves(a, scene)
    left_b, right_b = face_halves(b, rot)
    assert left_b > 1.5 * right_b
    assert left_b == pytest.approx(right_a, rel=0.1) and right_b == pytest.approx(left_a, rel=0.1)
    # a quarter turn brings the sun toward the camera: the two halves are closer
    front = frontal_scene(rotate_env(env, 90.0))
    c = render_scene(front, SIZE, specular=False, exposure=False)
    left_c, right_c = face_halves(c, front)
    assert abs(right_c - left_c) / (right_c + left_c) < (right_a - left_a) / (right_a + left_a)


def test_determinism_for_a_seed():
    a, b = render_sample(3, 5, 64), render_sample(3, 5, 64)
    assert torch.equal(a.relit, b.relit) and torch.equal(a.env, b.env) and a.meta == b.meta
    c = render_sample(4, 5, 64)
    assert not torch.equal(a.relit, c.relit)
    assert encode_synth(3, 5, 64, []) == encode_synth(3, 5, 64, [])


def test_sample_ranges_and_metadata():
    s = render_sample(0, 2, 64)
    assert s.relit.shape == (3, 64, 64) and s.flat.shape == (3, 64, 64)
    assert s.env.shape == (3, 128, 256) and torch.isfinite(s.env).all() and s.env.min() >= 0
    assert 0.0 <= s.flat.min() and s.flat.max() <= 1.0
    assert s.mask.min() >= 0 and s.mask.max() <= 1
    for key in ("env_source", "exposure_scale", "skin_albedo", "yaw", "fov", "seed", "index"):
        assert key in s.meta
    assert all(0.01 <= v <= 0.8 for v in s.meta["skin_albedo"])


@pytest.mark.parametrize("kind", KINDS)
def test_procedural_envs_are_valid(kind):
    import numpy as np

    env = procedural_env(kind, np.random.default_rng(0))
    assert env.shape == (3, 128, 256) and torch.isfinite(env).all() and env.min() >= 0
    assert env.max() > 1.0  # every kind has a light brighter than its surroundings


def test_synth_writes_shards_that_pass_check(tmp_path, capsys):
    out = tmp_path / "shards"
    code = main(["synth", "--out", str(out), "--n", "3", "--size", "64", "--seed", "7",
                 "--shard-size", "2"])  # fmt: skip
    assert code == 0
    assert [p.name for p in sorted(out.glob("*.tar"))] == ["shard-000000.tar", "shard-000001.tar"]
    assert main(["data", "check", str(out)]) == 0
    assert "3 samples, 0 problems" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    assert main(["data", "sheet", str(out), "--out", str(sheet), "--n", "2", "--height", "32"]) == 0
    assert sheet.stat().st_size > 1000
    assert main(["synth", "--out", str(out), "--n", "1", "--size", "64"]) == 2  # has shards


def test_workers_do_not_change_the_bytes(tmp_path):
    one = synth(tmp_path / "one", 4, 48, seed=1, workers=1, progress=False)
    two = synth(tmp_path / "two", 4, 48, seed=1, workers=2, progress=False)
    assert one[0].read_bytes() == two[0].read_bytes()


@pytest.mark.parametrize(
    ("kw", "msg"), [({"n": 0}, "--n"), ({"size": 8}, "--size"), ({"workers": 0}, "--workers"),
                    ({"seed": -1}, "--seed"), ({"hdri_dir": "/nonexistent"}, "HDRI")]
)  # fmt: skip
def test_synth_bad_arguments(tmp_path, kw, msg):
    args = {"n": 1, "size": 64, **kw}
    with pytest.raises(DelitError, match=msg):
        synth(tmp_path / "o", progress=False, **args)


def test_hdri_selection_and_heldout_split():
    from delit_cache.synth.environments import HELDOUT_HDRIS, list_hdris

    every = {p.stem for p in list_hdris(None)}
    assert set(HELDOUT_HDRIS) <= every
    train = {p.stem for p in list_hdris(None, exclude=HELDOUT_HDRIS)}
    assert train == every - set(HELDOUT_HDRIS)
    assert {p.stem for p in list_hdris(None, include=HELDOUT_HDRIS)} == set(HELDOUT_HDRIS)
    with pytest.raises(ValueError, match="no HDRI named 'nope'"):
        list_hdris(None, exclude=["nope"])


def test_sample_env_draws_only_selected_hdris_and_records_mixes():
    from delit_cache.synth.environments import LightingOptions, list_hdris, sample_env

    hdris = list_hdris(None, include=["studio"])
    seen, mixes, tints = set(), 0, 0
    for i in range(40):
        env, meta = sample_env(np.random.default_rng(i), hdris, LightingOptions(p_hdri=1.0))
        assert env.shape == (3, 128, 256) and torch.isfinite(env).all() and env.min() >= 0
        seen.add(meta["env_source"])
        mixes += "env_mix" in meta
        tints += "env_tint" in meta
    assert seen == {"hdri:studio.exr"}
    assert 0 < mixes < 40 and 0 < tints < 40  # drawn with probabilities 0.35 and 0.5


def test_hdri_mirror_and_tilt_are_drawn_and_recorded_and_off_by_default():
    from delit_cache.synth.environments import LightingOptions, list_hdris, sample_env

    hdris = list_hdris(None, include=["sunrise"])
    plain = LightingOptions(p_hdri=1.0)
    varied = LightingOptions(p_hdri=1.0, p_mirror=0.5, max_tilt_deg=20.0)
    mirrored, tilts = 0, []
    for i in range(30):
        env, meta = sample_env(np.random.default_rng(i), hdris, varied)
        assert torch.isfinite(env).all() and env.min() >= 0
        mirrored += meta.get("env_mirror", False)
        tilts.append(meta["env_tilt"])
        base, base_meta = sample_env(np.random.default_rng(i), hdris, plain)
        assert "env_mirror" not in base_meta and "env_tilt" not in base_meta
        assert not torch.equal(env, base)
    assert 0 < mirrored < 30 and max(abs(t) for t in tilts) <= 20.0 and len(set(tilts)) == 30
    # at the defaults nothing extra is drawn: the stream after the HDRI is the older one's
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    sample_env(a, hdris, plain)
    sample_env(b, hdris, LightingOptions(p_hdri=1.0, p_mirror=0.0, max_tilt_deg=0.0))
    assert a.uniform() == b.uniform()


def test_one_source_rooms_put_the_light_at_any_height_and_keep_one_brightest():
    from delit_cache.lighting.sphere_metrics import brightest_direction
    from delit_cache.synth.environments import INDOOR_LAYOUTS

    def brightest_elevations(layout):
        envs = torch.stack([procedural_env("indoor", np.random.default_rng(i),
                                           indoor_layout=layout) for i in range(60)])  # fmt: skip
        return torch.rad2deg(torch.asin(brightest_direction(envs)[:, 1]))

    ceiling, one = brightest_elevations("ceiling"), brightest_elevations("one-source")
    # the first recipe's brightest light is a ceiling lamp 45-80 deg up unless the window wins;
    # the one-source rooms also put it low (windows, floor lamps) and higher up
    assert (ceiling < 30).float().mean() < 0.2 and (one < 30).float().mean() > 0.3
    assert one.max() > 80 and one.min() < 10
    with pytest.raises(ValueError, match="unknown indoor layout 'loft'"):
        procedural_env("indoor", np.random.default_rng(0), indoor_layout="loft")
    assert set(INDOOR_LAYOUTS) == {"ceiling", "one-source"}


def test_indoor_layout_changes_only_indoor_maps():
    from delit_cache.synth.environments import LightingOptions, sample_env

    plain, rooms = (
        LightingOptions(p_hdri=0.0),
        LightingOptions(p_hdri=0.0, indoor_layout="one-source"),
    )
    changed = 0
    for i in range(30):
        a, meta = sample_env(np.random.default_rng(i), [], plain)
        b, meta_b = sample_env(np.random.default_rng(i), [], rooms)
        indoor = "indoor" in meta["env_source"] or "indoor" in meta.get("env_mix", "")
        assert meta["env_source"] == meta_b["env_source"]
        assert torch.equal(a, b) != indoor
        changed += indoor
    assert changed > 0


def test_synth_lighting_options_are_validated(tmp_path):
    from delit_cache.synth.environments import packaged_hdri_dir
    from delit_cache.synth.writer import synth

    with pytest.raises(DelitError, match="p-hdri"):
        synth(tmp_path / "a", n=1, size=32, p_hdri=1.5, progress=False)
    with pytest.raises(DelitError, match="no HDRI named"):
        synth(tmp_path / "b", n=1, size=32, exclude_hdris=["nope"], progress=False)
    every = sorted(p.stem for p in packaged_hdri_dir().glob("*.exr"))
    with pytest.raises(DelitError, match="needs HDRIs"):
        synth(tmp_path / "c", n=1, size=32, exclude_hdris=every, p_hdri=1.0, progress=False)
    with pytest.raises(DelitError, match="--hdris names no HDRI"):
        synth(tmp_path / "c", n=1, size=32, hdris=[], progress=False)
    with pytest.raises(DelitError, match="p-mirror"):
        synth(tmp_path / "d", n=1, size=32, p_mirror=-0.1, progress=False)
    for tilt in (50.0, -1.0, float("nan")):
        with pytest.raises(DelitError, match="max-tilt"):
            synth(tmp_path / "e", n=1, size=32, max_tilt_deg=tilt, progress=False)
    with pytest.raises(DelitError, match="--indoor-layout must be one of ceiling, one-source"):
        synth(tmp_path / "f", n=1, size=32, indoor_layout="loft", progress=False)
    assert main(["synth", "--out", str(tmp_path / "g"), "--n", "1", "--size", "32",
                 "--indoor-layout", "attic"]) == 2  # fmt: skip
    assert not (tmp_path / "g").exists()


def test_other_background_keeps_the_scene_and_changes_only_the_background(tmp_path):
    from delit_cache.synth.environments import LightingOptions

    same = LightingOptions(p_hdri=0.0)
    other = LightingOptions(p_hdri=0.0, p_other_background=1.0)
    a = render_scene(sample_scene(3, 1, [], same), 64)
    b = render_scene(sample_scene(3, 1, [], other), 64)
    assert torch.equal(a.env, b.env) and torch.equal(a.flat, b.flat)
    assert "background_source" not in a.meta and b.meta["background_source"].startswith("proc")
    inside = (a.mask > 0.999).expand_as(a.relit)
    outside = (a.mask < 0.001).expand_as(a.relit)
    assert (a.relit - b.relit)[inside].abs().max() < 0.02  # the subject: lit by the same env
    diff = (a.relit - b.relit)[outside].abs().mean() / a.relit[outside].abs().mean()
    assert diff > 0.1  # the background: another env
    with pytest.raises(DelitError, match="p-other-background"):
        synth(tmp_path / "o", n=1, size=32, p_other_background=float("nan"), progress=False)


def test_an_interrupted_synth_resumes_to_the_same_shards(tmp_path, capsys):
    """Rerun with the same arguments, a synth keeps its complete shards and rewrites from the
    first missing or damaged one; the shards are those of an uninterrupted run."""
    args = ["--n", "5", "--size", "32", "--shard-size", "2", "--seed", "3"]
    assert main(["synth", "--out", str(tmp_path / "whole"), *args]) == 0
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    first = (cut / "shard-000000.tar").stat().st_mtime_ns
    data = (cut / "shard-000001.tar").read_bytes()
    (cut / "shard-000001.tar").write_bytes(data[: len(data) // 2])  # killed mid-shard
    (cut / "shard-000002.tar").unlink()
    assert main(["synth", "--out", str(cut), *args]) == 0
    for shard in sorted((tmp_path / "whole").glob("*.tar")):
        assert (cut / shard.name).read_bytes() == shard.read_bytes(), shard.name
    assert (cut / "shard-000000.tar").stat().st_mtime_ns == first  # kept, not rewritten
    assert main(["synth", "--out", str(cut), *args[:-1], "4"]) == 2  # another seed
    assert "of another synth run" in capsys.readouterr().err

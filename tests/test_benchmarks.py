"""The benchmark scripts run at the tiniest sizes, so they cannot rot: each must finish and
print its table with the expected columns and finite, positive measurements."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path = ROOT) -> str:
    env = os.environ | {"PYTHON": sys.executable}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _table(text: str) -> list[dict[str, str]]:
    """The first markdown table of ``text`` (``a | b`` rows under a ``--- | ---`` line)."""
    lines = [line for line in text.splitlines() if " | " in line]
    assert len(lines) >= 3, text
    header = [c.strip() for c in lines[0].split("|")]
    assert set(lines[1].replace("|", "").split()) == {"---"}
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _positive(value: str) -> float:
    number = float(value.replace("%", ""))
    assert math.isfinite(number) and number > 0, value
    return number


def _header_ok(text: str) -> None:
    for field in ("- date: ", "- machine: ", "- command: ", "- load average"):
        assert field in text, field


def test_infer_cpu_table(tmp_path):
    out = tmp_path / "infer.md"
    text = _run(
        [
            sys.executable,
            "benchmarks/infer_cpu.py",
            "--size",
            "64",
            "--runs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert out.read_text() == text
    _header_ok(text)
    rows = _table(text)
    first_words = ["lazy", "plain", "lazy,", "lazy,", "import", "model"]
    assert [r["path"].split(" ")[0] for r in rows] == first_words
    for row in rows:
        _positive(row["wall_median_s"])
        if not row["path"].startswith("model"):
            _positive(row["wall_min_s"]), _positive(row["cpu_median_s"])


def test_encode_pipeline_table(tmp_path):
    out = tmp_path / "encode.md"
    args = ["--n", "4", "--size", "32", "--batch-size", "2", "--block-size", "2"]
    text = _run(
        [
            sys.executable,
            "benchmarks/encode_pipeline.py",
            *args,
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    assert out.read_text() == text
    _header_ok(text)
    assert "identical arrays from both paths: yes" in text
    rows = _table(text)
    assert [r["path"].split(" ")[0] for r in rows] == ["plain", "pipelined"]
    for row in rows:
        for col in ("wall_s", "decode_s", "encode_s", "write_s", "img_per_s"):
            _positive(row[col])
        assert 0 < _positive(row["encoder_share"]) <= 100
        assert row["limiting"] in ("encode", "decode", "write")


def test_gpu_all_smoke_writes_every_table(tmp_path):
    text = _run(["bash", "benchmarks/gpu_all.sh", "--smoke", str(tmp_path)])
    assert f"tables in {tmp_path}" in text
    names = sorted(p.name for p in tmp_path.glob("*.md"))
    assert names == ["encode-float32.md", "encode-pipeline-float32.md", "infer-float32.md"]
    enc = _table((tmp_path / "encode-float32.md").read_text())
    assert [r["path"] for r in enc] == ["plain", "fold", "fold+cl", "fold+cl+compile"]
    for row in enc:
        _positive(row["img_per_s"])
        assert float(row["rel_err_vs_fp32_plain"]) < 1e-4  # float32 on CPU: rounding only
    inf = _table((tmp_path / "infer-float32.md").read_text())
    assert [(r["path"], r["batch"]) for r in inf] == [
        ("plain", "1"),
        ("fast", "1"),
        ("fast+compile", "1"),
    ]
    for row in inf:
        _positive(row["ms_per_img"])
        assert float(row["flat_rel"]) < 1e-4 and float(row["env_rel"]) < 1e-4
    for name in names:
        _header_ok((tmp_path / name).read_text())


@pytest.mark.parametrize(
    "script, args",
    [
        ("bench_vae.py", ["--vae", "demo", "--device", "cpu", "--dtype", "float32", "--size", "32", "--batch", "1", "--iters", "1"]),
        ("bench_infer.py", ["--vae", "demo", "--device", "cpu", "--size", "32", "--warmup", "0", "--iters", "1"]),
    ],
)  # fmt: skip
def test_older_speed_benchmarks_still_run(script, args):
    text = _run([sys.executable, f"benchmarks/{script}", *args])
    numbers = [
        float(t)
        for line in text.splitlines()
        for t in line.replace("|", " ").split()
        if _is_number(t)
    ]
    assert numbers and all(math.isfinite(n) for n in numbers)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def test_flat_error_split_table(tmp_path):
    from cli.app import main

    data = tmp_path / "val"
    assert main(["synth", "--out", str(data), "--n", "2", "--size", "64", "--seed", "3"]) == 0
    text = _run(
        [sys.executable, "benchmarks/flat_error_split.py", "--data", str(data), "--limit", "2"]
    )
    _header_ok(text)
    (row,) = _table(text)
    assert row["n"] == "2"
    assert 0.0 <= float(row["background share"]) <= 1.0
    for key in ("PSNR", "subject PSNR", "low-pass PSNR", "texture-only PSNR", "codec ceiling"):
        _positive(row[key])


def test_flat_error_split_of_a_perfect_prediction():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fes", ROOT / "benchmarks/flat_error_split.py")
    fes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fes)
    import torch

    gt = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 20, 20)
    mask[..., 5:15, 5:15] = 1
    perfect = fes.split_errors(gt, gt, mask, radius=2)
    assert perfect["background share"] == 0.0 and perfect["PSNR"] == 100.0
    off = gt.clone()
    off[..., :2, :] = 1 - off[..., :2, :]  # wrong only in the background rows
    assert fes.split_errors(off, gt, mask, radius=2)["background share"] > 0.99


def test_heldout_table_of_two_evals(tmp_path):
    """The eval JSONs side by side, in delit's protocol and in the reference one, with the
    count of sphere metrics that beat the mean map."""
    import json

    def block(value: float, matte: str = "matte") -> dict:
        spheres = {"si_rmse": value, "angular_deg": value, "nrmse": value}
        return {"diffuse": spheres, matte: spheres, "mirror": spheres, "light_dir_deg": value}

    def result(value: float) -> dict:
        model = block(value) | {"flat_psnr": 20.0 + value, "flat_ssim": 0.9}
        reference = {
            "model": block(value, "matte_silver"),
            "baseline_mean_env": block(1.0, "matte_silver"),
        }
        return {
            "n": 4,
            "model": model,
            "baseline_mean_env": block(1.0),
            "baseline_input_as_flat": {"flat_psnr": 9.0, "flat_ssim": 0.5},
            "codec_ceiling": {"flat_psnr": 35.0, "flat_ssim": 0.97},
            "reference_protocol": reference,
        }

    paths = []
    for name, value in (("good", 0.5), ("bad", 2.0)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(result(value)))
        paths += ["--eval", f"{name}={path}"]
    rows = {
        r["metric"]: r
        for r in _table(_run([sys.executable, "benchmarks/heldout_table.py", *paths]))
    }
    assert (
        rows["flat-lit PSNR (dB)"]["good"] == "20.50"
        and rows["flat-lit PSNR (dB)"]["free baseline"] == "9.00"
    )
    assert rows["sphere metrics beating the mean map"]["good"] == "9 of 9"
    assert rows["sphere metrics beating the mean map"]["bad"] == "0 of 9"
    text = _run(
        [sys.executable, "benchmarks/heldout_table.py", "--protocol", "diffusionlight", *paths]
    )
    rows = {r["metric"]: r for r in _table(text)}
    assert "flat-lit PSNR (dB)" not in rows
    assert (
        rows["matte nRMSE"]["good"] == "0.500"
        and rows["EnvMapNet light error (deg)"]["bad"] == "2.0"
    )
    assert rows["sphere metrics beating the mean map"]["good"] == "9 of 9"


def test_light_split_table(tmp_path):
    """Per env source rows for the true light itself (error 0), the first moment, the heads
    and the mean map; a map lit by one small light has its first moment on that light, and
    a light overhead counts as near the zenith."""
    from cli.app import main

    data, cache = tmp_path / "val", tmp_path / "val.zarr"
    synth = ["synth", "--out", str(data), "--n", "3", "--size", "64", "--seed", "3"]
    assert main(synth) == 0
    encode = ["encode", "--vae", "demo", "--data", str(data), "--out", str(cache), "--size", "64"]
    assert main([*encode, "--device", "cpu"]) == 0
    script = [sys.executable, "benchmarks/light_split.py", "--cache", str(cache)]
    text = _run([*script, "--data", str(data), "--eval", "shipped=demo"])
    _header_ok(text)
    rows = _table(text)
    estimates = {r["estimate"] for r in rows}
    assert estimates == {
        "true map's brightest light",
        "true map's first moment",
        "shipped",
        "shipped, first moment",
        "mean env map (shipped)",
        "true map through cos^1",
        "true map through cos^1, camera side",
        "true map through cos^8",
        "true map through cos^32",
    }
    for row in rows:
        assert 0.0 <= float(row["mean error (deg)"]) <= 180.0
        assert 0.0 <= float(row["share < 30 deg"]) <= 1.0
        assert 0.0 <= float(row["share near the zenith"]) <= 1.0
        if row["estimate"] == "true map's brightest light":
            assert float(row["mean error (deg)"]) < 0.01 and row["share < 30 deg"] == "1.00"
    assert (
        sum(
            int(r["n"])
            for r in rows
            if r["estimate"] == "shipped" and not r["env source"].startswith("all")
        )
        == 3
    )
    sides = [r for r in rows if r["estimate"] == "shipped" and r["env source"].startswith("all, ")]
    assert sum(int(r["n"]) for r in sides) == 3  # camera side and behind: every sample once
    for bad in ("shipped", "shipped=" + str(tmp_path / "missing")):  # one line, exit 2
        done = subprocess.run(
            [*script, "--data", str(data), "--eval", bad], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2 and done.stderr.strip().startswith("error: ")
        assert "Traceback" not in done.stderr

    import numpy as np
    import torch

    import benchmarks.light_split as ls

    env = torch.full((1, 3, 32, 64), 1e-3)
    env[..., 10, 40] = 1e4
    from delit_cache.lighting.sphere_metrics import brightest_direction

    assert ls.angle_deg(ls.first_moment(env), brightest_direction(env))[0] < 3.0
    up, level = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    groups = {"all": np.ones(2, bool)}
    (row,) = ls.rows_for("x", torch.cat([up, level]), torch.cat([level, level]), groups)
    assert row[-1] == "0.50" and row[3] == "45.0"  # one of two near the zenith; (90 + 0) / 2

    # the lobe bounds: one small light is found by every lobe; behind the subject (-z) the
    # camera side only reaches the rim; a wide dim source beside a small bright lamp draws
    # the diffuse peak, a narrow lobe the lamp
    from delit_cache.lighting.envmap import direction_grid

    dirs = direction_grid(32, 64).flatten(1)
    lamp_front = torch.full((1, 3, 32, 64), 1e-3)
    lamp_front[..., 12, 4] = 1e4  # z > 0 (camera side)
    true_dir = dirs[:, 12 * 64 + 4][None]
    assert dirs[2, 12 * 64 + 4] > 0.3
    for n in (1, 8, 32):
        assert ls.angle_deg(ls.lobe_peaks(lamp_front, n, True), true_dir)[0] < 6.0
    lamp_back = torch.full((1, 3, 32, 64), 1e-3)
    lamp_back[..., 16, 32] = 1e4  # straight behind the subject: -z
    rim = ls.lobe_peaks(lamp_back, 1, True)
    assert abs(float(rim[0, 2])) < 0.1 and ls.lobe_peaks(lamp_back, 1, False)[0, 2] < -0.95
    mixed = torch.full((1, 3, 32, 64), 1e-3)
    mixed[..., 8:24, 40:56] = 1.0  # a wide source around +x
    mixed[..., 16, 16] = 100.0  # a small lamp around -x
    lamp_dir = dirs[:, 16 * 64 + 16][None]
    assert ls.angle_deg(ls.lobe_peaks(mixed, 1, False), lamp_dir)[0] > 90.0
    assert ls.angle_deg(ls.lobe_peaks(mixed, 32, False), lamp_dir)[0] < 6.0


def test_sphere_proxy_table(tmp_path):
    """Each guess (with --checkpoint, the heads' too) on both spheres, with the metric's mean
    and the linear and tone-mapped renders' means; a bad --n is one error line."""
    from delit_cache.models.heads import create_heads
    from tests.test_train import make_random_cache

    cache = make_random_cache(tmp_path / "c.zarr", n=4)
    heads = create_heads(seed=0)
    heads.save_pretrained(tmp_path / "heads")
    script = [sys.executable, "benchmarks/sphere_proxy.py", "--cache", str(cache.path)]
    text = _run([*script, "--checkpoint", str(tmp_path / "heads")])
    _header_ok(text)
    rows = _table(text)
    assert len(rows) == 10 and {r["sphere"] for r in rows} == {"diffuse", "matte"}
    heads = f"heads {tmp_path / 'heads'}"
    assert {r["guess"] for r in rows} >= {"the mean map", heads, f"{heads}, true overall colour"}
    for row in rows:
        for col in ("metric mean (deg)", "linear renders (deg)", "x**(1/2.4) renders (deg)"):
            assert 0.0 <= float(row[col]) <= 180.0
    bad = subprocess.run([*script, "--n", "1"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --n 1: must be >= 2"


def test_with_true_colour_takes_the_true_maps_channel_shares():
    import torch

    from benchmarks.sphere_proxy import with_true_colour
    from delit_cache.lighting.envmap import env_energy

    gen = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(2, 3, 8, 16, generator=gen), torch.rand(2, 3, 8, 16, generator=gen)
    gt[1, 2] *= 3.0  # a blue light
    fixed = with_true_colour(pred, gt)
    share = env_energy(fixed) / env_energy(fixed).sum(1, keepdim=True)
    assert torch.allclose(share, env_energy(gt) / env_energy(gt).sum(1, keepdim=True), atol=1e-5)
    same = with_true_colour(gt, gt)
    assert torch.allclose(same, gt, atol=1e-5)


def test_nrmse_proxy_table(tmp_path):
    """Three guesses at three proxy sizes, each with the proxy's and the metric's means;
    too few maps is one error line."""
    from tests.test_train import make_random_cache

    cache = make_random_cache(tmp_path / "c.zarr", n=4)
    script = [sys.executable, "benchmarks/nrmse_proxy.py", "--cache", str(cache.path)]
    text = _run(script)
    _header_ok(text)
    rows = _table(text)
    assert len(rows) == 9 and {r["n"] for r in rows} == {"4"}
    assert {r["proxy size"] for r in rows} == {"32 x 64", "64 x 128", "128 x 256"}
    for row in rows:
        assert 0.0 <= float(row["proxy mean"]) and 0.0 <= float(row["metric mean"])
    bad = subprocess.run([*script, "--n", "1"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --n 1: must be >= 2"


def test_train_memory_table(tmp_path):
    """One row: the estimate equals what is held, the peak is at least that; a missing
    config is one error line."""
    from tests.test_train import make_random_cache

    cache = make_random_cache(tmp_path / "c.zarr", n=5)
    script = [sys.executable, "benchmarks/train_memory.py", "--cache", str(cache.path)]
    text = _run([*script, "--config", "tiny"])
    _header_ok(text)
    (row,) = _table(text)
    assert row["samples"] == "5" and row["estimate (MiB)"] == row["held (MiB)"]
    assert float(row["peak RSS (MiB)"]) >= float(row["held (MiB)"]) > 0.0
    bad = subprocess.run(
        [*script, "--config", str(tmp_path / "none.yaml")], cwd=ROOT, capture_output=True, text=True
    )
    assert (
        bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    )


def test_view_averaging_matches_infer_and_moves_back():
    """The 'plain' and 'mirror' view sets are exactly ``DelitModel.infer`` without and with
    ``flip_average``; a shifted copy moved back lines up with the photo away from the border."""
    import torch

    import benchmarks.view_averaging as va
    from delit_cache.infer.delighter import load_vae_and_model

    model, *_ = load_vae_and_model("demo", "demo", "cpu", "float32", 64)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for name, flip in (("plain", False), ("mirror", True)):
        ours, theirs = va.infer_views(model, images, name), model.infer(images, flip_average=flip)
        torch.testing.assert_close(ours["flat"], theirs["flat"])
        torch.testing.assert_close(ours["env"], theirs["env"])
    for view in va._views("mirror-shift", 3):
        back = va._from_view(va._to_view(images, view), view)
        torch.testing.assert_close(back[..., 3:-3, 3:-3], images[..., 3:-3, 3:-3])
    assert len(va._views("mirror-shift", 3)) == 4 and va._views("plain", 3) == [(False, 0)]


def test_view_averaging_table(tmp_path):
    import json

    from cli.app import main

    data = tmp_path / "val"
    assert main(["synth", "--out", str(data), "--n", "2", "--size", "64", "--seed", "3"]) == 0
    script = [sys.executable, "benchmarks/view_averaging.py", "--checkpoint", "demo"]
    args = ["--vae", "demo", "--data", str(data), "--views", "plain,latent-mirror,shift"]
    text = _run([*script, *args, "--json", str(tmp_path / "v.json")])
    _header_ok(text)
    rows = {r["view set"]: r for r in _table(text)}
    assert list(rows) == ["plain", "latent-mirror", "shift"]
    assert [rows[k]["copies"] for k in rows] == ["1", "2", "2"]
    for row in rows.values():
        assert 0.0 < float(row["flat PSNR"]) < 100.0 and 0.0 <= float(row["light dir"]) <= 180.0
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["plain"]["n"] == 2
    for extra, message in (
        (["--views", "mirrors"], "unknown ['mirrors']"),
        (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
        (["--views", "plain", "--data", str(tmp_path / "none")], "no such shard"),
        (["--views", "plain", "--json", str(tmp_path)], "Is a directory"),
    ):
        bad = subprocess.run([*script, *args[:4], *extra], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stdout and not bad.stderr.strip()


def test_colour_split_table(tmp_path):
    """The mean map and each --eval's heads, over all samples and per env source (sources
    with one sample left out), with the angle as scored, with each image's own colour and
    with one colour for the set; bad --n, --eval and --out are one error line each."""
    from cli.app import main

    data, cache = tmp_path / "val", tmp_path / "val.zarr"
    assert main(["synth", "--out", str(data), "--n", "6", "--size", "64", "--seed", "3"]) == 0
    encode = ["encode", "--vae", "demo", "--data", str(data), "--out", str(cache), "--size", "64"]
    assert main([*encode, "--device", "cpu"]) == 0
    script = [sys.executable, "benchmarks/colour_split.py", "--cache", str(cache)]
    out = tmp_path / "t.md"
    text = _run([*script, "--data", str(data), "--eval", "shipped=demo", "--out", str(out)])
    _header_ok(text)
    assert out.read_text() == text
    rows = _table(text)
    alls = [r for r in rows if r["env source"] == "all"]
    assert [r["guess"] for r in alls] == ["the mean map", "shipped"]
    assert all(r["n"] == "6" for r in alls)
    per_source = [r for r in rows if r["guess"] == "shipped" and r["env source"] != "all"]
    assert per_source and all(int(r["n"]) >= 2 for r in per_source)
    assert sum(int(r["n"]) for r in per_source) <= 6
    for row in rows:
        assert 0.0 < float(row["diffuse angle (deg)"]) <= 180.0
        assert 0.0 <= float(row["with each image's own colour (deg)"]) <= 180.0
        assert 0.0 <= float(row["with one colour for the set (deg)"]) <= 180.0
    assert alls[0]["chromaticity correlation R / G / B"] == "- / - / -"
    for args, line in (
        (["--n", "1"], "error: --n 1: must be >= 2"),
        (["--eval", "nocheckpoint"], "error: --eval 'nocheckpoint': expected NAME=CHECKPOINT"),
        (["--out", str(tmp_path)], f"error: {tmp_path}: Is a directory"),
    ):
        bad = subprocess.run([*script, *args], cwd=ROOT, capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.strip() == line


def test_colour_split_separates_a_colour_cast_from_a_layout_error():
    """A guess that is the true map under another white balance loses its whole angle to the
    per-image colour; a guess that is the true map turned about the vertical keeps it."""
    import torch

    from benchmarks.colour_split import split_row

    gen = torch.Generator().manual_seed(0)
    sky = torch.rand(3, 3, 16, 32, generator=gen) * torch.tensor([0.4, 0.6, 1.0])[:, None, None]
    sky[:, :, 4:6, 8:10] += torch.tensor([40.0, 30.0, 20.0])[:, None, None]  # a warm sun
    cast = split_row(sky * torch.tensor([1.3, 1.0, 0.7])[:, None, None], sky)
    assert cast["scored"] > 1.0 and cast["own"] < 0.01 and cast["shared"] < 0.01
    assert torch.allclose(torch.tensor(cast["gain"]).prod(), torch.tensor(1.0), atol=1e-5)
    turned = split_row(sky.roll(16, dims=-1), sky)
    assert turned["own"] > 0.5 * turned["scored"] > 0.1


def test_light_head_step_table(tmp_path):
    out = tmp_path / "light.md"
    script = "benchmarks/bench_light_head.py"
    args = ["--device", "cpu", "--batch-size", "2", "--latent-size", "8", "--steps", "1"]
    text = _run([sys.executable, script, *args, "--out", str(out)])
    assert text == out.read_text()
    _header_ok(text)
    rows = _table(text)
    assert [r["path"] for r in rows] == ["plain", "fast"]
    for row in rows:
        _positive(row["ms_per_step"])
        _positive(row["samples_s"])
    _positive(rows[1]["inputs_ms_per_sample"])

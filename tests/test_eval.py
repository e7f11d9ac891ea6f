"""delit eval: JSON shape, baselines, the identity start of untrained heads, bad checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cli.app import main
from delit_cache.models import DelitConfig, create_heads, create_model_and_transforms
from delit_cache.models.pretrained import save_heads
from delit_cache.utils.errors import DelitError

SMALL = DelitConfig(extractor_width=32, extractor_blocks=1, flat_width=32, env_width=32, env_dim=64)
SIZE = 64  # sample and model size
N_SAMPLES = 2

ENV_BLOCK = {
    "diffuse": {"si_rmse", "angular_deg", "nrmse"},
    "matte": {"si_rmse", "angular_deg", "nrmse"},
    "mirror": {"si_rmse", "angular_deg", "nrmse"},
    "light_dir_deg": None,
}
DOCUMENTED = {
    "n": None,
    "model": {"flat_psnr": None, "flat_ssim": None, **ENV_BLOCK},
    "codec_ceiling": {"flat_psnr": None},
    "baseline_input_as_flat": {"flat_psnr": None, "flat_ssim": None},
    "baseline_mean_env": ENV_BLOCK,
}


def smooth_image(gen: torch.Generator, size: int = SIZE) -> torch.Tensor:
    """A smooth random image [3,S,S] in [0,1] (upsampled noise: something a codec can keep)."""
    low = torch.rand(1, 3, 8, 8, generator=gen)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic")
    return up[0].clamp(0, 1)


def random_env(gen: torch.Generator) -> torch.Tensor:
    """A [3,128,256] linear HDR map: dim sky plus one bright spot at a random place."""
    env = 0.2 + 0.3 * torch.rand(3, 1, 1, generator=gen).expand(3, 128, 256).clone()
    i, j = (torch.randint(10, 118, (1,), generator=gen).item(),
            torch.randint(0, 250, (1,), generator=gen).item())  # fmt: skip
    env[:, i : i + 4, j : j + 6] = 50.0
    return env


def make_samples(n: int = N_SAMPLES, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for k in range(n):
        flat = smooth_image(gen)
        ramp = torch.linspace(0.3, 1.2, SIZE).view(1, 1, SIZE)  # light from the right
        relit = (flat * ramp * (0.6 + 0.4 * torch.rand(3, 1, 1, generator=gen))).clamp(0, 1)
        samples.append({"key": f"s{k}", "relit": relit, "flat": flat, "env": random_env(gen)})
    return samples


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return make_samples()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, samples):
    from delit_cache.data.shards import ShardWriter, encode_sample

    out = tmp_path_factory.mktemp("eval_shards")
    with ShardWriter(out, shard_size=2) as writer:
        for s in samples:
            writer.write(encode_sample(s["key"], s["relit"], s["flat"], s["env"]))
    return out


@pytest.fixture(scope="module")
def stored(shards) -> list[dict]:
    """The samples as read back from the shards (8-bit PNG, half-float EXR)."""
    from delit_cache.data.shards import iter_samples

    return list(iter_samples(shards))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    save_heads(create_heads(SMALL, seed=0), run / "heads.safetensors", extra={"image_size": SIZE})
    return run


@pytest.fixture(scope="module")
def eval_json(run_dir, shards, tiny_vae_pth, tmp_path_factory):
    """Run ``delit eval`` once through the CLI; return (exit code, JSON, stdout, stderr)."""
    out = tmp_path_factory.mktemp("eval_out") / "result.json"
    args = ["eval", "--checkpoint", str(run_dir), "--vae", str(tiny_vae_pth)]
    args += ["--data", str(shards), "--json", str(out), "--device", "cpu", "--batch-size", "2"]
    args += ["--report", str(out.parent / "report"), "--examples", "2"]
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)
    data = json.loads(out.read_text()) if out.exists() else None
    return code, data, stdout.getvalue(), stderr.getvalue()


def _check_shape(data: dict, shape: dict, where: str = "") -> None:
    for key, sub in shape.items():
        assert key in data, f"missing {where}{key}"
        if isinstance(sub, dict):
            assert set(data[key]) >= set(sub), f"{where}{key}: {sorted(data[key])}"
            _check_shape(data[key], sub, f"{where}{key}.")
        elif isinstance(sub, set):
            assert set(data[key]) == sub, f"{where}{key}: {sorted(data[key])}"
            assert all(math.isfinite(v) for v in data[key].values()), f"{where}{key}"
        else:
            assert isinstance(data[key], (int, float)) and math.isfinite(data[key]), (
                f"{where}{key} = {data[key]!r}"
            )


def test_eval_json_has_the_documented_shape(eval_json):
    code, data, stdout, _ = eval_json
    assert code == 0
    _check_shape(data, DOCUMENTED)
    assert data["n"] == N_SAMPLES
    assert data["image_size"] == SIZE  # from the heads' metadata
    # The nested blocks hold exactly the documented keys (extra keys only at the top level).
    for block in ("model", "baseline_input_as_flat", "baseline_mean_env"):
        assert set(data[block]) == set(DOCUMENTED[block])
    assert set(data["codec_ceiling"]) >= {"flat_psnr"}
    assert "evaluated data" in data["mean_env_source"]
    assert "no mean_env.exr" in stdout  # the fallback is said in the output
    assert "PSNR (dB)" in stdout and "mirror si-RMSE" in stdout


def test_eval_report_shows_the_examples_and_the_table(eval_json, tmp_path_factory):
    from PIL import Image

    code, data, stdout, _ = eval_json
    assert code == 0
    report = Path(stdout.strip().splitlines()[-1].split(" and ")[-1]).parent
    png = Image.open(report / "report.png")
    assert png.height > 2 * 64 and png.width > 5 * 64  # two rows of five panels
    html = (report / "report.html").read_text()
    assert f"{data['model']['flat_psnr']:.2f}" in html and "data:image/png;base64," in html


def test_eval_table_is_aligned(eval_json):
    _, _, stdout, _ = eval_json
    rows = [line for line in stdout.splitlines() if line.startswith("  ")]
    assert len(rows) >= 12
    assert len({len(r.rstrip()) for r in rows if "ceiling" not in r}) == 1


def test_baseline_input_as_flat_matches_direct_computation(eval_json, stored):
    from delit_cache.evaluate.image_metrics import flat_psnr_ssim

    _, data, _, _ = eval_json
    scores = [flat_psnr_ssim(s["relit"], s["flat"]) for s in stored]
    psnr = sum(float(p) for p, _ in scores) / len(scores)
    ssim = sum(float(q) for _, q in scores) / len(scores)
    assert data["baseline_input_as_flat"]["flat_psnr"] == pytest.approx(psnr, abs=1e-3)
    assert data["baseline_input_as_flat"]["flat_ssim"] == pytest.approx(ssim, abs=1e-4)


def test_untrained_flat_output_is_the_input_through_the_codec(eval_json, stored, tiny_vae):
    from delit_cache.evaluate.image_metrics import flat_psnr_ssim

    _, data, _, _ = eval_json
    relit = torch.stack([s["relit"] for s in stored])
    flat = torch.stack([s["flat"] for s in stored])
    coded_relit, coded_flat = tiny_vae.roundtrip(relit), tiny_vae.roundtrip(flat)
    model = [flat_psnr_ssim(c, f)[0] for c, f in zip(coded_relit, flat, strict=True)]
    ceiling = [flat_psnr_ssim(c, f)[0] for c, f in zip(coded_flat, flat, strict=True)]
    assert data["model"]["flat_psnr"] == pytest.approx(sum(model) / len(model), abs=1e-2)
    assert data["codec_ceiling"]["flat_psnr"] == pytest.approx(
        sum(ceiling) / len(ceiling), abs=1e-2
    )
    # the codec loses something, and the untrained model is not the input baseline
    assert data["codec_ceiling"]["flat_psnr"] < 60
    assert data["model"]["flat_psnr"] != pytest.approx(data["baseline_input_as_flat"]["flat_psnr"])


def test_evaluate_mean_env_baseline_matches_sphere_metrics(samples, tiny_vae):
    """The given mean env is the baseline; its scores equal ``sphere_metrics`` computed
    directly, and the true env of a sample as the 'mean' scores perfectly on that sample."""
    from delit_cache.evaluate.evaluate import evaluate
    from delit_cache.lighting.sphere_metrics import sphere_metrics

    model, _ = create_model_and_transforms(tiny_vae, create_heads(SMALL, seed=0), image_size=SIZE)
    mean = samples[1]["env"]
    result = evaluate(model, samples, mean, image_size=SIZE, batch_size=2)
    assert result["n"] == 2 and result["mean_env_source"] == "training cache"
    direct = sphere_metrics(
        mean[None].expand(2, -1, -1, -1), torch.stack([s["env"] for s in samples])
    )
    base = result["baseline_mean_env"]
    for sphere in ("diffuse", "matte", "mirror"):
        for key in ("si_rmse", "angular_deg", "nrmse"):
            assert base[sphere][key] == pytest.approx(direct[sphere][key], rel=1e-4, abs=1e-6)
    assert base["light_dir_deg"] == pytest.approx(direct["light_dir_deg"], abs=1e-3)
    assert base["diffuse"]["si_rmse"] > 1e-3  # sample 0 differs from the 'mean'
    assert result["model"]["mirror"]["si_rmse"] > 1e-3  # random heads are not perfect


def test_evaluate_reference_protocol_block_matches_diffusionlight_metrics(samples, tiny_vae):
    """The ``reference_protocol`` block is ``lighting.protocol``'s scores, and the existing
    blocks keep exactly their keys."""
    from delit_cache.evaluate.evaluate import evaluate, format_table
    from delit_cache.lighting.protocol import diffusionlight_metrics

    model, _ = create_model_and_transforms(tiny_vae, create_heads(SMALL, seed=0), image_size=SIZE)
    mean = samples[1]["env"]
    result = evaluate(model, samples, mean, image_size=SIZE, batch_size=2)
    direct = diffusionlight_metrics(
        mean[None].expand(2, -1, -1, -1), torch.stack([s["env"] for s in samples])
    )
    base = result["reference_protocol"]["baseline_mean_env"]
    for sphere in ("diffuse", "matte_silver", "mirror"):
        for key in ("si_rmse", "angular_deg", "nrmse"):
            assert base[sphere][key] == pytest.approx(direct[sphere][key], rel=1e-4, abs=1e-6)
    assert base["light_pairs"] == direct["light_pairs"]
    assert set(result["baseline_mean_env"]) == set(DOCUMENTED["baseline_mean_env"])
    assert "diffusionlight protocol" in format_table(result)


def test_evaluate_flip_average_is_recorded_and_changes_the_scores(samples, tiny_vae):
    from delit_cache.evaluate.evaluate import evaluate, format_table

    model, _ = create_model_and_transforms(tiny_vae, create_heads(SMALL, seed=0), image_size=SIZE)
    mean = samples[1]["env"]
    plain = evaluate(model, samples, mean, image_size=SIZE, batch_size=2)
    avg = evaluate(model, samples, mean, image_size=SIZE, batch_size=2, flip_average=True)
    assert plain["flip_average"] is False and avg["flip_average"] is True
    assert "flip-average on" in format_table(avg) and "flip-average" not in format_table(plain)
    assert avg["model"]["flat_psnr"] != plain["model"]["flat_psnr"]
    assert avg["baseline_mean_env"] == plain["baseline_mean_env"]  # baselines do not change


def test_evaluate_rejects_no_samples(tiny_vae):
    from delit_cache.evaluate.evaluate import evaluate

    model, _ = create_model_and_transforms(tiny_vae, create_heads(SMALL, seed=0), image_size=SIZE)
    with pytest.raises(DelitError, match="no samples"):
        evaluate(model, [], None)


def test_eval_reads_mean_env_beside_the_checkpoint(run_dir, tmp_path, samples, tiny_vae_pth):
    from delit_cache.data.imageio import write_exr
    from delit_cache.infer.delighter import resolve_checkpoint

    heads_file = tmp_path / "heads.safetensors"
    heads_file.write_bytes((run_dir / "heads.safetensors").read_bytes())
    write_exr(tmp_path / "mean_env.exr", samples[0]["env"])
    heads, mean_env, info = resolve_checkpoint(heads_file)
    assert mean_env is not None and mean_env.shape == (3, 128, 256)
    assert torch.allclose(mean_env, samples[0]["env"], rtol=1e-2)
    assert info["image_size"] == SIZE and info["mean_env"].endswith("mean_env.exr")
    assert heads.config == SMALL


def _run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["vae_weights", "garbage", "missing", "empty_run"])
def test_bad_checkpoint_exits_2_with_one_line(kind, tmp_path, tiny_vae, shards, capsys):
    from delit_cache.vae import save_codec

    if kind == "vae_weights":
        ckpt = save_codec(tiny_vae, tmp_path / "vae.safetensors")
        needle = "VAE weights"
    elif kind == "garbage":
        ckpt = tmp_path / "heads.safetensors"
        ckpt.write_bytes(b"\x00\x01garbage" * 50)
        needle = "not a readable safetensors file"
    elif kind == "missing":
        ckpt, needle = tmp_path / "nope.safetensors", "no such checkpoint"
    else:
        ckpt, needle = tmp_path, "run folder without heads.safetensors"
    code, err = _run_cli(
        ["eval", "--checkpoint", str(ckpt), "--vae", "unused", "--data", str(shards)], capsys
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_demo_checkpoint_missing_is_a_clear_error(monkeypatch, tmp_path):
    from delit_cache.infer import delighter as inference

    monkeypatch.setattr(
        inference,
        "_demo_files",
        lambda: (tmp_path / "demo_heads.safetensors", tmp_path / "demo_mean_env.exr"),
    )
    with pytest.raises(DelitError, match="demo: the packaged demo checkpoint"):
        inference.resolve_checkpoint("demo")


def test_vae_fingerprint_mismatch_warns_in_one_line(tmp_path, tiny_vae, caplog):
    from delit_cache.infer.delighter import load_vae_and_model

    path = tmp_path / "heads.safetensors"
    save_heads(create_heads(SMALL, seed=0), path, extra={"vae_fingerprint": "0123456789abcdef"})
    *_, info = load_vae_and_model(path, tiny_vae, "cpu")
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("delit")]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("warning: ") and "0123456789abcdef" in warnings[0]
    assert info["vae_warning"] == warnings[0]
    caplog.clear()
    save_heads(create_heads(SMALL, seed=0), path, extra={"vae_fingerprint": tiny_vae.fingerprint})
    load_vae_and_model(path, tiny_vae, "cpu")
    assert not [r for r in caplog.records if r.name.startswith("delit")]


def _strict_json(path: Path) -> dict:
    """``path`` parsed as JSON proper: NaN and Infinity refused."""

    def refuse(name: str):
        raise ValueError(f"{name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_undefined_light_error_is_null_in_the_json(run_dir, tiny_vae_pth, tmp_path, capsys):
    """Uniform env maps have no detected light: the EnvMapNet light error is undefined (null,
    ``-`` in the table), not NaN, which is not JSON."""
    from delit_cache.data.shards import ShardWriter, encode_sample

    gen = torch.Generator().manual_seed(3)
    with ShardWriter(tmp_path / "d", shard_size=2) as writer:
        for k in range(2):
            flat = smooth_image(gen)
            writer.write(encode_sample(f"u{k}", flat, flat, torch.ones(3, 128, 256)))
    out = tmp_path / "ev.json"
    args = ["eval", "--checkpoint", str(run_dir), "--vae", str(tiny_vae_pth), "--device", "cpu"]
    assert main([*args, "--data", str(tmp_path / "d"), "--json", str(out)]) == 0
    ref = _strict_json(out)["reference_protocol"]
    assert ref["model"]["light_dir_deg"] is None and ref["model"]["light_pairs"] == 0
    assert ref["baseline_mean_env"]["light_dir_deg"] is None
    row = next(r for r in capsys.readouterr().out.splitlines() if "EnvMapNet light" in r)
    assert row.split()[-3:] == ["-", "-", "-"]


def test_envmetrics_json_without_light_pairs_is_null(tmp_path):
    import numpy as np

    from delit_cache.data.imageio import write_exr

    env = tmp_path / "u.exr"
    write_exr(env, np.ones((64, 128, 3), np.float32))
    out = tmp_path / "s.json"
    args = ["envmetrics", str(env), str(env), "--protocol", "diffusionlight", "--json", str(out)]
    assert main(args) == 0
    scores = _strict_json(out)
    assert scores["light_dir_deg"] is None and scores["light_pairs"] == 0


def test_write_json_refuses_nan_and_writes_nothing(tmp_path):
    from delit_cache.utils.atomic import write_json

    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(tmp_path / "x.json", {"a": float("nan")})
    assert list(tmp_path.iterdir()) == []

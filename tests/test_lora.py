"""Scheme B: LoRA adapters on the frozen Wan decoder (delit_cache/vae/lora.py, train-lora,
merge-lora, --lora for eval), on the tests' tiny random VAE."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from cli.app import main
from delit_cache.models import DelitConfig, create_heads
from delit_cache.models.pretrained import save_heads
from delit_cache.utils.errors import DelitError
from delit_cache.vae import load_wan_vae
from delit_cache.vae.lora import (
    LoraSpec,
    add_lora,
    apply_lora_file,
    lora_layers,
    lora_parameters,
    lora_state,
    merge_lora,
    read_lora,
    save_lora,
)

SMALL = DelitConfig(extractor_width=32, extractor_blocks=1, flat_width=32, env_width=32, env_dim=64)
SIZE = 64


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def latents(seed: int = 0, n: int = 2, hw: int = 4) -> torch.Tensor:
    return torch.randn(n, 16, hw, hw, generator=torch.Generator().manual_seed(seed))


def randomise_adapters(vae, seed: int = 0, std: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(vae):
            p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture()
def vae(tiny_vae_pth):
    return load_wan_vae(tiny_vae_pth)  # a fresh copy: the tests change it


def test_fresh_adapters_are_an_exact_noop(vae):
    z = latents()
    before = vae.decode(z, clamp=False)
    vae.fast_single_frame = False  # DiffSynth's own path (with its frame cache) too
    before_shipped = vae.decode(z, clamp=False)
    vae.fast_single_frame = True
    add_lora(vae, LoraSpec())
    assert lora_layers(vae)
    assert torch.equal(vae.decode(z, clamp=False), before)
    vae.fast_single_frame = False
    assert torch.equal(vae.decode(z, clamp=False), before_shipped)


def test_targets_by_type_without_time_conv_and_rank_alpha(vae):
    from delit_cache.vae.diffsynth_wan import CausalConv3d

    plain = [
        n
        for n, m in vae.model.decoder.named_modules()
        if isinstance(m, CausalConv3d | torch.nn.Conv2d) and not n.endswith("time_conv")
    ]
    time_convs = [n for n, _ in vae.model.decoder.named_modules() if n.endswith("time_conv")]
    assert time_convs, "the decoder should have temporal upsampling convs"
    spec = add_lora(vae, LoraSpec(rank=4, alpha=8))
    assert set(spec.targets) == set(plain)
    adapted = {n for n, _ in lora_layers(vae)}
    assert adapted == set(plain)
    for name in time_convs:  # left as they were: no adapter, nothing trainable
        module = vae.model.decoder.get_submodule(name)
        assert type(module).__name__ == "FoldedCausalConv3d"
        assert not any(p.requires_grad for p in module.parameters())
    for _, layer in lora_layers(vae):
        assert layer.r["default"] == 4 and layer.scaling["default"] == 2.0
        assert layer.lora_A["default"].weight.shape[0] == 4
    trainable = {n for n, p in vae.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


def test_adapters_run_as_2d_for_one_frame_like_the_shipped_path(vae):
    add_lora(vae, LoraSpec(rank=4, alpha=4))
    randomise_adapters(vae)
    z = latents(1)
    fast = vae.decode(z, clamp=False)
    vae.fast_single_frame = False
    shipped = vae.decode(z, clamp=False)
    rel = (fast - shipped).abs().max() / shipped.abs().max()
    assert rel < 1e-5
    vae.fast_single_frame = True
    assert not torch.equal(fast, load_wan_vae_like(vae).decode(z, clamp=False))


def load_wan_vae_like(vae):
    return load_wan_vae(vae.source)


def test_merged_equals_unmerged_within_1e5(vae, tmp_path):
    spec = add_lora(vae, LoraSpec(rank=8, alpha=16))
    randomise_adapters(vae, seed=3)
    z = latents(2)
    unmerged = vae.decode(z, clamp=False)
    base_keys = set(load_wan_vae_like(vae).model.state_dict())
    adapters = save_lora(vae, spec, tmp_path / "lora.safetensors")
    assert merge_lora(vae) == len(spec.targets)
    assert not lora_layers(vae)
    assert set(vae.model.state_dict()) == base_keys  # a plain decoder again
    merged = vae.decode(z, clamp=False)
    assert (merged - unmerged).abs().max() < 1e-5
    # the command: a merged VAE file that loads with --vae and decodes the same
    out = tmp_path / "merged.safetensors"
    code, _, err = run_cli("merge-lora", "--vae", vae.source, "--lora", adapters, "--out", out)
    assert code == 0, err
    from_file = load_wan_vae(out).decode(z, clamp=False)
    assert (from_file - unmerged).abs().max() < 1e-5


def test_adapter_file_round_trip_holds_only_adapters(vae, tmp_path):
    spec = add_lora(vae, LoraSpec(rank=4, alpha=4))
    randomise_adapters(vae, seed=5)
    z = latents(4)
    want = vae.decode(z, clamp=False)
    path = save_lora(vae, spec, tmp_path / "a.safetensors")
    read_spec, state, meta = read_lora(path)
    assert read_spec == spec and meta["vae_fingerprint"] == vae.fingerprint
    assert set(state) == set(lora_state(vae)) and all(".lora_" in k for k in state)
    fresh = load_wan_vae_like(vae)
    apply_lora_file(fresh, path)
    assert torch.equal(fresh.decode(z, clamp=False), want)


def _bad_files(vae, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    from safetensors.torch import save_file

    spec = add_lora(vae, LoraSpec(rank=4, alpha=4))
    good = save_lora(vae, spec, tmp_path / "good.safetensors")
    _, state, meta = read_lora(good)
    files = {}
    heads = tmp_path / "heads.safetensors"
    save_heads(create_heads(SMALL, seed=0), heads)
    files["heads file"] = (heads, "not a delit LoRA adapter file")
    extra = dict(state, **{"decoder.conv1.weight": torch.zeros(3)})
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=meta)
    files["extra tensor"] = (tmp_path / "extra.safetensors", "not LoRA adapters")
    save_file(state, str(tmp_path / "rank.safetensors"), metadata=dict(meta, rank="8"))
    files["rank contradicted"] = (tmp_path / "rank.safetensors", "the file says rank 8")
    other = dict(meta, vae_fingerprint="0123456789abcdef")
    save_file(state, str(tmp_path / "other.safetensors"), metadata=other)
    files["another VAE"] = (tmp_path / "other.safetensors", "adapters for another VAE")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00not safetensors at all")
    files["garbage"] = (tmp_path / "garbage.safetensors", "not a safetensors file")
    files["missing"] = (tmp_path / "nope.safetensors", "no such LoRA adapter file")
    return files


def test_bad_adapter_files_are_refused_in_one_line(vae, tmp_path, tiny_vae_pth):
    files = _bad_files(vae, tmp_path)
    heads_dir = tmp_path / "run"
    save_heads(create_heads(SMALL, seed=0), heads_dir / "heads.safetensors", {"image_size": SIZE})
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (SIZE, SIZE), (120, 90, 60)).save(photo)
    for name, (path, needle) in files.items():
        with pytest.raises(DelitError, match=needle):
            apply_lora_file(load_wan_vae(tiny_vae_pth), path)
        code, _, err = run_cli("infer", photo, "--checkpoint", heads_dir, "--vae", tiny_vae_pth,
                               "--out", tmp_path / f"o_{name}", "--lora", path, "--device", "cpu")  # fmt: skip
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], (name, err)
        assert "Traceback" not in err
        assert not (tmp_path / f"o_{name}").exists() or not any((tmp_path / f"o_{name}").iterdir())


# ----------------------------------------------------------------------------------------------
# delit train-lora


@pytest.fixture(scope="module")
def lora_data(tmp_path_factory):
    """Four tiny samples in a shard and heads for them (model size 64)."""
    from test_eval import make_samples

    from delit_cache.data.shards import ShardWriter, encode_sample

    root = tmp_path_factory.mktemp("lora_data")
    with ShardWriter(root / "shards", shard_size=4) as writer:
        for s in make_samples(4, seed=1):
            writer.write(encode_sample(s["key"], s["relit"], s["flat"], s["env"]))
    heads = root / "heads"
    save_heads(create_heads(SMALL, seed=0), heads / "heads.safetensors", {"image_size": SIZE})
    return root / "shards", heads


def _train(lora_data, vae_path, out, *extra):
    shards, heads = lora_data
    args = ["train-lora", "--checkpoint", heads, "--vae", vae_path, "--data", shards, "--out", out]
    args += ["--batch-size", "2", "--lora-rank", "4", "--device", "cpu", "--no-progress", *extra]
    return run_cli(*args)


def test_train_lora_two_steps_then_eval_with_lora(lora_data, tiny_vae_pth, tmp_path):
    run = tmp_path / "run"
    code, out, err = _train(lora_data, tiny_vae_pth, run, "--steps", "2")
    assert code == 0, err
    assert "2 steps done" in out
    for name in ("config.yaml", "lora.safetensors", "heads.safetensors", "checkpoints/latest.pt"):
        assert (run / name).is_file(), name
    spec, state, _meta = read_lora(run / "lora.safetensors")
    assert spec.rank == 4 and spec.alpha == 16.0
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in state)
    assert any(v.abs().max() > 0 for k, v in state.items() if "lora_B" in k)  # it trained
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 2 and set(ckpt["lora"]) == set(state)
    shards, _ = lora_data
    result = tmp_path / "eval.json"
    code, _, err = run_cli("eval", "--checkpoint", run, "--vae", tiny_vae_pth, "--data", shards,
                           "--lora", run / "lora.safetensors", "--json", result, "--device", "cpu")  # fmt: skip
    assert code == 0, err
    data = json.loads(result.read_text())
    assert data["lora"]["rank"] == 4 and data["n"] == 4


def test_train_lora_resume_is_exact_and_refuses_another_rank(lora_data, tiny_vae_pth, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(lora_data, tiny_vae_pth, straight, "--steps", "4", "--train-heads")[0] == 0
    assert _train(lora_data, tiny_vae_pth, split, "--steps", "2", "--train-heads")[0] == 0
    code, _, err = _train(lora_data, tiny_vae_pth, split, "--steps", "4", "--resume")
    assert code == 0, err
    a = read_lora(straight / "lora.safetensors")[1]
    b = read_lora(split / "lora.safetensors")[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from delit_cache.models.pretrained import load_heads

    ha, hb = load_heads(straight).state_dict(), load_heads(split).state_dict()
    assert all(torch.equal(ha[k], hb[k]) for k in ha)
    start = load_heads(lora_data[1]).state_dict()
    assert not torch.equal(ha["flat_proj.delta.weight"], start["flat_proj.delta.weight"])
    code, _, err = _train(lora_data, tiny_vae_pth, split, "--steps", "6", "--resume",
                          "--lora-rank", "8")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--lora-rank 8" in err
    code, _, err = _train(lora_data, tiny_vae_pth, split, "--steps", "6")
    assert code == 2 and "holds a run already" in err


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--lora-rank", "0", "--lora-rank 0: must be >= 1"),
        ("--lora-alpha", "-1", "--lora-alpha -1.0: must be a finite number > 0"),
        ("--mixed-precision", "fp16", "--mixed-precision fp16: expected no or bf16"),
        ("--steps", "0", "--steps 0: must be >= 1"),
    ],
)
def test_train_lora_bad_numbers_are_one_line(
    lora_data, tiny_vae_pth, tmp_path, flag, value, needle
):
    code, _, err = _train(lora_data, tiny_vae_pth, tmp_path / "run", flag, value)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "run").exists()


def test_merge_lora_refuses_an_output_that_is_not_safetensors(tiny_vae_pth, tmp_path):
    code, _, err = run_cli("merge-lora", "--vae", tiny_vae_pth, "--lora", tmp_path / "a.safetensors",
                           "--out", tmp_path / "merged.pth")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "merged.pth" in err
    assert not (tmp_path / "merged.pth").exists()


def test_train_lora_from_a_cache_matches_encoding_on_the_fly(lora_data, tiny_vae_pth, tmp_path):
    shards, _ = lora_data
    cache = tmp_path / "cache.zarr"
    code, _, err = run_cli("encode", "--vae", tiny_vae_pth, "--data", shards, "--out", cache,
                           "--size", SIZE, "--device", "cpu", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert _train(lora_data, tiny_vae_pth, tmp_path / "a", "--steps", "2")[0] == 0
    code, _, err = _train(lora_data, tiny_vae_pth, tmp_path / "b", "--steps", "2", "--cache", cache)
    assert code == 0, err
    a = read_lora(tmp_path / "a" / "lora.safetensors")[1]
    b = read_lora(tmp_path / "b" / "lora.safetensors")[1]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert any(b[k].abs().max() > 0 for k in b if "lora_B" in k)
    # a cache of this data at another model size is refused before anything is written
    save_heads(create_heads(SMALL, seed=0), tmp_path / "other" / "heads.safetensors",
               {"image_size": 2 * SIZE})  # fmt: skip
    code, _, err = _train(lora_data, tiny_vae_pth, tmp_path / "c", "--steps", "2", "--cache",
                          cache, "--checkpoint", tmp_path / "other")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "image size 64" in err, err
    assert not (tmp_path / "c").exists()

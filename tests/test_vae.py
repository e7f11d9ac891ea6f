"""Loading the Wan 2.1 VAE in every form, rejecting bad files, and the batched codec helpers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from delit_cache.utils.errors import DelitError
from delit_cache.vae import (
    WAN21_LATENT_MEAN,
    WAN21_LATENT_STD,
    WanVAE,
    load_wan_vae,
    save_codec,
)

TINY_VAE_DIM = 8  # width of the tiny model built in conftest.py
FORMS = [
    "folder",
    "pth",
    "wrapped_state_dict",
    "wrapped_model_state",
    "legacy_pth",
    "safetensors",
    "safetensors_folder",
    "prefixed_pth",
    "prefixed_safetensors",
]
BAD = [
    "wan22",
    "wan21_layout_z48",
    "dit",
    "dit_safetensors",
    "t5",
    "truncated",
    "random_bytes",
    "truncated_safetensors",
    "missing_key",
    "misshapen",
    "pickled_object",
    "folder_without_vae",
    "does_not_exist",
]


def _images(batch: int = 2, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def reference_latents(tiny_vae) -> torch.Tensor:
    return tiny_vae.encode(_images())


@pytest.mark.parametrize("form", FORMS)
def test_every_form_loads_the_same_model(form, tiny_vae_forms, tiny_vae, reference_latents):
    vae = load_wan_vae(tiny_vae_forms[form])
    assert isinstance(vae, WanVAE)
    assert (vae.dim, vae.z_dim, vae.scale_factor) == (TINY_VAE_DIM, 16, 8)
    assert vae.fingerprint == tiny_vae.fingerprint
    assert vae.num_params == tiny_vae.num_params
    assert torch.equal(vae.encode(_images()), reference_latents)


@pytest.mark.parametrize("name", BAD)
def test_bad_files_are_rejected_with_a_clear_message(name, bad_vae_files):
    path, needles = bad_vae_files[name]
    with pytest.raises(DelitError) as info:
        load_wan_vae(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_fingerprint_is_short_hex_and_tracks_the_weights(tiny_vae_state, tmp_path, tiny_vae):
    fp = tiny_vae.fingerprint
    assert len(fp) == 16 and int(fp, 16) >= 0
    changed = dict(tiny_vae_state)
    changed["conv2.bias"] = changed["conv2.bias"] + 1e-3
    torch.save(changed, tmp_path / "Wan2.1_VAE.pth")
    assert load_wan_vae(tmp_path).fingerprint != fp


def test_frozen_and_always_eval(tiny_vae_pth):
    vae = load_wan_vae(tiny_vae_pth)
    assert all(not p.requires_grad for p in vae.parameters())
    parent = torch.nn.Sequential(vae, torch.nn.Linear(2, 2))
    parent.train()
    assert parent[1].training
    assert not vae.training
    assert not any(m.training for m in vae.modules())


def test_gradients_reach_latents_not_weights(tiny_vae):
    latents = tiny_vae.encode(_images(1)).requires_grad_(True)
    out = tiny_vae.decode(latents, clamp=False)
    (out**2).mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert torch.isfinite(latents.grad).all()
    assert all(p.grad is None and not p.requires_grad for p in tiny_vae.parameters())


def test_shapes_padding_and_crop(tiny_vae):
    x = _images(1, 70, 90)
    z = tiny_vae.encode(x)
    assert z.shape == (1, 16, 9, 12) and z.dtype == torch.float32
    assert tiny_vae.decode(z).shape == (1, 3, 72, 96)
    out = tiny_vae.decode(z, size=(70, 90))
    assert out.shape == (1, 3, 70, 90)
    assert out.min() >= 0 and out.max() <= 1
    assert tiny_vae.roundtrip(x).shape == x.shape
    padded = F.pad(x, (0, 6, 0, 2), mode="replicate")
    assert torch.equal(tiny_vae.encode(padded), z)
    assert tiny_vae.latent_size(70, 90) == (9, 12)
    assert tiny_vae.encode(_images(1, 64, 64)).shape == (1, 16, 8, 8)


def test_bad_tensor_arguments(tiny_vae):
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        tiny_vae.encode(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B,16,H,W\]"):
        tiny_vae.decode(torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        tiny_vae.decode(torch.zeros(1, 16, 4, 4), size=(40, 32))


def _count_conv3d(monkeypatch) -> list[int]:
    calls = [0]
    original = F.conv3d

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv3d", counting)
    return calls


def test_fast_path_matches_diffsynth_and_skips_conv3d(tiny_vae_pth, monkeypatch):
    fast = load_wan_vae(tiny_vae_pth, fast_single_frame=True)
    slow = load_wan_vae(tiny_vae_pth, fast_single_frame=False)
    x = _images(2, 48, 40, seed=3)
    calls = _count_conv3d(monkeypatch)
    z_fast = fast.encode(x)
    out_fast = fast.decode(z_fast, clamp=False)
    assert calls[0] == 0  # every causal conv ran as a 2-D conv
    z_slow = slow.encode(x)
    out_slow = slow.decode(z_fast, clamp=False)
    assert calls[0] > 0
    assert _rel(z_fast, z_slow) < 1e-5
    assert _rel(out_fast, out_slow) < 1e-5
    # DiffSynth's own calls with the Wan scale: same normalisation convention as ours
    mean, inv_std = torch.tensor(WAN21_LATENT_MEAN), 1 / torch.tensor(WAN21_LATENT_STD)
    model = slow.model
    ref_z = model.encode((x * 2 - 1).unsqueeze(2), [mean, inv_std])[:, :, 0]
    ref_out = model.decode(z_fast.unsqueeze(2), [mean, inv_std])[:, :, 0]
    model.clear_cache()
    assert _rel(z_fast, ref_z) < 1e-5
    assert _rel(out_fast, (ref_out + 1) / 2) < 1e-5


def test_folded_conv_falls_back_for_video_and_cache():
    from delit_cache.vae.diffsynth_wan import CausalConv3d, FoldedCausalConv3d, fold_single_frame

    torch.manual_seed(0)
    conv = CausalConv3d(4, 5, 3, padding=1)
    x1, x3, cache = (
        torch.randn(2, 4, 1, 9, 7),
        torch.randn(2, 4, 3, 9, 7),
        torch.randn(2, 4, 2, 9, 7),
    )
    expected = [conv(x1), conv(x3), conv(x1, cache)]
    assert fold_single_frame(conv) == 1 and isinstance(conv, FoldedCausalConv3d)
    got = [conv(x1), conv(x3), conv(x1, cache)]
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        assert _rel(a, b) < 1e-5


def test_bfloat16_runs_and_is_close_to_float32(tiny_vae_pth, tiny_vae):
    vae = load_wan_vae(tiny_vae_pth, dtype="bfloat16")
    assert vae.dtype == torch.bfloat16 and vae.mean.dtype == torch.float32
    assert torch.allclose(vae.mean, torch.tensor(WAN21_LATENT_MEAN))
    x = _images(1)
    z = vae.encode(x)
    assert z.dtype == torch.float32
    assert _rel(z, tiny_vae.encode(x)) < 0.1
    out = vae.decode(z)
    assert out.dtype == torch.float32
    assert _rel(out, tiny_vae.decode(z)) < 0.1


def test_to_keeps_latent_stats_exact(tiny_vae_pth):
    vae = load_wan_vae(tiny_vae_pth).to(torch.bfloat16)
    assert vae.dtype == torch.bfloat16
    assert vae.mean.dtype == torch.float32
    assert torch.equal(vae.std, torch.tensor(WAN21_LATENT_STD))


def test_wan_constants_match_diffsynth(monkeypatch):
    import diffsynth.models.wan_video_vae as wvv

    monkeypatch.setattr(wvv, "VideoVAE_", lambda **_: torch.nn.Module())  # skip the 127 M init
    ref = wvv.WanVideoVAE()
    assert torch.equal(ref.mean, torch.tensor(WAN21_LATENT_MEAN))
    assert torch.equal(ref.std, torch.tensor(WAN21_LATENT_STD))


def test_save_codec_and_demo_source(tiny_vae, tmp_path, monkeypatch):
    from safetensors import safe_open

    import delit_cache.vae.loader as loader

    mean = [0.1 * i for i in range(16)]
    std = [1.0 + 0.05 * i for i in range(16)]
    path = save_codec(
        tiny_vae,
        tmp_path / "demo_codec.safetensors",
        {"note": "test"},
        latent_mean=mean,
        latent_std=std,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_codec.safetensors"]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["delit_codec"])
    assert meta["format"] == config["format"] == "delit-demo-codec"
    assert (config["dim"], config["z_dim"], config["note"]) == (TINY_VAE_DIM, 16, "test")
    monkeypatch.setattr(loader, "demo_codec_path", lambda: path)
    demo = load_wan_vae("demo")
    assert demo.fingerprint == tiny_vae.fingerprint  # same weights, stored as float32
    assert torch.allclose(demo.mean, torch.tensor(mean)) and torch.allclose(
        demo.std, torch.tensor(std)
    )
    x = _images(1)
    # same weights, other normalisation: the decoded image of an encoded image is unchanged
    assert torch.allclose(demo.roundtrip(x), tiny_vae.roundtrip(x), atol=1e-5)
    assert not torch.allclose(demo.encode(x), tiny_vae.encode(x))


def test_save_codec_float16_storage_loads_as_float32(tiny_vae, tmp_path):
    full = save_codec(tiny_vae, tmp_path / "full.safetensors")
    half = save_codec(tiny_vae, tmp_path / "half.safetensors", storage_dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    vae = load_wan_vae(half)
    assert vae.dtype == torch.float32
    x = _images(1)
    assert torch.allclose(vae.roundtrip(x), tiny_vae.roundtrip(x), atol=2e-2)


def test_demo_missing_says_not_installed(tmp_path, monkeypatch):
    import delit_cache.vae.loader as loader

    monkeypatch.setattr(loader, "demo_codec_path", lambda: tmp_path / "demo_codec.safetensors")
    with pytest.raises(DelitError, match="demo codec is not installed"):
        load_wan_vae("demo")


def test_bad_device_and_dtype(tiny_vae_pth):
    with pytest.raises(DelitError, match="expected one of float32, bfloat16"):
        load_wan_vae(tiny_vae_pth, dtype="float16")
    if not torch.cuda.is_available():
        with pytest.raises(DelitError, match="CUDA is not available"):
            load_wan_vae(tiny_vae_pth, device="cuda")


def test_importing_the_module_does_not_import_diffsynth():
    code = "import sys, delit_cache.vae; assert 'diffsynth' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compiled_codec_runs_fixed_chunks_and_matches(tiny_vae_pth, tiny_vae):
    """compile_codec pads short batches to its chunk size and cuts them off again (the
    graph backend 'eager' keeps the test fast; inductor compiles the same graphs)."""
    vae = load_wan_vae(tiny_vae_pth).compile_codec(batch_size=2, backend="eager")
    x = _images(3)  # one full chunk and one padded chunk
    z = vae.encode(x)
    torch.testing.assert_close(z, tiny_vae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vae.decode(z), tiny_vae.decode(z), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        vae.compile_codec(batch_size=0)


def test_channels_last_gives_the_same_codec(tiny_vae_pth, tiny_vae):
    vae = load_wan_vae(tiny_vae_pth)
    vae.channels_last = True
    assert vae.channels_last
    x = _images(2, 48, 40, seed=5)
    z = vae.encode(x)
    torch.testing.assert_close(z, tiny_vae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vae.decode(z), tiny_vae.decode(z), rtol=1e-5, atol=1e-5)
    vae.channels_last = False
    torch.testing.assert_close(vae.encode(x), z, rtol=1e-5, atol=1e-5)


def test_the_vae_code_loads_without_the_diffsynth_package():
    """Only DiffSynth's wan_video_vae.py runs: not its __init__ (transformers and all)."""
    code = (
        "import sys; from delit_cache.vae import new_wan_vae; new_wan_vae(dim=8); "
        "bad = [m for m in ('diffsynth', 'transformers', 'torchvision') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_diffsynth_is_one_clear_error(monkeypatch):
    import importlib.util

    from delit_cache.vae import wan_source

    monkeypatch.delitem(sys.modules, "diffsynth", raising=False)
    monkeypatch.delitem(sys.modules, wan_source.PRIVATE_NAME, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DelitError, match="diffsynth is not installed"):
        wan_source.wan_video_vae_module()

"""Heads checkpoints: round trip, constructor arguments in the file, refusals."""

import json

import pytest
import torch
from safetensors.torch import save_file

from delit_cache.models import DelitConfig, create_heads
from delit_cache.models.pretrained import heads_metadata, load_heads, save_heads
from delit_cache.utils.errors import DelitError

SMALL = DelitConfig(extractor_width=32, extractor_blocks=1, flat_width=32, env_width=32, env_dim=64)


def test_round_trip_rebuilds_identical_outputs(tmp_path):
    heads = create_heads(SMALL, seed=3)
    with torch.no_grad():  # move the zero-initialised flat delta so the test sees it
        heads.flat_proj.delta.weight.normal_(0, 0.01)
    heads.set_latent_stats(torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16))
    path = save_heads(heads, tmp_path / "h.safetensors", extra={"step": 7})
    loaded = load_heads(path)
    assert loaded.config == SMALL
    assert torch.equal(loaded.latent_std, heads.latent_std)
    latent = torch.randn(2, 16, 12, 12)
    a, b = heads(latent), loaded(latent)
    assert torch.equal(a["flat_latent"], b["flat_latent"])
    assert torch.equal(a["env_code"], b["env_code"])
    assert heads_metadata(path) == {"step": 7}


def test_run_folder_resolves_to_heads_file(tmp_path):
    save_heads(create_heads(SMALL, seed=0), tmp_path / "heads.safetensors")
    assert load_heads(tmp_path).config == SMALL


def test_save_leaves_no_temp_files(tmp_path):
    save_heads(create_heads(SMALL, seed=0), tmp_path / "h.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors"]


def test_refuses_file_with_vae_weights(tmp_path):
    heads = create_heads(SMALL, seed=0)
    tensors = {k: v.contiguous() for k, v in heads.state_dict().items()}
    tensors["vae.decoder.conv1.weight"] = torch.zeros(8, 16, 3, 3, 3)
    meta = {"format": "delit-heads", "config": json.dumps(SMALL.to_dict())}
    save_file(tensors, tmp_path / "h.safetensors", metadata=meta)
    with pytest.raises(DelitError, match="holds VAE weights"):
        load_heads(tmp_path / "h.safetensors")


def test_refuses_foreign_and_broken_files(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(DelitError, match="not a delit heads checkpoint"):
        load_heads(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DelitError, match="not a readable safetensors file"):
        load_heads(tmp_path / "junk.safetensors")
    with pytest.raises(DelitError, match="no such checkpoint file"):
        load_heads(tmp_path / "missing.safetensors")


def test_refuses_weights_that_do_not_match_config(tmp_path):
    heads = create_heads(SMALL, seed=0)
    path = save_heads(heads, tmp_path / "h.safetensors")
    tensors = {k: v.contiguous() for k, v in heads.state_dict().items()}
    meta = {"format": "delit-heads", "config": json.dumps(DelitConfig().to_dict())}
    save_file(tensors, path, metadata=meta)
    with pytest.raises(DelitError, match="do not match their config"):
        load_heads(path)

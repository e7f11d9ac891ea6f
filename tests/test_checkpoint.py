"""Heads checkpoints: round trip, constructor arguments in the file, refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from delit_cache.models import DelitConfig, DelitHeads, create_heads
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


@pytest.mark.parametrize("extra", ["[1, 2]", "null", "{not json"])
def test_heads_metadata_refuses_extra_that_is_not_a_json_object(extra, tmp_path):
    path = save_heads(create_heads(SMALL, seed=0), tmp_path / "h.safetensors")
    state = load_file(str(path))
    save_file(state, str(path), metadata={"format": "delit-heads", "extra": extra})
    with pytest.raises(DelitError, match=f"{path}: metadata 'extra' "):
        heads_metadata(path)


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


def test_save_pretrained_folder_round_trip(tmp_path):
    heads = create_heads(SMALL, seed=3)
    heads.set_latent_stats(torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16))
    folder = heads.save_pretrained(tmp_path / "heads", extra={"step": 5})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "delit-heads" and DelitConfig.from_dict(config["config"]) == SMALL
    latent = torch.randn(1, 16, 8, 8)
    for source in (folder, folder / "model.safetensors"):  # the folder, or its weights file
        loaded = DelitHeads.from_pretrained(source)
        assert torch.equal(loaded.latent_mean, heads.latent_mean)  # stats inside the weights
        assert torch.equal(loaded(latent)["env_code"], heads(latent)["env_code"])
        assert heads_metadata(source) == {"step": 5}


def test_from_pretrained_reads_single_files_and_run_folders(tmp_path):
    heads = create_heads(SMALL, seed=1)
    save_heads(heads, tmp_path / "run" / "heads.safetensors", extra={"step": 2})
    latent = torch.randn(1, 16, 8, 8)
    for source in (tmp_path / "run", tmp_path / "run" / "heads.safetensors"):
        loaded = DelitHeads.from_pretrained(source)
        assert torch.equal(loaded(latent)["flat_latent"], heads(latent)["flat_latent"])


def test_save_pretrained_folder_refusals(tmp_path):
    folder = create_heads(SMALL, seed=0).save_pretrained(tmp_path / "h")
    (folder / "config.json").unlink()
    with pytest.raises(DelitError, match=r"model\.safetensors without config\.json"):
        DelitHeads.from_pretrained(folder)
    folder = create_heads(SMALL, seed=0).save_pretrained(tmp_path / "mismatch")
    config = json.loads((folder / "config.json").read_text())
    config["config"]["extractor_width"] = 64  # the weights were saved at width 32
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DelitError, match="do not match their config") as err:
        DelitHeads.from_pretrained(folder)
    assert "\n" not in str(err.value)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(DelitError, match="not readable JSON"):
        DelitHeads.from_pretrained(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DelitError, match=r"run folder without heads\.safetensors"):
        DelitHeads.from_pretrained(tmp_path / "empty")

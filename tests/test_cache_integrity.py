"""Damage, crashes and concurrency on the latent cache: digests, verify, repair, lock."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
import zarr

from delit_cache.cache import integrity
from delit_cache.cache import store as cm
from delit_cache.cache.encode import encode_lock, encode_shards
from delit_cache.data.shards import ShardWriter, encode_sample
from delit_cache.utils.errors import DelitError
from delit_cache.utils.faults import FAULT_ENV, InjectedFault

SIZE = 32


def write_shards(folder, keys: list[str], start: int = 0, shard_size: int = 3):
    """Random samples named ``keys`` (40x40 photos, 64x128 env maps) as webdataset shards."""
    g = torch.Generator().manual_seed(0)
    with ShardWriter(folder, shard_size=shard_size, start_shard=start) as w:
        for key in keys:
            relit, flat = torch.rand(3, 40, 40, generator=g), torch.rand(3, 40, 40, generator=g)
            w.write(encode_sample(key, relit, flat, torch.rand(3, 64, 128, generator=g) * 4.0))
    return folder


KEYS = [f"s{i:03d}" for i in range(5)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), KEYS)


def _encode(tiny_vae, shards, out, **kw):
    opts = {"size": SIZE, "batch_size": 3, "block_size": 2, "progress": False} | kw
    return encode_shards("unused", shards, out, vae=tiny_vae, **opts)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_vae, shards):
    """A clean cache of 5 samples in 3 blocks of 2 (copied by each test that damages it)."""
    out = tmp_path_factory.mktemp("clean") / "c.zarr"
    _encode(tiny_vae, shards, out)
    return out


def _copy(clean, tmp_path):
    out = tmp_path / "c.zarr"
    shutil.copytree(clean, out)
    return out


def _chunk(out, name: str, block: int):
    """The file of ``name``'s chunk holding ``block`` (zarr v3 default chunk keys)."""
    ndim = len(zarr.open_group(str(out), mode="r")[name].shape)
    return out / name / "c" / "/".join([str(block)] + ["0"] * (ndim - 1))


def _delete(path):
    path.unlink()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _alter(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {"deleted": _delete, "truncated": _truncate, "altered": _alter}


def _values(out):
    c = cm.LatentCache(out)
    return c.keys, {n: c.read(n) for n in cm.DATA_ARRAYS}


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("name", ["relit_latent", "env", "key"])
def test_damage_is_found_and_named(clean, tmp_path, name, how):
    out = _copy(clean, tmp_path)
    DAMAGE[how](_chunk(out, name, 1))
    damage, blocks, checked = cm.damage_report(out)
    assert (blocks, checked) == (3, True)
    assert [(d.block, d.array) for d in damage] == [(1, name)]
    with pytest.raises(DelitError, match=f"block 1, array {name}"):
        c = cm.LatentCache(out)  # a damaged key is found on open, a data array on read
        c.read(name if name != "key" else "env")


def test_reads_of_intact_blocks_still_work(clean, tmp_path):
    out = _copy(clean, tmp_path)
    _delete(_chunk(out, "env", 2))
    c = cm.LatentCache(out)
    assert c.read("env", [0, 1, 2, 3]).shape == (4, 3, 128, 256)  # blocks 0 and 1
    with pytest.raises(DelitError, match="block 2, array env"):
        c.read("env", [4])
    with pytest.raises(DelitError, match="block 2, array env"):
        cm.LatentCache(out).verify()


def test_cache_verify_cli(clean, tmp_path, capsys):
    from cli.app import main

    assert main(["cache", "verify", str(clean)]) == 0
    assert "3 block(s) checked against their digests; 0 damaged" in capsys.readouterr().out
    out = _copy(clean, tmp_path)
    _delete(_chunk(out, "flat_latent", 0))
    _truncate(_chunk(out, "env", 2))
    assert main(["cache", "verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "block 0, array flat_latent: digest mismatch" in text
    assert "block 2, array env: " in text and "2 damaged" in text
    assert main(["cache", "verify", str(tmp_path / "none.zarr")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_train_heads_refuses_a_damaged_cache(clean, tmp_path, capsys):
    from cli.app import main

    out = _copy(clean, tmp_path)
    _alter(_chunk(out, "relit_latent", 1))
    args = ["train-heads", "--cache", str(out), "--out", str(tmp_path / "run"), "--steps", "1"]
    assert main([*args, "--config", "tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "block 1, array relit_latent" in err
    assert err.count("\n") == 1 and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("name", ["flat_latent", "key", "block_sha256"])
def test_encode_re_encodes_damaged_blocks(clean, tmp_path, tiny_vae, shards, name):
    out = _copy(clean, tmp_path)
    _delete(_chunk(out, name, 1))
    summary = _encode(tiny_vae, shards, out)
    assert summary.encoded == 2 and cm.damage_report(out)[0] == []
    keys, arrays = _values(out)
    ref_keys, ref = _values(clean)
    assert sorted(keys) == sorted(ref_keys)
    order = [keys.index(k) for k in ref_keys]  # a lost plan row is planned anew at the end
    for n in cm.DATA_ARRAYS:
        np.testing.assert_array_equal(arrays[n][order], ref[n])


def test_old_cache_without_digests_loads_with_a_warning(clean, tmp_path, caplog, capsys):
    from cli.app import main

    out = _copy(clean, tmp_path)
    shutil.rmtree(out / integrity.SHA_ARRAY)
    with caplog.at_level(logging.WARNING, logger="delit"):
        assert len(cm.LatentCache(out)) == 5
    assert "damage cannot be detected" in caplog.text
    assert main(["cache", "verify", str(out)]) == 0
    assert "readable chunks only (no digests)" in capsys.readouterr().out
    _truncate(_chunk(out, "env", 0))  # undecodable chunks are still found
    assert main(["cache", "verify", str(out)]) == 1


def test_duplicate_keys_across_shards_are_refused(tmp_path, tiny_vae, shards):
    other = write_shards(tmp_path / "other", ["s001", "x"], start=10)
    with pytest.raises(DelitError, match="'s001' is in both"):
        _encode(tiny_vae, [str(shards), str(other)], tmp_path / "c.zarr")


def test_crash_while_creating_the_store_is_repaired(tmp_path, tiny_vae, shards):
    out = tmp_path / "c.zarr"
    (tmp_path / "c.zarr.partial").mkdir()  # what a kill during creation leaves
    (tmp_path / "c.zarr.partial" / "zarr.json").write_text("{")
    assert _encode(tiny_vae, shards, out).rows == 5
    assert not (tmp_path / "c.zarr.partial").exists()
    bad = tmp_path / "old.zarr"  # a half-made store from before creation was atomic
    zarr.open_group(str(bad), mode="w")
    with pytest.raises(DelitError, match="delete it and rerun"):
        _encode(tiny_vae, shards, bad)


def test_planned_sample_removed_from_its_shard(tmp_path, tiny_vae, monkeypatch, caplog):
    folder = write_shards(tmp_path / "shards", KEYS)
    out = tmp_path / "c.zarr"
    monkeypatch.setenv(FAULT_ENV, "encode.block:1:raise")
    with pytest.raises(InjectedFault):
        _encode(tiny_vae, folder, out)
    monkeypatch.delenv(FAULT_ENV)
    shutil.rmtree(folder)
    write_shards(folder, [k for k in KEYS if k not in ("s002", "s003")])
    with caplog.at_level(logging.WARNING, logger="delit"):
        summary = _encode(tiny_vae, folder, out)
    # s002 and s003 are gone; s004 moved from the second shard into the first: planned anew
    assert "3 planned sample(s) are no longer in their shards" in caplog.text
    assert sorted(cm.LatentCache(out).keys) == ["s000", "s001", "s004"]
    assert summary.rows == 3 and cm.damage_report(out)[0] == []


def test_a_second_encode_on_one_store_is_refused(tmp_path, tiny_vae, shards):
    out = tmp_path / "c.zarr"
    busy = pytest.raises(DelitError, match=r"another delit encode \(pid \d+\) is writing")
    with encode_lock(out), busy:  # a second open file description: as another process
        _encode(tiny_vae, shards, out)
    assert _encode(tiny_vae, shards, out).rows == 5  # the lock is released afterwards


def test_cache_verify_counts_blocks_not_encoded_yet(tmp_path, capsys):
    """Blocks an interrupted or failed encode planned but never wrote are not '0 damaged':
    they are counted, exit 1."""
    from test_train import SPEC

    from cli.app import main

    out = tmp_path / "c.zarr"
    group = cm.open_store(out, SPEC, block_size=2)
    blocks = cm.plan_append(group, [cm.Entry(f"k{i}", "/nowhere.tar", 0) for i in range(9)])
    rng = np.random.default_rng(0)
    for b in blocks[:2]:
        k = len(cm.block_rows(group, b))
        latents = rng.standard_normal((k, 16, 4, 4)).astype(np.float32)
        env = np.ones((k, 3, *cm.ENV_SIZE), np.float32)
        cm.write_block(group, b, {"relit_latent": latents, "flat_latent": latents, "env": env})
    assert main(["cache", "verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "2 block(s) checked against their digests; 0 damaged" in text
    assert f"{out}: 3 of 5 blocks not encoded yet (rerun delit encode)" in text

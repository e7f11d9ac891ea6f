"""The Zarr latent cache: layout, done flags, split, mean env, refusal to mix (no VAE needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delit_cache.cache import store as cm
from delit_cache.utils.errors import DelitError

SPEC = cm.CacheSpec(vae_fingerprint="abc123", vae_dim=8, image_size=32, encode_dtype="float32")


def _block_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "relit_latent": rng.standard_normal((n, 16, 4, 4)).astype(np.float32),
        "flat_latent": rng.standard_normal((n, 16, 4, 4)).astype(np.float32),
        "env": rng.uniform(0, 5, (n, 3, 128, 256)).astype(np.float32),
    }


def _entries(keys: list[str]) -> list[cm.Entry]:
    return [cm.Entry(k, "/data/shard-000000.tar", 0) for k in keys]


def make_cache(path, keys: list[str], block_size: int = 4, write: bool = True):
    """A store with ``keys`` planned (and written when ``write``); returns the arrays."""
    group = cm.open_store(path, SPEC, block_size)
    blocks = cm.plan_append(group, _entries(keys))
    written = {}
    for b in blocks if write else ():
        rows = cm.block_rows(group, b)
        arrays = _block_arrays(len(rows), seed=b)
        cm.write_block(group, b, arrays)
        for i, (_, key, _, _) in enumerate(rows):
            written[key] = {n: a[i] for n, a in arrays.items()}
    return group, written


def test_layout_metadata_and_read_back(tmp_path):
    path = tmp_path / "c.zarr"
    keys = [f"k{i}" for i in range(6)]
    group, written = make_cache(path, keys)
    c = cm.LatentCache(path)
    assert len(c) == 6 and c.keys == keys
    assert group["relit_latent"].shape == (8, 16, 4, 4)  # two whole blocks of 4
    assert group["relit_latent"].chunks == (4, 16, 4, 4)
    assert group["env"].shape == (8, 3, 128, 256)
    meta = c.metadata
    for name in ("vae_fingerprint", "image_size", "encode_dtype", "delit_version", "created"):
        assert name in meta
    assert meta["vae_fingerprint"] == "abc123" and meta["image_size"] == 32
    assert meta["env_format"] == "linear-hdr" and meta["latent_size"] == 4
    item = c[4]
    assert item["key"] == "k4"
    np.testing.assert_array_equal(item["flat_latent"].numpy(), written["k4"]["flat_latent"])
    got = c.read("env", [5, 0, 3])  # any order in, same order out
    np.testing.assert_array_equal(got[0], written["k5"]["env"])
    np.testing.assert_array_equal(got[1], written["k0"]["env"])
    with pytest.raises(IndexError):
        c[6]


def test_rows_count_only_after_done_flag(tmp_path):
    path = tmp_path / "c.zarr"
    group, _ = make_cache(path, [f"k{i}" for i in range(8)], write=False)
    assert len(cm.LatentCache(path)) == 0
    assert cm.pending_blocks(group) == [0, 1]
    # block 1's arrays written, flag not yet: still not counted, still pending
    arrays = _block_arrays(4, seed=1)
    for name, arr in arrays.items():
        group[name][4:8] = arr
    assert len(cm.LatentCache(path)) == 0
    cm.write_block(group, 0, _block_arrays(4, seed=0))
    c = cm.LatentCache(path)
    assert c.keys == ["k0", "k1", "k2", "k3"]
    assert cm.pending_blocks(group) == [1]


def test_append_starts_at_block_boundary_and_skips_known_keys(tmp_path):
    path = tmp_path / "c.zarr"
    make_cache(path, ["a", "b", "c"])  # one block, one empty row
    group = cm.open_store(path, SPEC, block_size=99)  # block size of an existing store is kept
    assert cm.planned_keys(group) == {"a", "b", "c"}
    blocks = cm.plan_append(group, _entries(["d", "e"]))
    assert list(blocks) == [1]
    cm.write_block(group, 1, _block_arrays(2, seed=5))
    c = cm.LatentCache(path)
    assert c.keys == ["a", "b", "c", "d", "e"]
    assert int(group.attrs["num_rows"]) == 8


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("vae_fingerprint", "other", "VAE (fingerprint)"),
        ("image_size", 64, "image size"),
        ("encode_dtype", "bfloat16", "encode precision"),
        ("augment", 3, "augmentation count"),
    ],
)
def test_mixing_is_refused(tmp_path, field, value, words):
    path = tmp_path / "c.zarr"
    make_cache(path, ["a"])
    spec = cm.CacheSpec(**{**SPEC.__dict__, field: value})
    with pytest.raises(DelitError, match="refusing to mix") as info:
        cm.open_store(path, spec, 4)
    assert words in str(info.value) and str(path) in str(info.value)


def test_not_a_cache_is_a_clear_error(tmp_path):
    with pytest.raises(DelitError, match="no latent cache"):
        cm.LatentCache(tmp_path / "missing.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["format"] = "something"
    with pytest.raises(DelitError, match="not a delit latent cache"):
        cm.LatentCache(tmp_path / "other.zarr")


def test_split_is_deterministic_grouped_and_stable_when_growing(tmp_path):
    path = tmp_path / "c.zarr"
    keys = [cm.variant_key(f"s{i:02d}", v) for i in range(20) for v in range(2)]
    make_cache(path, keys, block_size=8)
    c = cm.LatentCache(path)
    train, val = c.split(0.25, seed=3)
    assert (train, val) == c.split(0.25, seed=3)
    assert sorted(train + val) == list(range(40)) and train and val
    val_bases = {cm.base_key(c.keys[i]) for i in val}
    assert not val_bases & {cm.base_key(c.keys[i]) for i in train}  # variants stay together
    assert c.split(0.25, seed=4) != (train, val)
    # grow the cache: old samples keep their side
    group = cm.open_store(path, SPEC, 8)
    for b in cm.plan_append(group, _entries([f"new{i}" for i in range(10)])):
        cm.write_block(group, b, _block_arrays(len(cm.block_rows(group, b)), seed=b))
    c2 = cm.LatentCache(path)
    _, val2 = c2.split(0.25, seed=3)
    assert val_bases == {cm.base_key(c2.keys[i]) for i in val2 if not c2.keys[i].startswith("new")}
    assert c.split(0.0, seed=0) == (list(range(40)), [])
    with pytest.raises(DelitError):
        c.split(1.0)


def test_split_keeps_both_sides_non_empty(tmp_path):
    path = tmp_path / "c.zarr"
    make_cache(path, ["x", "y"])
    c = cm.LatentCache(path)
    for frac in (0.001, 0.999):
        train, val = c.split(frac, seed=0)
        assert len(train) == 1 and len(val) == 1


def test_mean_env(tmp_path):
    path = tmp_path / "c.zarr"
    _, written = make_cache(path, [f"k{i}" for i in range(7)])
    c = cm.LatentCache(path)
    idx = [0, 2, 6]
    want = np.mean([written[c.keys[i]]["env"] for i in idx], axis=0)
    got = c.mean_env(idx)
    assert got.shape == (3, 128, 256) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(
        c.mean_env().numpy(), np.mean([w["env"] for w in written.values()], 0), rtol=1e-5
    )
    with pytest.raises(DelitError):
        c.mean_env([])


def test_latent_stats(tmp_path):
    path = tmp_path / "c.zarr"
    _, written = make_cache(path, [f"k{i}" for i in range(7)])
    c = cm.LatentCache(path)
    idx = [1, 4, 5]
    x = np.stack([written[c.keys[i]]["relit_latent"] for i in idx]).astype(np.float64)
    mean, std = c.latent_stats(idx)
    assert mean.shape == std.shape == (16,) and mean.dtype == torch.float32
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), x.std(axis=(0, 2, 3)), rtol=1e-5)
    sub_mean, _ = c.latent_stats(limit=2)  # evenly spaced subset: the first and last sample
    ends = np.stack([written[c.keys[i]]["relit_latent"] for i in (0, 6)]).astype(np.float64)
    np.testing.assert_allclose(sub_mean.numpy(), ends.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    with pytest.raises(DelitError):
        c.latent_stats([])

"""Shard format: encode/decode round trip, atomic deterministic writer, SHARDS expansion."""

from __future__ import annotations

import tarfile

import pytest
import torch

from delit_cache.data.shards import (
    ShardWriter,
    decode_sample,
    encode_sample,
    expand_shards,
    iter_samples,
    make_pipeline,
)
from delit_cache.utils.errors import DelitError


def _sample(key: str, seed: int, hw=(12, 16), with_optional: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    relit = torch.rand(3, *hw, generator=g)
    flat = torch.rand(3, *hw, generator=g)
    env = torch.rand(3, 8, 16, generator=g) * 50.0
    mask = (torch.rand(1, *hw, generator=g) > 0.5).float() if with_optional else None
    base = torch.tensor([0.3, 0.2, 1.0])[:, None, None]
    normal = torch.nn.functional.normalize(base + 0.1 * torch.randn(3, *hw, generator=g), dim=0)
    normal = normal if with_optional else None
    meta = {"seed": seed, "env_source": "procedural:sky"} if with_optional else None
    return dict(key=key, relit=relit, flat=flat, env=env, mask=mask, normal=normal, meta=meta)


def _write(out, n: int, shard_size: int, **kw) -> list:
    with ShardWriter(out, shard_size=shard_size) as w:
        for i in range(n):
            s = _sample(f"k{i:03d}", i, **kw)
            w.write(encode_sample(s.pop("key"), **s))
    return w.written


def test_round_trip_values_and_shapes(tmp_path):
    s = _sample("a", 0)
    raw = encode_sample("a", s["relit"], s["flat"], s["env"], s["mask"], s["normal"], s["meta"])
    assert set(raw) == {
        "__key__",
        "relit.png",
        "flat.png",
        "env.exr",
        "mask.png",
        "normal.exr",
        "json",
    }
    out = decode_sample({**raw, "__url__": "x.tar"})
    assert out["key"] == "a" and out["source"] == "x.tar"
    assert out["relit"].shape == (3, 12, 16) and out["relit"].dtype == torch.float32
    assert (out["relit"] - s["relit"]).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
    assert (out["flat"] - s["flat"]).abs().max() <= 0.5 / 255 + 1e-6
    assert out["env"].dtype == torch.float32 and out["env"].shape == (3, 8, 16)
    assert torch.allclose(out["env"], s["env"], rtol=1e-3, atol=1e-3)  # half float
    assert out["mask"].shape == (1, 12, 16) and torch.equal(out["mask"], s["mask"])
    assert torch.allclose(out["normal"], s["normal"], atol=2e-3)
    assert out["meta"] == s["meta"]


def test_optional_fields_absent_and_missing_required():
    s = _sample("b", 1, with_optional=False)
    raw = encode_sample("b", s["relit"], s["flat"], s["env"])
    out = decode_sample(raw)
    assert out["mask"] is None and out["normal"] is None and out["meta"] == {}
    del raw["flat.png"]
    with pytest.raises(DelitError, match=r"missing flat\.png"):
        decode_sample(raw)


def test_resize_on_read():
    s = _sample("c", 2)
    raw = encode_sample("c", s["relit"], s["flat"], s["env"], s["mask"], s["normal"])
    out = decode_sample(raw, size=8)
    assert out["relit"].shape == (3, 8, 8) and out["mask"].shape == (1, 8, 8)
    assert out["env"].shape == (3, 8, 16)  # env never resized
    assert torch.allclose(out["normal"].norm(dim=0), torch.ones(8, 8), atol=1e-4)


def test_writer_splits_names_and_is_atomic(tmp_path):
    written = _write(tmp_path / "s", 5, 2)
    assert [p.name for p in written] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list((tmp_path / "s").glob("*.tmp"))
    with tarfile.open(written[0]) as tf:
        names = tf.getnames()
    assert names[:3] == ["k000.env.exr", "k000.flat.png", "k000.json"]
    samples = list(iter_samples(tmp_path / "s"))
    assert [s["key"] for s in samples] == [f"k{i:03d}" for i in range(5)]
    assert samples[3]["source"].endswith("shard-000001.tar")


def test_writer_abort_removes_tmp_and_rejects_bad_keys(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, shard_size=10) as w:
        s = _sample("x", 0)
        w.write(encode_sample(s.pop("key"), **s))
        assert list(tmp_path.glob("*.tar.tmp"))
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())
    with ShardWriter(tmp_path) as w, pytest.raises(DelitError, match="key"):
        w.write({"__key__": "a.b", "json": b"{}"})


def test_writer_is_byte_deterministic(tmp_path):
    a = _write(tmp_path / "a", 3, 10)
    b = _write(tmp_path / "b", 3, 10)
    assert a[0].read_bytes() == b[0].read_bytes()


def test_expand_shards_forms(tmp_path):
    written = _write(tmp_path / "d", 4, 1)
    d = tmp_path / "d"
    assert expand_shards(d) == written
    assert expand_shards(written[2]) == [written[2]]
    assert expand_shards(str(d / "*.tar")) == written
    assert expand_shards(str(d / "shard-{000001..000002}.tar")) == written[1:3]
    assert expand_shards([written[3], str(written[0])]) == [written[0], written[3]]
    with pytest.raises(DelitError, match="no such shard"):
        expand_shards(str(d / "shard-{000003..000005}.tar"))
    with pytest.raises(DelitError, match=r"no \.tar shards"):
        expand_shards(tmp_path / "empty_glob_*.tar")


def test_make_pipeline_decodes_all(tmp_path):
    _write(tmp_path / "p", 4, 2)
    keys = sorted(s["key"] for s in make_pipeline(tmp_path / "p", shuffle=3, seed=1))
    assert keys == [f"k{i:03d}" for i in range(4)]


def test_exr_beyond_half_range_is_stored_in_full_float():
    from delit_cache.data.shards import decode_exr, encode_exr

    env = torch.rand(3, 8, 16)
    env[:, 2, 3] = 2.0e5  # a sun brighter than half float's 65504
    out = decode_exr(encode_exr(env))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, env)
    small = torch.rand(3, 8, 16)
    assert len(encode_exr(small)) < len(encode_exr(small * 1.0e5))  # half when it fits
    with pytest.raises(ValueError, match="NaN or Inf"):
        encode_exr(torch.full((3, 2, 2), float("inf")))

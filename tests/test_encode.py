"""delit encode: frozen encoding into the cache, resume, append, refusal, augmentation, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delit_cache.cache import store as cm
from delit_cache.cache.encode import encode_shards, shard_keys
from delit_cache.data.augment import augment_sample, draw_params
from delit_cache.data.shards import ShardWriter, encode_sample, iter_samples
from delit_cache.lighting.envmap import resample_env
from delit_cache.models.transform import PortraitTransform
from delit_cache.utils.errors import DelitError
from delit_cache.utils.faults import FAULT_ENV, InjectedFault

SIZE = 32


def write_shards(folder, n: int, seed: int = 0, start: int = 0, shard_size: int = 3):
    """``n`` random samples (40x40 photos, 64x128 env maps) as real webdataset shards."""
    g = torch.Generator().manual_seed(seed)
    with ShardWriter(folder, shard_size=shard_size, start_shard=start) as w:
        for i in range(n):
            relit, flat = torch.rand(3, 40, 40, generator=g), torch.rand(3, 40, 40, generator=g)
            env = torch.rand(3, 64, 128, generator=g) * 4.0
            w.write(encode_sample(f"s{start}_{i:03d}", relit, flat, env))
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), 5)


def _encode(tiny_vae, shards, out, **kw):
    opts = {"size": SIZE, "batch_size": 3, "block_size": 2, "progress": False} | kw
    return encode_shards("unused", shards, out, vae=tiny_vae, **opts)


def _arrays(path):
    c = cm.LatentCache(path)
    return c.keys, {n: c.read(n) for n in cm.DATA_ARRAYS}


def test_encode_matches_vae_and_resampled_env(tmp_path, tiny_vae, shards):
    out = tmp_path / "c.zarr"
    summary = _encode(tiny_vae, shards, out)
    assert summary.rows == 5 and summary.planned == 5 and summary.encoded == 5
    c = cm.LatentCache(out)
    assert c.keys == [f"s0_{i:03d}" for i in range(5)]
    meta = c.metadata
    assert meta["vae_fingerprint"] == tiny_vae.fingerprint
    assert (meta["image_size"], meta["latent_size"], meta["encode_dtype"]) == (SIZE, 4, "float32")
    sample = next(iter_samples(shards))
    transform = PortraitTransform(SIZE)
    with torch.no_grad():
        z = tiny_vae.encode(
            torch.stack([transform(sample["relit"])[0], transform(sample["flat"])[0]])
        )
    item = c[0]
    torch.testing.assert_close(item["relit_latent"], z[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item["flat_latent"], z[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item["env"], resample_env(sample["env"], (128, 256)))


def test_resume_after_interruption_gives_the_same_store(tmp_path, tiny_vae, shards, monkeypatch):
    ref = tmp_path / "ref.zarr"
    _encode(tiny_vae, shards, ref)
    out = tmp_path / "c.zarr"
    monkeypatch.setenv(FAULT_ENV, "encode.block:1:raise")
    with pytest.raises(InjectedFault):
        _encode(tiny_vae, shards, out)
    monkeypatch.delenv(FAULT_ENV)
    assert len(cm.LatentCache(out)) == 2  # only the finished block counts
    # a block whose arrays were written but whose done flag was not: garbage, not counted
    import zarr

    group = zarr.open_group(str(out), mode="r+")
    group["relit_latent"][2:4] = 1e6
    assert len(cm.LatentCache(out)) == 2
    summary = _encode(tiny_vae, shards, out)
    assert summary.planned == 0 and summary.encoded == 3
    keys, arrays = _arrays(out)
    ref_keys, ref_arrays = _arrays(ref)
    assert keys == ref_keys
    for name in cm.DATA_ARRAYS:
        np.testing.assert_array_equal(arrays[name], ref_arrays[name])


def test_append_new_shards_skips_known_keys(tmp_path, tiny_vae, shards):
    out = tmp_path / "c.zarr"
    _encode(tiny_vae, shards, out)
    before = _arrays(out)
    more = write_shards(tmp_path / "more", 3, seed=1, start=7)
    summary = _encode(tiny_vae, [str(shards), str(more)], out)
    assert (summary.planned, summary.skipped, summary.encoded) == (3, 5, 3)
    keys, arrays = _arrays(out)
    assert keys == before[0] + [f"s7_{i:03d}" for i in range(3)]
    np.testing.assert_array_equal(arrays["flat_latent"][:5], before[1]["flat_latent"])


def test_mixing_vae_or_size_is_refused(tmp_path, tiny_vae, shards):
    from delit_cache.vae import new_wan_vae

    out = tmp_path / "c.zarr"
    _encode(tiny_vae, shards, out)
    other = new_wan_vae(dim=8, seed=7)
    assert other.fingerprint != tiny_vae.fingerprint
    with pytest.raises(DelitError, match="VAE"):
        _encode(other, shards, out)
    with pytest.raises(DelitError, match="image size"):
        _encode(tiny_vae, shards, out, size=48)
    with pytest.raises(DelitError, match="size"):
        _encode(tiny_vae, shards, tmp_path / "x.zarr", size=30)


def test_augmented_variants(tmp_path, tiny_vae, shards):
    out = tmp_path / "c.zarr"
    _encode(tiny_vae, shards, out, augment=3, seed=11)
    c = cm.LatentCache(out)
    assert len(c) == 15 and c.keys[:3] == ["s0_000", "s0_000#1", "s0_000#2"]
    assert c.metadata["augment"] == 3
    v0, v1 = c[0], c[1]
    assert not torch.equal(v0["relit_latent"], v1["relit_latent"])
    p = draw_params(11, "s0_000", 1)
    env = v0["env"].flip(-1) if p.flip else v0["env"]
    torch.testing.assert_close(v1["env"], env * p.exposure)
    _, val = c.split(0.4, seed=0)
    assert len(val) % 3 == 0  # variants of one sample stay on one side


def test_augment_sample_flip_exposure_and_determinism():
    g = torch.Generator().manual_seed(0)
    relit, flat = torch.rand(3, 16, 16, generator=g), torch.rand(3, 16, 16, generator=g)
    env = torch.rand(3, 8, 16, generator=g)
    assert augment_sample(relit, flat, env, "k", 0) == (relit, flat, env)
    a = augment_sample(relit, flat, env, "k", 1, seed=5)
    b = augment_sample(relit, flat, env, "k", 1, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # find a flipped variant: env column u -> 1 - u, scaled by the exposure factor
    variant = next(v for v in range(1, 50) if draw_params(5, "k", v).flip)
    p = draw_params(5, "k", variant)
    _, flat_v, env_v = augment_sample(relit, flat, env, "k", variant, seed=5)
    torch.testing.assert_close(env_v, env.flip(-1) * p.exposure)
    assert 0.5 <= p.exposure <= 2.0 and 0.8 <= p.crop[0] <= 1.0
    # the flat image is flipped and cropped like relit but never re-exposed
    if p.crop[0] > 0.999:
        torch.testing.assert_close(flat_v, flat.flip(-1))
    assert flat_v.min() >= 0 and flat_v.max() <= 1


def test_shard_keys_reads_tar_headers(shards):
    first = sorted(shards.glob("*.tar"))[0]
    assert shard_keys(first) == ["s0_000", "s0_001", "s0_002"]
    with pytest.raises(DelitError, match="truncated or damaged tar shard"):
        bad = first.with_name("bad.tar")
        bad.write_bytes(b"not a tar")
        shard_keys(bad)
    bad.unlink()


def test_cli_encode_and_errors(tmp_path, tiny_vae_pth, shards, capsys):
    from cli.app import main

    out = tmp_path / "c.zarr"
    args = ["encode", "--vae", str(tiny_vae_pth), "--data", str(shards), "--out", str(out)]
    args += ["--size", str(SIZE), "--batch-size", "4", "--block-size", "4", "--no-progress"]
    assert main(args) == 0
    assert "5 samples" in capsys.readouterr().out
    assert len(cm.LatentCache(out)) == 5
    assert main([*args[:-7], "--size", "48", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "image size" in err and "Traceback" not in err
    assert main([*args[:4], str(tmp_path / "none"), *args[5:]]) == 2
    assert "no such shard file" in capsys.readouterr().err


def _half_exr(arr: np.ndarray) -> bytes:
    """An EXR as a half-float writer makes it: values beyond 65504 become Inf."""
    import io

    import OpenEXR

    with np.errstate(over="ignore"):
        chans = {c: np.ascontiguousarray(arr[i]).astype(np.float16) for i, c in enumerate("RGB")}
    buf = io.BytesIO()
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, chans) as f:
        f.write(buf)
    return buf.getvalue()


def test_encode_refuses_an_env_map_with_inf(tmp_path, tiny_vae):
    sample = encode_sample(
        "sun", torch.rand(3, 40, 40), torch.rand(3, 40, 40), torch.rand(3, 8, 16)
    )
    env = np.random.rand(3, 8, 16).astype(np.float32)
    env[:, 1, 1] = 1.0e6
    sample["env.exr"] = _half_exr(env)
    with ShardWriter(tmp_path / "bad", shard_size=4) as w:
        w.write(sample)
    with pytest.raises(DelitError, match="sun: env map has NaN or Inf"):
        _encode(tiny_vae, tmp_path / "bad", tmp_path / "c.zarr")


def test_a_given_vae_records_its_own_precision(tmp_path, tiny_vae_pth, shards):
    from delit_cache.vae import load_wan_vae

    vae = load_wan_vae(tiny_vae_pth, dtype="bf16")
    _encode(vae, shards, tmp_path / "c.zarr", dtype="float32")
    assert cm.LatentCache(tmp_path / "c.zarr").metadata["encode_dtype"] == "bfloat16"

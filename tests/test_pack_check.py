"""``delit pack`` and ``delit data check`` on folder layouts and shards, via the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli.app import main
from delit_cache.data.check import check
from delit_cache.data.imageio import write_exr
from delit_cache.data.shards import ShardWriter, encode_sample, iter_samples


def write_layout(root, stems=("a", "b", "c"), hw=(16, 16)):
    rng = np.random.default_rng(0)
    for d in ("relit", "flat", "env", "mask", "meta"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        img = (rng.uniform(0, 1, (*hw, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "relit" / f"{stem}.png")
        Image.fromarray(img).save(root / "flat" / f"{stem}.jpg", quality=95)
        write_exr(root / "env" / f"{stem}.exr", rng.uniform(0, 20, (8, 16, 3)).astype(np.float32))
        Image.fromarray(np.full(hw, 255, np.uint8)).save(root / "mask" / f"{stem}.png")
        (root / "meta" / f"{stem}.json").write_text(json.dumps({"n": i}))
    return root


def test_pack_then_check_clean(tmp_path, capsys):
    src = write_layout(tmp_path / "data")
    assert main(["data", "check", str(src)]) == 0
    assert "3 samples, 0 problems" in capsys.readouterr().out
    assert main(["pack", str(src), "--out", str(tmp_path / "shards"), "--shard-size", "2"]) == 0
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert not [p for p in (tmp_path / "shards").iterdir() if p.name.startswith(".")]
    samples = list(iter_samples(tmp_path / "shards"))
    assert [s["key"] for s in samples] == ["a", "b", "c"]
    assert samples[1]["meta"]["n"] == 1 and samples[1]["meta"]["stem"] == "b"
    relit_a = np.asarray(Image.open(src / "relit" / "a.png"), dtype=np.float32) / 255
    assert np.allclose(samples[0]["relit"].permute(1, 2, 0).numpy(), relit_a, atol=1e-6)
    assert samples[0]["mask"].min() == 1.0 and samples[0]["env"].shape == (3, 8, 16)
    assert main(["data", "check", str(tmp_path / "shards")]) == 0
    assert "3 samples, 0 problems" in capsys.readouterr().out
    # packing into a folder that holds shards is refused (exit 2, one error line)
    assert main(["pack", str(src), "--out", str(tmp_path / "shards")]) == 2
    assert "already holds" in capsys.readouterr().err


def test_folder_problems_are_listed(tmp_path, capsys):
    src = write_layout(tmp_path / "data", stems=("ok", "nopartner", "small", "neg", "nan", "junk"))
    (src / "flat" / "nopartner.jpg").unlink()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "flat" / "small.jpg")
    write_exr(src / "env" / "neg.exr", np.full((8, 16, 3), -1.0, np.float32))
    bad = np.ones((8, 16, 3), np.float32)
    bad[0, 0, 0] = np.nan
    write_exr(src / "env" / "nan.exr", bad, half=False)
    (src / "relit" / "junk.png").write_bytes(b"not a png")
    assert main(["data", "check", str(src)]) == 1
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1] == "5 samples, 5 problems"
    text = "\n".join(lines[:-1])
    assert "missing partner flat/nopartner" in text
    assert "small" in text and "size mismatch" in text
    assert "neg" in text and "negative" in text
    assert "nan" in text and "non-finite" in text
    assert "junk.png" in text and "unreadable" in text
    assert "ok" not in text.replace("unreadable", "").replace("not a png", "")
    # pack refuses and leaves nothing behind
    assert main(["pack", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "problems" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*"))


def test_shard_problems_are_listed(tmp_path):
    g = torch.Generator().manual_seed(0)
    with ShardWriter(tmp_path / "s", shard_size=10) as w:
        w.write(
            encode_sample(
                "good", torch.rand(3, 8, 8, generator=g), torch.rand(3, 8, 8), torch.ones(3, 4, 8)
            )
        )
        w.write(
            encode_sample("mism", torch.rand(3, 8, 8), torch.rand(3, 6, 8), torch.ones(3, 4, 8))
        )
        raw = encode_sample("noflat", torch.rand(3, 8, 8), torch.rand(3, 8, 8), torch.ones(3, 4, 8))
        del raw["flat.png"]
        w.write(raw)
        w.write(
            encode_sample("neg", torch.rand(3, 8, 8), torch.rand(3, 8, 8), -torch.ones(3, 4, 8))
        )
        w.write({"__key__": "broken", "relit.png": b"xx", "flat.png": b"yy", "env.exr": b"zz"})
    (tmp_path / "s" / "shard-000001.tar").write_bytes(b"garbage" * 100)
    report = check(tmp_path / "s")
    text = "\n".join(report.problems)
    assert report.n_samples == 5
    assert "shard-000000.tar:mism: size mismatch" in text
    assert "shard-000000.tar:noflat: missing partner noflat.flat.png" in text
    assert "shard-000000.tar:neg: env has" in text and "negative" in text
    assert "shard-000000.tar:broken: unreadable" in text
    assert "shard-000001.tar" in text and "good" not in text
    assert len(report.problems) == 5


def test_check_bad_path_is_a_clean_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nothing-{0..1}.tar")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("shard_size", [0, -1])
def test_pack_bad_shard_size(tmp_path, shard_size, capsys):
    src = write_layout(tmp_path / "data", stems=("a",))
    assert (
        main(["pack", str(src), "--out", str(tmp_path / "o"), "--shard-size", str(shard_size)]) == 2
    )
    assert f"--shard-size {shard_size}: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before the output folder is made

"""scripts/extra_hdris.py on a tarball laid out as the npm package is: maps decoded and
clamped, duplicates skipped, a held-out look-alike refused."""

from __future__ import annotations

import base64
import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from delit_cache.data.imageio import read_hdr, write_exr
from delit_cache.lighting.envmap import rotate_env
from delit_cache.synth.environments import HELDOUT_HDRIS, packaged_hdri_dir

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("extra_hdris", ROOT / "scripts/extra_hdris.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tarball(path: Path, maps: dict[str, np.ndarray], tmp: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, arr in maps.items():
            exr = tmp / f"{name}.exr"
            write_exr(exr, arr, half=False)
            text = f"export default 'data:application/exr;base64,{base64.b64encode(exr.read_bytes()).decode()}'"
            data = text.encode()
            info = tarfile.TarInfo(f"package/hdri/{name}.exr.js")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _packaged(stem: str) -> np.ndarray:
    return read_hdr(packaged_hdri_dir() / f"{stem}.exr")


@pytest.mark.skipif(packaged_hdri_dir() is None, reason="no packaged HDRIs")
def test_extra_hdris_decodes_clamps_and_skips_duplicates(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sky = rng.uniform(0.1, 1.0, (64, 128, 3)).astype(np.float32)
    sky[:8] += 50.0  # a bright band overhead, unlike any packaged map
    sky[10, 20] = -5.0  # the ringing of a lossy codec
    tarball = _tarball(tmp_path / "a.tgz", {"sky": sky, "sunrise": _packaged("sunrise")}, tmp_path)
    out = tmp_path / "pool"
    assert _script().main([str(tarball), str(out)]) == 0
    written = read_hdr(out / "pm_sky.exr")
    assert written.min() == 0.0 and written[10, 20].max() == 0.0
    np.testing.assert_allclose(written[:8], sky[:8])
    assert not (out / "pm_sunrise.exr").exists()
    stems = {p.stem for p in out.glob("*.exr")}
    assert not stems & set(HELDOUT_HDRIS)
    assert {p.stem for p in packaged_hdri_dir().glob("*.exr")} - set(HELDOUT_HDRIS) <= stems
    assert "sunrise: skipped, duplicates sunrise" in capsys.readouterr().out


@pytest.mark.skipif(packaged_hdri_dir() is None, reason="no packaged HDRIs")
def test_extra_hdris_refuses_a_held_out_look_alike(tmp_path, capsys):
    held = HELDOUT_HDRIS[0]
    env = torch.from_numpy(_packaged(held).transpose(2, 0, 1).copy())
    turned = rotate_env(env, 90.0).numpy().transpose(1, 2, 0)
    tarball = _tarball(tmp_path / "b.tgz", {"lookalike": turned}, tmp_path)
    assert _script().main([str(tarball), str(tmp_path / "pool")]) == 2
    assert f"error: lookalike: looks like held-out HDRI {held}" in capsys.readouterr().err
    assert not (tmp_path / "pool").exists()


@pytest.mark.skipif(packaged_hdri_dir() is None, reason="no packaged HDRIs")
def test_extra_hdris_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys):
    good = np.full((32, 64, 3), 0.5, np.float32)
    nan = good.copy()
    nan[3, 4] = np.nan
    cases = {
        "missing": (tmp_path / "none.tgz", "no such file"),
        "not a tar": (tmp_path / "x.tgz", "not a readable tarball"),
        "no maps": (_tarball(tmp_path / "e.tgz", {}, tmp_path), "holds no package/hdri"),
        "NaN": (_tarball(tmp_path / "n.tgz", {"g": good, "n": nan}, tmp_path), "n: holds NaN"),
        "square": (_tarball(tmp_path / "q.tgz", {"q": good[:, :32]}, tmp_path), "not an equi"),
        "dark": (_tarball(tmp_path / "z.tgz", {"z": 0 * good}, tmp_path), "holds no light"),
    }
    (tmp_path / "x.tgz").write_text("not gzip")
    for what, (tarball, message) in cases.items():
        assert _script().main([str(tarball), str(tmp_path / "pool")]) == 2, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (what, err)
        assert not (tmp_path / "pool").exists() and not (tmp_path / "pool.partial").exists()
    ok = _tarball(tmp_path / "g.tgz", {"g": good}, tmp_path)
    (tmp_path / "taken").write_text("a file")
    assert _script().main([str(ok), str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err

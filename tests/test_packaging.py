"""The wheel's package list in pyproject.toml names every subpackage of delit_cache and every
folder of its data files, and the package data patterns match every asset."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_subpackage():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    files = [
        p for p in (ROOT / "delit_cache").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in files}
    assert on_disk <= listed, sorted(on_disk - listed)
    data = config["package-data"]
    for path in files:
        if path.suffix != ".py":
            package = ".".join(path.parent.relative_to(ROOT).parts)
            assert any(path.match(pattern) for pattern in data.get(package, [])), path
    assert config["package-dir"] == {"delit_cache.configs": "configs", "delit_cli": "cli"}
    assert any((ROOT / "configs").glob("*.yaml")) and (ROOT / "cli" / "app.py").is_file()


def test_sdist_holds_the_licence_and_what_its_tests_run(tmp_path, monkeypatch):
    """An unpacked sdist runs its own tests: the scripts and benchmarks they call are in it,
    and so is the licence text the metadata names."""
    import tarfile

    build_meta = pytest.importorskip("setuptools.build_meta")
    monkeypatch.chdir(ROOT)
    name = build_meta.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    needed = {"LICENSE", "README.md", "MANIFEST.in"}
    for folder in ("scripts", "benchmarks", "tests"):
        needed |= {
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / folder).glob("*")
            if p.suffix in {".py", ".sh"} and p.is_file()
        }
    assert needed <= members, sorted(needed - members)
    assert not any("__pycache__" in m for m in members)

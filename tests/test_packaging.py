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

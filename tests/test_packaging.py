"""The wheel's package list in pyproject.toml names every subpackage of delit_cache."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_subpackage():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "delit_cache").rglob("__init__.py")
    }
    assert on_disk <= listed, sorted(on_disk - listed)
    assert config["package-dir"] == {"delit_cache.configs": "configs", "delit_cli": "cli"}
    assert any((ROOT / "configs").glob("*.yaml")) and (ROOT / "cli" / "app.py").is_file()

"""Load DiffSynth's Wan VAE module file alone, without running ``diffsynth/__init__.py``.

``import diffsynth.models.wan_video_vae`` first runs the package's ``__init__``, which
imports DiffSynth's whole core (transformers, attention kernels, data loaders): about 6 s on
2 CPU cores, for a module that itself needs only torch, einops and tqdm. ``wan_video_vae_module``
finds the installed package without importing it and executes just that file, as the private
module ``delit_cache.vae._wan_video_vae`` (registering it under DiffSynth's own name would
leave ``diffsynth.models`` half-imported for a later ``import diffsynth...``). When DiffSynth
is already imported, its own module is used, so ``isinstance`` checks agree with its classes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from delit_cache.utils.errors import DelitError

MODULE_NAME = "diffsynth.models.wan_video_vae"
PRIVATE_NAME = "delit_cache.vae._wan_video_vae"
_RELATIVE_FILE = Path("models") / "wan_video_vae.py"


def _package_dirs() -> list[Path]:
    """The folders of the installed ``diffsynth`` package (not imported)."""
    try:
        spec = importlib.util.find_spec("diffsynth")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DelitError(
            "diffsynth is not installed: the Wan VAE code comes from DiffSynth-Studio "
            "(pip install diffsynth)"
        )
    return [Path(p) for p in spec.submodule_search_locations]


def wan_video_vae_module() -> ModuleType:
    """DiffSynth's ``wan_video_vae`` module (``VideoVAE_``, ``CausalConv3d``), loaded once."""
    if "diffsynth" in sys.modules:  # the package is imported anyway: take the ordinary path
        return importlib.import_module(MODULE_NAME)
    loaded = sys.modules.get(PRIVATE_NAME)
    if loaded is not None:
        return loaded
    files = [d / _RELATIVE_FILE for d in _package_dirs()]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        raise DelitError(
            f"diffsynth is installed but has no {_RELATIVE_FILE.as_posix()} "
            f"(looked in {', '.join(str(d) for d in _package_dirs())}); "
            "a DiffSynth-Studio release with the Wan 2.1 VAE is needed"
        )
    spec = importlib.util.spec_from_file_location(PRIVATE_NAME, path)
    if spec is None or spec.loader is None:
        raise DelitError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PRIVATE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(PRIVATE_NAME, None)
        raise
    return module

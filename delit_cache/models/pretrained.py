"""Heads checkpoints: safetensors holding only the heads plus their constructor arguments.

The file's metadata carries ``format`` (``delit-heads``), the delit version and the
``DelitConfig`` as JSON, so ``load_heads(path)`` rebuilds the model from the file alone.
The frozen VAE is never written: a file that holds VAE weights is refused on load.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from delit_cache import __version__
from delit_cache.models.config import DelitConfig
from delit_cache.models.heads import DelitHeads
from delit_cache.utils.atomic import atomic_path
from delit_cache.utils.errors import DelitError

FORMAT = "delit-heads"
HEADS_FILENAME = "heads.safetensors"
# Key fragments that mark Wan VAE weights (the original layout, bare or under a prefix).
_VAE_MARKERS = ("encoder.conv1.", "decoder.conv1.", "decoder.middle.", "encoder.downsamples.")


def save_heads(heads: DelitHeads, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``heads`` (weights + config) atomically to ``path``; return the path."""
    path = Path(path)
    state = {k: v.detach().float().contiguous().cpu() for k, v in heads.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "delit_version": __version__,
        "config": json.dumps(heads.config.to_dict()),
        "extra": json.dumps(extra or {}),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def read_heads_file(path: Path) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of a heads file, with one-line errors for bad files."""
    if not path.is_file():
        raise DelitError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DelitError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, metadata


def load_heads(path: str | Path, map_location: str = "cpu") -> DelitHeads:
    """Rebuild ``DelitHeads`` from a file written by ``save_heads`` (or a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / HEADS_FILENAME
    tensors, metadata = read_heads_file(path)
    vae_keys = [k for k in tensors if any(m in k for m in _VAE_MARKERS)]
    if vae_keys:
        raise DelitError(
            f"{path}: holds VAE weights (e.g. {vae_keys[0]}); a delit heads checkpoint must "
            "hold only the heads (pass the VAE with --vae)"
        )
    if metadata.get("format") != FORMAT:
        raise DelitError(
            f"{path}: not a delit heads checkpoint (metadata format is "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        cfg = DelitConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise DelitError(f"{path}: unusable heads config in metadata ({exc})") from None
    heads = DelitHeads(cfg)
    try:
        heads.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise DelitError(
            f"{path}: heads weights do not match their config ({first[0].strip()})"
        ) from None
    return heads.to(map_location)


def heads_metadata(path: str | Path) -> dict:
    """The ``extra`` dict stored by ``save_heads`` (training info), or {}."""
    _, metadata = read_heads_file(Path(path))
    return json.loads(metadata.get("extra", "{}"))

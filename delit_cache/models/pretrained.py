"""Heads files: only the heads (weights and latent statistics) plus their constructor arguments.

Three forms load (``load_heads``, ``DelitHeads.from_pretrained``):

- a folder written by ``save_pretrained``: ``config.json`` (format, version, ``DelitConfig``,
  training facts) and ``model.safetensors``, as diffusers and huggingface_hub lay them out;
- a single ``.safetensors`` file whose metadata carries the same (``save_heads``);
- a run folder of ``delit train-heads`` (its ``heads.safetensors``).

The frozen VAE is never written: a file that holds VAE weights is refused on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from delit_cache import __version__
from delit_cache.models.config import DelitConfig
from delit_cache.models.heads import DelitHeads
from delit_cache.utils.atomic import atomic_path, write_json
from delit_cache.utils.errors import DelitError

FORMAT = "delit-heads"
HEADS_FILENAME = "heads.safetensors"  # the single file in a run folder
CONFIG_NAME = "config.json"  # save_pretrained folder: config ...
WEIGHTS_NAME = "model.safetensors"  # ... and weights
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


def save_pretrained(heads: DelitHeads, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``folder/model.safetensors`` then ``folder/config.json`` (both atomic); the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_heads(heads, folder / WEIGHTS_NAME, extra)
    config = {
        "format": FORMAT,
        "delit_version": __version__,
        "config": heads.config.to_dict(),
        "extra": extra or {},
    }
    write_json(folder / CONFIG_NAME, config)
    return folder


def heads_weights_path(source: str | Path) -> Path:
    """The weights file of ``source``: a save_pretrained folder, a run folder or a file."""
    path = Path(source)
    if not path.is_dir():
        return path
    if (path / CONFIG_NAME).is_file():
        if not (path / WEIGHTS_NAME).is_file():
            raise DelitError(f"{path}: {CONFIG_NAME} without {WEIGHTS_NAME}")
        return path / WEIGHTS_NAME
    if (path / HEADS_FILENAME).is_file():
        return path / HEADS_FILENAME
    if (path / WEIGHTS_NAME).is_file():
        raise DelitError(
            f"{path}: {WEIGHTS_NAME} without {CONFIG_NAME} (save_pretrained writes both)"
        )
    raise DelitError(
        f"{path}: run folder without {HEADS_FILENAME} "
        f"(and not a save_pretrained folder: no {CONFIG_NAME} + {WEIGHTS_NAME})"
    )


def _folder_config(weights: Path) -> dict | None:
    """``config.json`` beside a save_pretrained ``model.safetensors`` (None for other forms)."""
    config_path = weights.parent / CONFIG_NAME
    if weights.name != WEIGHTS_NAME or not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DelitError(f"{config_path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DelitError(f"{config_path}: not a delit heads config (format is not {FORMAT!r})")
    return config


def _heads_config(path: Path, metadata: dict[str, str], folder_config: dict | None) -> DelitConfig:
    try:
        if folder_config is not None:
            return DelitConfig.from_dict(dict(folder_config["config"]))
        return DelitConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise DelitError(f"{path}: unusable heads config ({exc})") from None


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
    # numpy: one small torch op per tensor costs milliseconds on a busy 2-core machine
    bad = [
        k
        for k, v in tensors.items()
        if v.is_floating_point() and not np.isfinite(v.float().numpy()).all()
    ]
    if bad:
        raise DelitError(f"{path}: {len(bad)} tensors hold NaN or Inf (e.g. {bad[0]})")
    return tensors, metadata


def load_heads(source: str | Path, map_location: str = "cpu") -> DelitHeads:
    """Rebuild ``DelitHeads`` from a save_pretrained folder, a heads file or a run folder."""
    path = heads_weights_path(source)
    tensors, metadata = read_heads_file(path)
    folder_config = _folder_config(path)
    vae_keys = [k for k in tensors if any(m in k for m in _VAE_MARKERS)]
    if vae_keys:
        raise DelitError(
            f"{path}: holds VAE weights (e.g. {vae_keys[0]}); a delit heads checkpoint must "
            "hold only the heads (pass the VAE with --vae)"
        )
    if folder_config is None and metadata.get("format") != FORMAT:
        raise DelitError(
            f"{path}: not a delit heads checkpoint (metadata format is "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    heads = DelitHeads(_heads_config(path, metadata, folder_config))
    try:
        heads.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise DelitError(
            f"{path}: heads weights do not match their config ({first[0].strip()})"
        ) from None
    return heads.to(map_location)


def heads_metadata(source: str | Path) -> dict:
    """The ``extra`` dict (training facts) stored with the heads, or {}."""
    path = heads_weights_path(source)
    folder_config = _folder_config(path)
    if folder_config is not None:
        extra = folder_config.get("extra") or {}
        return extra if isinstance(extra, dict) else {}
    return json.loads(_read_metadata(path).get("extra", "{}"))


def _read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (its header only, not the tensors)."""
    if not path.is_file():
        raise DelitError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DelitError(f"{path}: not a readable safetensors file ({exc})") from None

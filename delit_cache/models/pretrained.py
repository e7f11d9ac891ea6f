"""Heads files: only the heads (weights and latent statistics) plus their constructor arguments.

Three forms load (``load_heads``, ``DelitHeads.from_pretrained``):

- a folder written by ``save_pretrained``: ``config.json`` (format, version, ``DelitConfig``,
  training facts) and ``model.safetensors``, as diffusers and huggingface_hub lay them out;
- a single ``.safetensors`` file whose metadata carries the same (``save_heads``);
- a run folder of ``delit train-heads`` (its ``heads.safetensors``).

The frozen VAE is never written: a file that holds VAE weights is refused on load, and so is
one whose weights are not floats or finite, whose latent std is not positive, or whose training
facts (``extra``: ``heads_metadata``, ``heads_facts``) are not a JSON object with a usable
``image_size``.
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
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # the safetensors dtypes heads weights may have


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
    """Tensors and metadata of a heads file, with one-line errors for bad files (unreadable,
    weights not stored as floats, NaN or Inf)."""
    if not path.is_file():
        raise DelitError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            names = f.keys()
            stored = {k: f.get_slice(k).get_dtype() for k in names}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DelitError(f"{path}: not a readable safetensors file ({exc})") from None
    not_float = sorted(k for k, dtype in stored.items() if dtype not in FLOAT_DTYPES)
    if not_float:
        raise DelitError(
            f"{path}: {not_float[0]} is stored as {stored[not_float[0]]}; heads weights must be "
            "floating point"
        )
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
    if not bool((heads.latent_std > 0).all()):  # latents are divided by it
        raise DelitError(f"{path}: latent_std must be positive in every channel")
    return heads.to(map_location)


def heads_metadata(source: str | Path) -> dict:
    """The ``extra`` dict (training facts) stored with the heads ({} when none); ``DelitError``
    naming the file when it is not a JSON object."""
    path = heads_weights_path(source)
    folder_config = _folder_config(path)
    if folder_config is not None:
        extra = folder_config.get("extra", {})
    else:
        try:
            extra = json.loads(_read_metadata(path).get("extra", "{}"))
        except ValueError as exc:
            raise DelitError(f"{path}: metadata 'extra' is not valid JSON ({exc})") from None
    if not isinstance(extra, dict):
        raise DelitError(f"{path}: metadata 'extra' must be a JSON object, got {extra!r:.40}")
    return extra


def heads_facts(source: str | Path) -> dict:
    """The training facts of the heads at ``source``: ``extra`` (``heads_metadata``),
    ``image_size`` (the size they were trained at, or None) and ``vae_fingerprint`` (of the VAE
    whose latents they were trained on, or None). ``DelitError`` naming the file when the
    recorded size is not a positive multiple of 8."""
    path = heads_weights_path(source)
    extra = heads_metadata(path)
    size = extra.get("image_size")
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8
    ):
        raise DelitError(
            f"{path}: metadata image_size {size!r:.40} is not a positive multiple of 8"
        )
    return {"extra": extra, "image_size": size, "vae_fingerprint": _fingerprint(extra)}


def _fingerprint(extra: dict) -> str | None:
    """The VAE fingerprint in training facts, under any of the keys it has been written as."""
    for key in ("vae_fingerprint", "fingerprint"):
        if isinstance(extra.get(key), str):
            return extra[key]
    vae = extra.get("vae")
    if isinstance(vae, dict) and isinstance(vae.get("fingerprint"), str):
        return vae["fingerprint"]
    return None


def require_same_training(
    label: str, facts: dict, fingerprint: str | None, image_size: int | None = None
) -> None:
    """``DelitError`` starting with ``label`` when the heads of ``facts`` (``heads_facts``)
    were trained on latents of a VAE other than the one of ``fingerprint``, or at a size other
    than ``image_size`` (None: not known, not checked). The rule for heads combined with
    others (``--init-from``, ``average-heads --blend``)."""
    theirs = facts.get("vae_fingerprint")
    if theirs and fingerprint and theirs != fingerprint:
        raise DelitError(
            f"{label}: trained on latents of another VAE "
            f"(fingerprint {theirs}, this one's {fingerprint})"
        )
    size = facts.get("image_size")
    if size and image_size and size != image_size:
        raise DelitError(f"{label}: trained at size {size}, these heads at {image_size}")


def _read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (its header only, not the tensors)."""
    if not path.is_file():
        raise DelitError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DelitError(f"{path}: not a readable safetensors file ({exc})") from None

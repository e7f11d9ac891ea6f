"""``load_wan_vae`` (any supported source -> ``WanVAE``), ``save_codec`` and the demo codec."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import torch

from delit_cache.utils.atomic import atomic_path
from delit_cache.utils.device import resolve_device, resolve_dtype
from delit_cache.utils.errors import DelitError
from delit_cache.vae.model import WAN21_LATENT_MEAN, WAN21_LATENT_STD, WanVAE
from delit_cache.vae.weights import (
    check_keys,
    extract_vae_state,
    infer_dims,
    read_weights,
    resolve_vae_file,
    state_fingerprint,
    unwrap_state_dict,
)

DEMO_SOURCE = "demo"
DEMO_CODEC_FILE = "demo_codec.safetensors"
CODEC_FORMAT = "delit-demo-codec"
CODEC_META_KEY = "delit_codec"  # safetensors metadata key holding the JSON config


def demo_codec_path() -> Path:
    """Where the packaged demo codec lives: ``delit_cache/assets/demo_codec.safetensors``."""
    return Path(str(resources.files("delit_cache"))) / "assets" / DEMO_CODEC_FILE


def _resolve_source(source: str | os.PathLike) -> Path:
    if isinstance(source, str) and source == DEMO_SOURCE:
        path = demo_codec_path()
        if not path.is_file():
            raise DelitError(
                f"{path}: the demo codec is not installed (pass --vae with a Wan 2.1 VAE "
                "file or folder instead)"
            )
        return path
    return resolve_vae_file(Path(source).expanduser())


def _codec_config(meta: Mapping[str, str], dim: int, path: Path) -> dict | None:
    """The JSON config a delit codec file carries in its metadata (``None`` if absent)."""
    if CODEC_META_KEY not in meta:
        return None
    try:
        config = json.loads(meta[CODEC_META_KEY])
        mean = [float(v) for v in config["latent_mean"]]
        std = [float(v) for v in config["latent_std"]]
        meta_dim, z_dim = int(config["dim"]), int(config["z_dim"])
    except (ValueError, KeyError, TypeError):
        raise DelitError(f"{path}: codec metadata {CODEC_META_KEY!r} is malformed") from None
    if z_dim != 16 or len(mean) != 16 or len(std) != 16:
        raise DelitError(f"{path}: codec metadata must describe 16 latent channels")
    if meta_dim != dim:
        raise DelitError(f"{path}: codec metadata says dim={meta_dim} but the weights have {dim}")
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise DelitError(f"{path}: codec latent_mean/latent_std must be finite, std > 0")
    return {**config, "latent_mean": mean, "latent_std": std}


def load_wan_vae(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    fast_single_frame: bool = True,
) -> WanVAE:
    """Load the frozen Wan 2.1 VAE (or a narrow model of the same layout) as a ``WanVAE``.

    ``source``: a model folder holding ``Wan2.1_VAE.pth`` (or ``wan_2.1_vae.safetensors``),
    such a ``.pth``/``.safetensors`` file, a larger checkpoint with the VAE under any key
    prefix, or ``"demo"`` (the packaged demo codec). Loading is strict: every key present
    with its shape. Latent mean/std come from the file's codec metadata when present,
    else the Wan 2.1 constants. Raises ``DelitError`` with a one-line reason otherwise.
    """
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    path = _resolve_source(source)
    top, meta = read_weights(path)
    state = extract_vae_state(unwrap_state_dict(top, path), path)
    del top
    state = {k: v.clone() for k, v in state.items()}  # own memory, not a map of the file
    dim, z_dim = infer_dims(state, path)
    config = _codec_config(meta, dim, path)
    from delit_cache.vae.diffsynth_wan import build_videovae

    model = build_videovae(dim, z_dim, device="meta")
    check_keys(state, {k: v.shape for k, v in model.state_dict().items()}, path)
    fingerprint = state_fingerprint(state)
    model.load_state_dict(state, strict=True, assign=True)
    mean = config["latent_mean"] if config else WAN21_LATENT_MEAN
    std = config["latent_std"] if config else WAN21_LATENT_STD
    vae = WanVAE(
        model,
        mean,
        std,
        fingerprint=fingerprint,
        source=str(source),
        fast_single_frame=fast_single_frame,
    )
    return vae.to(device=dev, dtype=dt)


def new_wan_vae(
    dim: int = 96,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    fast_single_frame: bool = True,
) -> WanVAE:
    """A ``WanVAE`` of width ``dim`` with DiffSynth's default random init (seeded).

    ``dim=96`` is the real architecture (random weights: for benchmarks, not images).
    """
    from delit_cache.vae.diffsynth_wan import build_videovae

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_videovae(dim, 16, device="cpu")
    vae = WanVAE(
        model,
        fingerprint=state_fingerprint(model.state_dict()),
        source=f"random(dim={dim}, seed={seed})",
        fast_single_frame=fast_single_frame,
    )
    return vae.to(device=resolve_device(device), dtype=resolve_dtype(dtype))


def save_codec(
    model: WanVAE,
    path: str | os.PathLike,
    extra_meta: Mapping[str, object] | None = None,
    *,
    latent_mean: Sequence[float] | None = None,
    latent_std: Sequence[float] | None = None,
    storage_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model``'s weights and config as a delit codec ``.safetensors`` file.

    Weights are stored as ``storage_dtype`` (float32 by default; float16 halves the file,
    which keeps the packaged demo codec under 10 MB) and load back in any compute dtype.

    The metadata holds ``format`` and, under ``"delit_codec"``, JSON with ``format``, ``dim``,
    ``z_dim``, ``latent_mean``, ``latent_std`` (from ``model.mean``/``model.std`` unless
    given) plus ``extra_meta`` (JSON-serialisable; it cannot override dim, z_dim or the
    latent statistics). Written to a temp file in the same folder, then renamed.
    """
    from safetensors.torch import save_file

    path = Path(path)
    mean = list(latent_mean) if latent_mean is not None else model.mean.tolist()
    std = list(latent_std) if latent_std is not None else model.std.tolist()
    config = {"format": CODEC_FORMAT, **dict(extra_meta or {})}
    config.update(dim=model.dim, z_dim=model.z_dim, latent_mean=mean, latent_std=std)
    try:
        meta = {"format": str(config["format"]), CODEC_META_KEY: json.dumps(config)}
    except TypeError as exc:
        raise ValueError(f"extra_meta must be JSON-serialisable: {exc}") from None
    tensors = {
        k: v.detach().to("cpu", storage_dtype).contiguous()
        for k, v in model.model.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path

"""Find, read and check Wan 2.1 VAE weights; every problem becomes a one-line ``DelitError``.

Accepted sources (see ``load_wan_vae``):

* a model folder holding one of ``VAE_FILE_NAMES`` (e.g. ``Wan2.2-I2V-A14B/Wan2.1_VAE.pth``);
* a ``.pth`` file: a raw state dict in the original Wan key layout, or one wrapped as
  ``{"state_dict": ...}`` / ``{"model_state": ...}``;
* a ``.safetensors`` file with the same keys (optionally a delit codec with metadata);
* a larger checkpoint holding the VAE under any key prefix (``vae.``, ``model.``,
  ``first_stage_model.`` ...), found through the key ending in ``ANCHOR_KEY``.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors; nothing is
ever fetched from the network.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from delit_cache.utils.errors import DelitError

ANCHOR_KEY = "decoder.middle.0.residual.0.gamma"  # identifies the Wan 2.1 VAE key layout
VAE_FILE_NAMES = (
    "Wan2.1_VAE.pth",
    "Wan2.1_VAE.safetensors",
    "wan_2.1_vae.safetensors",
    "wan_2.1_vae.pth",
)
WRAPPER_KEYS = ("state_dict", "model_state")
WAN21_HINT = "delit needs the Wan 2.1 VAE (Wan2.1_VAE.pth)"
WAN22_MESSAGE = f"is a Wan 2.2 VAE (48 latent channels), {WAN21_HINT}"

# (substring of a key, what such a file is) for files that are not a VAE at all.
FOREIGN_SIGNATURES = (
    ("blocks.0.self_attn.q.weight", "a Wan DiT (diffusion transformer) checkpoint"),
    ("patch_embedding.", "a Wan DiT (diffusion transformer) checkpoint"),
    ("text_embedding.", "a Wan DiT (diffusion transformer) checkpoint"),
    ("blocks.0.attn1.to_q.weight", "a diffusers Wan transformer checkpoint"),
    ("encoder.block.0.layer.", "a T5 text encoder"),
    ("shared.weight", "a T5 text encoder"),
    ("token_embedding.weight", "a text encoder (umT5)"),
    ("visual.transformer.", "a CLIP image encoder"),
    ("decoder.conv_in.weight", "a diffusers-format VAE (AutoencoderKL/AutoencoderKLWan keys)"),
)


def resolve_vae_file(path: Path) -> Path:
    """A folder or a file -> the weights file to read; ``DelitError`` if there is none."""
    if not path.exists():
        raise DelitError(f"{path}: no such file or folder")
    if path.is_file():
        return path
    for name in VAE_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    if (path / "Wan2.2_VAE.pth").is_file():
        raise DelitError(f"{path / 'Wan2.2_VAE.pth'}: {WAN22_MESSAGE}")
    looked_for = ", ".join(VAE_FILE_NAMES)
    raise DelitError(f"{path}: folder holds no Wan 2.1 VAE file (looked for {looked_for})")


def _looks_like_safetensors(path: Path) -> bool:
    """True when the file starts like a safetensors file (u64 header length, then '{')."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].split(". ")[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _vae_prefix(keys: list[str]) -> str | None:
    """The key prefix in front of ``ANCHOR_KEY`` (shortest if several), ``None`` if absent."""
    anchors = sorted((k for k in keys if k.endswith(ANCHOR_KEY)), key=len)
    return anchors[0][: -len(ANCHOR_KEY)] if anchors else None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file, on the CPU.

    Only the tensors under the VAE's key prefix are read; without a VAE in the file the
    other keys map to empty placeholders (their names are enough to say what it is).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            prefix = _vae_prefix(keys)
            if prefix is None:
                tensors = {k: torch.empty(0, device="meta") for k in keys}
            else:
                tensors = {k: f.get_tensor(k) for k in keys if k.startswith(prefix)}
    except Exception as exc:
        raise DelitError(
            f"{path}: cannot be read as a safetensors file (truncated or corrupt: {_first_line(exc)})"
        ) from None
    return tensors, meta


def read_torch(path: Path) -> object:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors."""
    try:
        try:  # memory-mapped: a big checkpoint is only read where the VAE lies
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as exc:
        text = str(exc)
        match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if match:
            raise DelitError(
                f"{path}: holds pickled Python objects ({match.group(1)}) besides tensors; "
                "refusing to load it (weights are read with weights_only=True)"
            ) from None
        reason = _first_line(exc)
        if "weights only load failed" in reason.lower():
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            reason = detail.group(1).strip() if detail else "unpickling failed"
        raise DelitError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated or not a torch file: {reason})"
        ) from None


def read_weights(path: Path) -> tuple[dict[str, object], dict[str, str]]:
    """Read a ``.pth``/``.pt``/``.ckpt``/``.safetensors`` file -> (top-level mapping, metadata)."""
    if path.stat().st_size == 0:
        raise DelitError(f"{path}: file is empty")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return read_safetensors(path)
    obj = read_torch(path)
    if not isinstance(obj, Mapping):
        raise DelitError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return dict(obj), {}


def unwrap_state_dict(obj: Mapping[str, object], path: Path) -> dict[str, torch.Tensor]:
    """Strip ``{"state_dict": ...}`` / ``{"model_state": ...}`` wrappers; keep tensor entries."""
    while True:
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise DelitError(f"{path}: holds no tensors (keys: {_preview(list(obj))})")
    return tensors


def _preview(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:count])
    return shown + (f" and {len(keys) - count} more" if len(keys) > count else "")


def describe_foreign(keys: list[str]) -> str | None:
    """What a non-VAE checkpoint looks like (from its key names), or ``None`` if unknown."""
    for needle, what in FOREIGN_SIGNATURES:
        hit = next((k for k in keys if needle in k), None)
        if hit is not None:
            return f"{what} (key {hit!r})"
    return None


def extract_vae_state(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The Wan VAE part of a checkpoint, with any key prefix removed.

    The prefix is whatever precedes ``ANCHOR_KEY``; with several candidates the shortest wins.
    The tensors may still be memory-mapped from the file (see ``read_torch``).
    """
    prefix = _vae_prefix(list(tensors))
    if prefix is None:
        keys = sorted(tensors)
        what = describe_foreign(keys)
        if what is not None:
            raise DelitError(f"{path}: looks like {what}, not a VAE; {WAN21_HINT}")
        raise DelitError(
            f"{path}: no Wan 2.1 VAE weights found (no key ending in {ANCHOR_KEY!r}; "
            f"keys start {_preview(keys)})"
        )
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def infer_dims(state: dict[str, torch.Tensor], path: Path) -> tuple[int, int]:
    """(dim, z_dim) of a Wan VAE state dict; rejects Wan 2.2 (48 channels) and odd layouts."""
    enc = state.get("encoder.conv1.weight")
    conv2 = state.get("conv2.weight")
    dec = state.get("decoder.conv1.weight")
    z_dim = None
    if conv2 is not None and conv2.dim() == 5:
        z_dim = int(conv2.shape[0])
    elif dec is not None and dec.dim() == 5:
        z_dim = int(dec.shape[1])
    if z_dim == 48 or (enc is not None and enc.dim() == 5 and enc.shape[1] == 12):
        raise DelitError(f"{path}: {WAN22_MESSAGE}")
    if z_dim is not None and z_dim != 16:
        raise DelitError(f"{path}: VAE has {z_dim} latent channels, {WAN21_HINT} (16 channels)")
    if enc is None:
        raise DelitError(f"{path}: missing key 'encoder.conv1.weight' of the Wan 2.1 VAE")
    if enc.dim() != 5 or tuple(enc.shape[1:]) != (3, 3, 3, 3):
        raise DelitError(
            f"{path}: key 'encoder.conv1.weight' has shape {tuple(enc.shape)}, "
            "expected (dim, 3, 3, 3, 3)"
        )
    return int(enc.shape[0]), 16


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], path: Path) -> None:
    """Every expected key present with its shape, nothing extra; else name the first few."""
    missing = [k for k in expected if k not in state]
    if missing:
        raise DelitError(f"{path}: missing {len(missing)} VAE key(s): {_preview(missing)}")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k])]
    if wrong:
        details = ", ".join(
            f"{k!r} {tuple(state[k].shape)} (expected {tuple(expected[k])})" for k in wrong[:3]
        )
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise DelitError(f"{path}: {len(wrong)} VAE key(s) with the wrong shape: {details}{more}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise DelitError(f"{path}: {len(extra)} unexpected VAE key(s): {_preview(extra)}")
    bad = [k for k in expected if not state[k].is_floating_point()]
    if bad:
        raise DelitError(f"{path}: VAE key(s) not floating point: {_preview(bad)}")


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """First 16 hex chars of sha256 over sorted key names, shapes, dtypes and tensor bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(json.dumps([list(tensor.shape), str(tensor.dtype)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]

"""Checks on a heads checkpoint beyond what ``load_heads`` does, each naming the file.

``checked_heads`` (which ``resolve_checkpoint`` uses) loads heads and their training facts,
refusing weights not stored as floats, a latent std that is not positive, an ``extra`` that is
not a JSON object and an ``image_size`` in it that is not a positive multiple of 8.
``require_same_training`` is the rule for heads combined with others (``--init-from``,
``average-heads --blend``).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from delit_cache.models import DelitHeads
from delit_cache.models.pretrained import heads_metadata, load_heads
from delit_cache.utils.errors import DelitError

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # the safetensors dtypes heads weights may have


def checked_heads(path: Path) -> tuple[DelitHeads, dict]:
    """The heads in the weights file ``path`` and their facts: ``extra`` (the training
    metadata), ``image_size`` (int or None) and ``vae_fingerprint`` (or None)."""
    heads = load_checked_heads(path)
    extra = training_facts(path)
    facts = {
        "extra": extra,
        "image_size": training_size(extra, path),
        "vae_fingerprint": training_fingerprint(extra),
    }
    return heads, facts


def load_checked_heads(path: Path) -> DelitHeads:
    """``load_heads``, refusing weights not stored as floats and a latent std that is not
    positive in every channel (latents are divided by it)."""
    heads = load_heads(path)
    with safe_open(str(path), framework="pt") as f:
        names = f.keys()
        stored = {k: f.get_slice(k).get_dtype() for k in names}
    not_float = sorted(k for k, dtype in stored.items() if dtype not in FLOAT_DTYPES)
    if not_float:
        raise DelitError(
            f"{path}: {not_float[0]} is stored as {stored[not_float[0]]}; heads weights must be "
            "floating point"
        )
    if not bool((heads.latent_std > 0).all()):
        raise DelitError(f"{path}: latent_std must be positive in every channel")
    return heads


def training_facts(path: Path) -> dict:
    """The ``extra`` metadata (training facts) of the heads at ``path``; ``DelitError`` when it
    is not a JSON object."""
    try:
        extra = heads_metadata(path)
    except ValueError as exc:
        raise DelitError(f"{path}: metadata 'extra' is not valid JSON ({exc})") from None
    if not isinstance(extra, dict):
        raise DelitError(f"{path}: metadata 'extra' must be a JSON object, got {extra!r:.40}")
    return extra


def training_size(extra: dict, path: Path) -> int | None:
    """The model size the heads were trained at (None when not recorded); ``DelitError``
    naming ``path`` when it is not a positive multiple of 8."""
    size = extra.get("image_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
        raise DelitError(
            f"{path}: metadata image_size {size!r:.40} is not a positive multiple of 8"
        )
    return size


def training_fingerprint(extra: dict) -> str | None:
    """The fingerprint of the VAE the heads were trained on, as recorded in the metadata."""
    for key in ("vae_fingerprint", "fingerprint"):
        if isinstance(extra.get(key), str):
            return extra[key]
    vae = extra.get("vae")
    if isinstance(vae, dict) and isinstance(vae.get("fingerprint"), str):
        return vae["fingerprint"]
    return None


def require_same_training(
    label: str, info: dict, fingerprint: str | None, image_size: int | None = None
) -> None:
    """``DelitError`` starting with ``label`` when the heads of ``info`` (from
    ``resolve_checkpoint``) were trained on latents of a VAE other than the one of
    ``fingerprint``, or at a size other than ``image_size`` (None: not known, not checked)."""
    theirs = info.get("vae_fingerprint")
    if theirs and fingerprint and theirs != fingerprint:
        raise DelitError(
            f"{label}: trained on latents of another VAE "
            f"(fingerprint {theirs}, this one's {fingerprint})"
        )
    size = info.get("image_size")
    if size and image_size and size != image_size:
        raise DelitError(f"{label}: trained at size {size}, these heads at {image_size}")

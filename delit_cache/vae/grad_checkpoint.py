"""Activation checkpointing for the Wan decoder (train-lora: backward through the decoder).

``checkpoint_decoder_blocks`` makes each block of ``decoder.middle`` and ``decoder.upsamples``
keep only its input for backward and recompute its insides then (``torch.utils.checkpoint``,
non-reentrant). It only does so with gradients on and no real frame cache (one frame, the
``NullCache`` path): recomputing a block would otherwise write its frame cache twice.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _wrap(block: torch.nn.Module, null_cache: type) -> None:
    inner = block.forward

    def forward(x, *args):
        cache = args[0] if args else None
        if torch.is_grad_enabled() and (cache is None or isinstance(cache, null_cache)):
            return checkpoint(inner, x, *args, use_reentrant=False)
        return inner(x, *args)

    block.forward = forward
    block.delit_checkpointed = True


def checkpoint_decoder_blocks(vae) -> int:
    """Checkpoint every middle and upsample block of ``vae``'s decoder; return how many
    (idempotent: blocks already wrapped are skipped)."""
    from delit_cache.vae.diffsynth_wan import NullCache

    decoder = vae.model.decoder
    count = 0
    for block in [*decoder.middle, *decoder.upsamples]:
        if not getattr(block, "delit_checkpointed", False):
            _wrap(block, NullCache)
        count += 1
    return count

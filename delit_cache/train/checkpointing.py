"""Checkpoint policy of a run: when to write, what a checkpoint holds, and the final heads.

Checkpoints (``RUN/checkpoints``, see ``train.state``) are written every ``ckpt_every``
steps and at the end; they hold every RNG state, so a resumed run ends with the weights of
an uninterrupted one. The finished run writes ``RUN/heads.safetensors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from delit_cache.cache.store import LatentCache
from delit_cache.models.heads import DelitHeads
from delit_cache.models.pretrained import HEADS_FILENAME, save_heads
from delit_cache.train import state as trainstate
from delit_cache.train.config import TrainConfig


def is_checkpoint_step(step: int, total_steps: int, cfg: TrainConfig) -> bool:
    """Whether the run writes a checkpoint after ``step``: every ``ckpt_every`` and the last."""
    return step % cfg.ckpt_every == 0 or step == total_steps


def training_state(heads: DelitHeads, opt, sched, step: int, cfg: TrainConfig) -> dict[str, Any]:
    """Everything ``--resume`` needs (weights-only loadable)."""
    return {
        "heads": {k: v.detach().cpu() for k, v in heads.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": step,
        "rng": trainstate.rng_state(),
        "config": cfg.to_dict(),
    }


def restore_training_state(run: Path, heads: DelitHeads, opt, sched) -> int:
    """Load ``RUN/checkpoints/latest.pt`` (or the newest intact ``step_XXXXXX.pt``) into heads,
    optimiser, scheduler and RNGs; the step."""
    state = trainstate.load_resumable(run)
    heads.load_state_dict(state["heads"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    trainstate.set_rng_state(state["rng"])
    return int(state["step"])


def heads_extra(cache: LatentCache, step: int, train_samples: int = 0) -> dict[str, Any]:
    """Training facts stored beside the heads weights."""
    meta = cache.metadata
    return {
        "step": step,
        "train_samples": train_samples,
        "cache": str(cache.path.resolve()),
        "vae_fingerprint": meta.get("vae_fingerprint"),
        "image_size": meta.get("image_size"),
        "encode_dtype": meta.get("encode_dtype"),
    }


def write_final_heads(
    heads: DelitHeads, run: Path, cache: LatentCache, step: int, train_samples: int = 0
) -> Path:
    """``RUN/heads.safetensors``: the finished heads with their training facts."""
    return save_heads(heads, run / HEADS_FILENAME, heads_extra(cache, step, train_samples))

"""The optimiser of a run: AdamW with a warm-up, then a constant or cosine learning rate."""

from __future__ import annotations

import math

import torch
from torch import nn

from delit_cache.train.config import TrainConfig
from delit_cache.utils.errors import DelitError


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """LR factor per step: linear warm-up, then constant or cosine down to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def hold_fixed_except(heads: nn.Module, prefixes: tuple[str, ...]) -> None:
    """Turn off gradients of every parameter outside ``prefixes`` (module paths such as
    ``env_decoder.light_head``; empty: train everything). ``DelitError`` for a prefix that
    names no parameter."""
    if not prefixes:
        return
    names = [name for name, _ in heads.named_parameters()]
    for prefix in prefixes:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            raise DelitError(f"train_only: {prefix!r} names no parameter of these heads")
    for name, p in heads.named_parameters():
        p.requires_grad_(any(name == q or name.startswith(q + ".") for q in prefixes))


def make_optimizer(heads: nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW (no weight decay on norms/biases/embeddings) over the parameters that train
    (``cfg.train_only``; the others get no gradients), and its LambdaLR scheduler."""
    hold_fixed_except(heads, cfg.train_only)
    decay, no_decay = [], []
    for name, p in heads.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(("queries", "token_pos")) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))
    return opt, sched

"""The config of a ``delit train-lora`` run (``RUN/config.yaml``) and how ``--resume`` reads it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delit_cache.utils.errors import DelitError
from delit_cache.utils.fields import field_type_problem

MIXED_PRECISION = ("no", "bf16")


@dataclass
class LoraTrainConfig:
    """Everything that decides a train-lora run's result."""

    lora_rank: int = 16  # LoRA rank of every decoder adapter
    lora_alpha: float = 16.0  # LoRA alpha (update scaled by alpha / rank)
    train_heads: bool = False  # also train the heads' flat projection (env path untouched)
    steps: int = 300  # optimiser steps
    batch_size: int = 4  # samples per step and process
    lr: float = 2e-4  # peak learning rate of the adapters
    heads_lr: float = 2e-5  # peak learning rate of the flat projection (--train-heads)
    warmup_steps: int = 20  # linear warm-up steps, then constant
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm (0: off)
    mixed_precision: str = "no"  # "no" or "bf16" autocast for heads and decoder
    activation_checkpointing: bool = True  # recompute decoder blocks in backward (memory)
    seed: int = 0  # data order seed
    log_every: int = 10  # steps between TensorBoard scalars
    ckpt_every: int = 50  # steps between checkpoints (and at the end)
    keep_last: int = 3  # step checkpoints kept
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    image_size: int = 0  # model size in pixels (0: the heads' training size, else 512)

    def check(self) -> None:
        """``DelitError`` naming the first bad value."""
        positive = ("lora_rank", "steps", "batch_size", "log_every", "ckpt_every", "keep_last")
        for name in positive:
            if getattr(self, name) < 1:
                raise DelitError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        for name in ("lora_alpha", "lr", "heads_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise DelitError(f"--{name.replace('_', '-')} {value}: must be a finite number > 0")
        for name in ("warmup_steps", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise DelitError(f"--{name.replace('_', '-')} {value}: must be >= 0")
        if self.mixed_precision not in MIXED_PRECISION:
            raise DelitError(f"--mixed-precision {self.mixed_precision}: expected no or bf16")
        if self.image_size < 0 or self.image_size % 8:
            raise DelitError(f"image_size {self.image_size}: must be a multiple of 8")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from_dict(data: dict[str, Any], where: str) -> LoraTrainConfig:
    names = {f.name for f in dataclasses.fields(LoraTrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DelitError(f"{where}: unknown train-lora setting {unknown[0]!r}")
    problem = field_type_problem(LoraTrainConfig, data)
    if problem:
        raise DelitError(f"{where}: {problem}")
    cfg = LoraTrainConfig(**data)
    cfg.check()
    return cfg


def resolve_lora_config(out: Path, overrides: dict[str, Any], resume: bool) -> LoraTrainConfig:
    """A new run's config (defaults + CLI values) or, on ``--resume``, the saved one; on
    resume only ``steps`` may change and every other given value must match."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not resume:
        return _from_dict(given, "command line")
    saved = out / "config.yaml"
    if not saved.is_file():
        raise DelitError(f"{saved}: missing, nothing to resume (run without --resume)")
    import yaml

    try:
        data = yaml.safe_load(saved.read_text()) or {}
    except yaml.YAMLError:
        raise DelitError(f"{saved}: not valid YAML") from None
    if not isinstance(data, dict):
        raise DelitError(f"{saved}: not a train-lora config")
    for name, value in given.items():
        if name in ("steps", "device"):
            data[name] = value
        elif data.get(name) != value:
            raise DelitError(
                f"{saved}: --{name.replace('_', '-')} {value} differs from the run's "
                f"{data.get(name)}; start a new run to change it"
            )
    return _from_dict(data, str(saved))


def save_lora_config(cfg: LoraTrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    from delit_cache.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

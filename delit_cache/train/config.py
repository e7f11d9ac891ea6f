"""``TrainConfig``: every setting of ``delit train-heads``, loaded from YAML, CLI on top.

A YAML file holds any subset of the fields below (unknown keys are an error); the heads'
architecture goes under ``model:`` with ``DelitConfig`` field names. Named configs live in
the repository's ``configs/`` folder (``default.yaml``, ``tiny.yaml``), shipped in the wheel
as ``delit_cache/configs/``; a name without a path resolves there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from delit_cache.models import DelitHeads
from delit_cache.models.config import DelitConfig
from delit_cache.utils.errors import DelitError
from delit_cache.utils.fields import field_type_problem

_PACKAGE = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """The named configs: ``delit_cache/configs`` once installed (mapped in at build time),
    else the source tree's top-level ``configs/`` beside the package."""
    installed = _PACKAGE / "configs"
    return installed if installed.is_dir() else _PACKAGE.parent / "configs"


@dataclass
class TrainConfig:
    """Settings of one training run (``RUN/config.yaml`` holds the resolved copy)."""

    model: dict[str, Any] = field(default_factory=dict)  # DelitConfig overrides (architecture)
    steps: int | None = None  # optimiser steps; wins over ``epochs`` when both are set
    epochs: int | None = 10  # passes over the training split (used when ``steps`` is None)
    batch_size: int = 16  # samples per step and per process (global = this x world size)
    lr: float = 3.0e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas
    schedule: str = "cosine"  # "cosine" (decay to min_lr_ratio * lr) or "constant"
    warmup_steps: int = 200  # linear warm-up steps from 0 to lr
    min_lr_ratio: float = 0.05  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm (0 = no clipping)
    seed: int = 0  # weights init, data order and split
    mixed_precision: str = "no"  # "no", "bf16" (autocast of the forward pass) or "auto"
    # ("auto": bf16 where the device has fast bf16 units, see utils.device.has_fast_bf16)
    flat_loss: str = "l1"  # "l1" or "mse" between flat latents (normalised latent space)
    flat_weight: float = 1.0  # weight of the flat latent loss
    flat_detail_weight: float = 0.0  # weight of L1 between the flat latents' neighbour differences
    env_weight: float = 1.0  # weight of the L1 loss on the four-channel env encoding
    env_log_weight: float = 2.0  # extra factor on the encoding's log channel (HDR magnitude)
    sphere_diffuse_weight: float = 0.1  # weight of the diffuse-sphere loss (log1p space)
    sphere_matte_weight: float = 0.1  # weight of the matte-silver-sphere loss (log1p space)
    sphere_colour_weight: float = 0.0  # weight of the diffuse sphere's per-pixel RGB direction
    # weight of the same RGB-direction term on the diffuse sphere of the maps raised to 1/2.4
    # (the protocol's tone curve: what the diffuse angular error scores, where the sky and
    # walls weigh far more than in the linear map, whose colour the sun dominates)
    sphere_tone_colour_weight: float = 0.0
    light_dir_weight: float = 0.0  # weight of 1 - cos(predicted, true) brightest-light direction
    env_nrmse_weight: float = 0.0  # weight of the RMSE of percentile-normalised x**(1/2.4) env
    # maps at 64x128, solid-angle weighted (what the mirror sphere's nRMSE scores)
    light_head_weight: float = 0.0  # weight of 1 - cos(light head's, true brightest direction)
    light_sharpness: float = 4.0  # the prediction's light is a softmax of this x log luminance
    sphere_size: int = 32  # side in pixels of the spheres rendered for the loss
    sphere_env_size: tuple[int, int] = (32, 64)  # env maps are area-resampled to this to render
    # parameter-name prefixes to train, the rest held fixed (empty: train all), e.g.
    # ["env_decoder.light_head"] to fit a new light head on top of trained heads
    train_only: tuple[str, ...] = ()
    init_from: str = ""  # start from these heads (file, run folder or "demo"; "" = seeded init)
    max_samples: int = 0  # use only the first N training samples (0 = all; learning curves)
    val_fraction: float = 0.05  # share of samples (by key hash) held out for validation
    val_every: int = 500  # validate every N steps (and at the end; 0 = only at the end)
    val_batches: int = 0  # cap on validation batches (0 = the whole split)
    log_every: int = 25  # log training losses to TensorBoard every N steps
    ckpt_every: int = 1000  # write RUN/checkpoints every N steps (and at the end)
    keep_last: int = 3  # rotating step_XXXXXX.pt checkpoints kept
    in_memory: str = "auto"  # "auto" (load the cache when it fits), "yes" or "no" (per batch)
    memory_fraction: float = 0.5  # "auto": load when the cache is below this share of free RAM
    device: str = "auto"  # "auto" (cuda:LOCAL_RANK when available, else cpu), "cpu", "cuda"

    def heads_config(self) -> DelitConfig:
        """The ``DelitConfig`` of ``model:`` (defaults for fields not given)."""
        try:
            return DelitConfig.from_dict(dict(self.model))
        except (ValueError, TypeError) as exc:
            raise DelitError(f"model: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        data["sphere_env_size"] = list(self.sphere_env_size)
        data["train_only"] = list(self.train_only)
        return data

    def validate(self, where: str = "config") -> None:
        """Raise ``DelitError`` for values no run can use."""
        problems = []
        if self.steps is None and self.epochs is None:
            problems.append("one of steps or epochs must be set")
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1, got {value}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        problems += [
            f"{f.name} must be a finite number, got {getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name))
        ]
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        choices = {
            "schedule": ("cosine", "constant"),
            "mixed_precision": ("no", "bf16", "auto"),
            "flat_loss": ("l1", "mse"),
            "in_memory": ("auto", "yes", "no"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.keep_last < 1 or self.ckpt_every < 1:
            problems.append("keep_last and ckpt_every must be >= 1")
        problems += _range_problems(self)
        if problems:
            raise DelitError(f"{where}: {problems[0]}")
        heads = self.heads_config()
        problem = _model_problem(heads)
        if problem:
            raise DelitError(f"{where}: model: {problem}")
        if self.light_head_weight > 0 and not heads.light_head:
            raise DelitError(f"{where}: light_head_weight needs model.light_head: true")


# settings that are counts or amounts, where a negative number means nothing
NON_NEGATIVE = ("grad_clip", "warmup_steps", "max_samples", "val_every", "val_batches")


def _range_problems(cfg: TrainConfig) -> list[str]:
    """Settings outside the range a run can use: negative loss weights, counts and grad_clip,
    a cosine floor outside [0, 1], sizes and intervals below 1."""
    names = [f.name for f in dataclasses.fields(cfg) if f.name.endswith("_weight")]
    problems = [
        f"{name} must be >= 0, got {getattr(cfg, name)}"
        for name in (*names, *NON_NEGATIVE)
        if getattr(cfg, name) < 0
    ]
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        problems.append(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    if not cfg.light_sharpness > 0:
        problems.append(f"light_sharpness must be > 0, got {cfg.light_sharpness}")
    for name in ("log_every", "sphere_size"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if min(cfg.sphere_env_size) < 1:
        problems.append(f"sphere_env_size must be >= 1, got {list(cfg.sphere_env_size)}")
    return problems


def _model_problem(heads: DelitConfig) -> str | None:
    """Why heads of this architecture cannot be built (None when they can): built on the
    meta device, which checks the layers' shapes without allocating them."""
    if heads.env_dim % heads.env_heads:
        return f"env_dim {heads.env_dim} must be a multiple of env_heads {heads.env_heads}"
    try:
        with torch.device("meta"):
            DelitHeads(heads)
    except ValueError as exc:
        return str(exc)
    return None


MERGE = "tag:yaml.org,2002:merge"  # the tag of a ``<<`` merge key


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (the safe loader
    keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} on line {line}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def resolve_config_path(name: str | Path) -> Path:
    """A config file path: as given if it exists, else ``configs/<name>[.yaml]``."""
    path = Path(name)
    if path.is_file():
        return path
    folder = config_dir()
    for candidate in (folder / path.name, folder / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    raise DelitError(f"{name}: no such config file (nor in {folder})")


def config_from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a ``TrainConfig`` from a mapping; unknown keys raise ``DelitError``."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DelitError(f"{where}: unknown training config keys {unknown}")
    problem = field_type_problem(TrainConfig, data)
    if problem:
        raise DelitError(f"{where}: {problem}")
    data = dict(data)
    for name in ("betas", "sphere_env_size", "train_only"):
        if name in data:
            data[name] = tuple(data[name])
    if data.get("model") is None:
        data["model"] = {}
    cfg = TrainConfig(**data)
    cfg.validate(where)
    return cfg


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load a YAML config (defaults when ``path`` is None) and apply non-None ``overrides``."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        file = resolve_config_path(path)
        where = str(file)
        try:
            loaded = yaml.load(file.read_text(), Loader=UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            raise DelitError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from None
        except UnicodeDecodeError:
            raise DelitError(f"{file}: not a text file (a training config is YAML)") from None
        if not isinstance(loaded, dict):
            raise DelitError(f"{file}: a training config must be a YAML mapping")
        data.update(loaded)
    set_overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "steps" in set_overrides and "epochs" not in set_overrides:
        data["epochs"] = None
    if "epochs" in set_overrides and "steps" not in set_overrides:
        data["steps"] = None
    data.update(set_overrides)
    return config_from_dict(data, where)


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from delit_cache.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

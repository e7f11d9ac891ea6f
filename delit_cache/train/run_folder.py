"""The run folder of ``delit train-heads``: its options, its config, and what is written first.

``RUN/config.yaml`` (resolved config), ``RUN/mean_env.exr`` (mean linear HDR env of the
training split, for the mean-env baseline) and ``RUN/tb/`` (TensorBoard) are written before
the first step; checkpoints and heads are ``train.checkpointing``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delit_cache.cache.store import LatentCache
from delit_cache.train import state as trainstate
from delit_cache.train.config import TrainConfig, config_from_dict, load_config, save_config
from delit_cache.utils.errors import DelitError


@dataclass
class RunOptions:
    """Command-line level settings that are not part of the config."""

    cache: Path  # the latent cache
    out: Path  # the run folder
    config: str | Path | None = None  # YAML config (path or name in configs/)
    overrides: dict[str, Any] | None = None  # CLI values over the YAML (None = unset)
    resume: bool = False  # continue from RUN/checkpoints/latest.pt
    progress: bool = True  # progress bar on rank 0


def resolve_run_config(opts: RunOptions) -> TrainConfig:
    """The config of the run: fresh from YAML + CLI, or the saved one on ``--resume``.

    On resume only ``steps``/``epochs`` may change; other CLI values must match.
    """
    saved = opts.out / "config.yaml"
    if not opts.resume:
        return load_config(opts.config, opts.overrides)
    if not saved.is_file():
        raise DelitError(f"{saved}: missing, nothing to resume (run without --resume)")
    import yaml

    cfg = config_from_dict(yaml.safe_load(saved.read_text()) or {}, str(saved))
    data = cfg.to_dict()
    for name, value in (opts.overrides or {}).items():
        if value is None:
            continue
        if name in ("steps", "epochs"):
            data[name] = value
            data["epochs" if name == "steps" else "steps"] = None
        elif data.get(name) != (list(value) if isinstance(value, tuple) else value):
            raise DelitError(
                f"{saved}: --{name.replace('_', '-')} {value} differs from the run's "
                f"{data.get(name)}; start a new run to change it"
            )
    return config_from_dict(data, str(saved))


def write_mean_env(cache: LatentCache, train_idx: list[int], path: Path) -> None:
    """``RUN/mean_env.exr``: mean linear HDR env of the training split (float32 EXR)."""
    from delit_cache.data.imageio import write_exr

    write_exr(path, cache.mean_env(train_idx), half=False)


def prepare_run_folder(
    opts: RunOptions, cfg: TrainConfig, cache: LatentCache, train_idx: list[int], step: int
):
    """Rank 0: refuse to overwrite a run, write config and mean env; return a TensorBoard
    writer that drops events after ``step`` (a resumed run's lost tail)."""
    out = opts.out
    if not opts.resume and (out / trainstate.CKPT_DIR / trainstate.LATEST).exists():
        raise DelitError(f"{out}: holds a run already (pass --resume, or a new --out)")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_mean_env(cache, train_idx, out / "mean_env.exr")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"), purge_step=step or None)

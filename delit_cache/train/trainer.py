"""``delit train-heads``: train the heads on the latent cache (no VAE is loaded).

Run folder ``RUN/``: ``config.yaml`` (resolved config), ``tb/`` (TensorBoard),
``checkpoints/latest.pt`` + ``checkpoints/step_XXXXXX.pt`` (see ``trainstate``),
``heads.safetensors`` (``checkpoint.save_heads``), ``mean_env.exr`` (mean linear HDR env of
the training split, for the mean-env baseline).

Determinism: the data order of epoch e is a permutation seeded by (seed, e); step s reads
batch ``s mod steps_per_epoch`` of epoch ``s // steps_per_epoch``; checkpoints hold every
RNG state. So a run resumed from the step-k checkpoint ends with the weights of an
uninterrupted run (on CPU, same threads). Multi-process (DDP): launch with torchrun or
``accelerate launch``; each rank takes its slice of the global batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from delit_cache.cache.store import DATA_ARRAYS, LatentCache
from delit_cache.models.heads import DelitHeads, create_heads
from delit_cache.models.pretrained import save_heads
from delit_cache.train import state as trainstate
from delit_cache.train.config import TrainConfig, config_from_dict, load_config, save_config
from delit_cache.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup,
    dist_info,
    init_distributed,
)
from delit_cache.train.losses import compute_losses, env_metrics
from delit_cache.utils.errors import DelitError

# ----------------------------------------------------------------------------------------------
# Data


def available_memory() -> int:
    """Bytes of memory available (``MemAvailable``), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class CacheData:
    """Samples ``indices`` of a cache, in memory (float32 tensors) or read per batch."""

    def __init__(self, cache: LatentCache, indices: list[int], in_memory: bool):
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.arrays: dict[str, torch.Tensor] | None = None
        if in_memory:
            self.arrays = {n: torch.from_numpy(cache.read(n, self.indices)) for n in DATA_ARRAYS}

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, positions: torch.Tensor | np.ndarray, device: torch.device) -> dict:
        """Tensors of the samples at ``positions`` (into ``indices``) on ``device``."""
        pos = torch.as_tensor(positions, dtype=torch.long)
        if self.arrays is not None:
            data = {n: a.index_select(0, pos) for n, a in self.arrays.items()}
        else:
            idx = self.indices[pos.numpy()]
            data = {n: torch.from_numpy(self.cache.read(n, idx)) for n in DATA_ARRAYS}
        return {n: t.to(device, non_blocking=True) for n, t in data.items()}


def decide_in_memory(cache: LatentCache, cfg: TrainConfig) -> bool:
    """Whether to load the cache into memory (``in_memory`` auto/yes/no)."""
    if cfg.in_memory != "auto":
        return cfg.in_memory == "yes"
    free = available_memory()
    return free == 0 or cache.nbytes() < cfg.memory_fraction * free


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Permutation of ``range(n)`` for ``epoch``: a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass(frozen=True)
class Schedule:
    """Which samples each step reads."""

    n: int  # training samples
    batch_size: int  # per process
    world_size: int  # processes
    seed: int  # data-order seed

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n // self.global_batch)

    def positions(self, step: int, rank: int) -> torch.Tensor:
        """Positions (into the training indices) read by ``rank`` at 0-based ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.n, self.seed, epoch)
        if self.n < self.global_batch:
            order = order.repeat(math.ceil(self.global_batch / self.n))
        g = order[i * self.global_batch : (i + 1) * self.global_batch]
        return g[rank * self.batch_size : (rank + 1) * self.batch_size]


# ----------------------------------------------------------------------------------------------
# Optimiser


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


def make_optimizer(heads: nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW (no weight decay on norms/biases/embeddings) and its LambdaLR scheduler."""
    decay, no_decay = [], []
    for name, p in heads.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith(("queries", "token_pos")) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))
    return opt, sched


# ----------------------------------------------------------------------------------------------
# Run setup


@dataclass
class RunOptions:
    """Command-line level settings that are not part of the config."""

    cache: Path  # the latent cache
    out: Path  # the run folder
    config: str | Path | None = None  # YAML config (path or name in configs/)
    overrides: dict[str, Any] | None = None  # CLI values over the YAML (None = unset)
    resume: bool = False  # continue from RUN/checkpoints/latest.pt
    stop_after_step: int | None = None  # test hook: checkpoint then SIGKILL after this step
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


def pick_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    """``cfg.device`` with ``auto``/``cuda`` resolved to this rank's GPU."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DelitError("device cuda: CUDA is not available")
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def write_mean_env(cache: LatentCache, train_idx: list[int], path: Path) -> None:
    """``RUN/mean_env.exr``: mean linear HDR env of the training split (float32 EXR)."""
    from delit_cache.data.imageio import write_exr

    write_exr(path, cache.mean_env(train_idx), half=False)


def heads_extra(cache: LatentCache, step: int) -> dict[str, Any]:
    """Training facts stored beside the heads weights."""
    meta = cache.metadata
    return {
        "step": step,
        "cache": str(cache.path.resolve()),
        "vae_fingerprint": meta.get("vae_fingerprint"),
        "image_size": meta.get("image_size"),
        "encode_dtype": meta.get("encode_dtype"),
    }


def initial_heads(cfg: TrainConfig, cache: LatentCache, train_idx: list[int]) -> DelitHeads:
    """A run's step-0 heads: seeded init, standardising latents with the training split's
    per-channel statistics."""
    heads = create_heads(cfg.heads_config(), seed=cfg.seed)
    heads.set_latent_stats(*cache.latent_stats(train_idx))
    return heads


# ----------------------------------------------------------------------------------------------
# The loop


class Trainer:
    """One training run (any rank); ``run()`` trains and returns the final heads."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.info = dist_info()
        self.cfg = resolve_run_config(opts)
        self.cache = LatentCache(opts.cache)
        if len(self.cache) == 0:
            raise DelitError(f"{opts.cache}: the cache holds no finished samples")
        self.train_idx, self.val_idx = self.cache.split(self.cfg.val_fraction, self.cfg.seed)
        if self.cfg.max_samples > 0:
            self.train_idx = self.train_idx[: self.cfg.max_samples]
        in_memory = decide_in_memory(self.cache, self.cfg)
        self.train_data = CacheData(self.cache, self.train_idx, in_memory)
        self.val_data = CacheData(self.cache, self.val_idx, in_memory)
        self.schedule = Schedule(
            len(self.train_idx), self.cfg.batch_size, self.info.world_size, self.cfg.seed
        )
        self.total_steps = self.cfg.steps or self.cfg.epochs * self.schedule.steps_per_epoch
        self.writer = None

    # -- setup ------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        self.device = pick_device(cfg, self.info)
        heads_cfg = cfg.heads_config()
        if heads_cfg.latent_channels != self.cache.latent_shape[0]:
            raise DelitError(
                f"{self.opts.cache}: latents have {self.cache.latent_shape[0]} channels, "
                f"model.latent_channels is {heads_cfg.latent_channels}"
            )
        self.heads = initial_heads(cfg, self.cache, self.train_idx).to(self.device)
        self.opt, self.sched = make_optimizer(self.heads, cfg, self.total_steps)
        self.step = 0
        if self.opts.resume:
            self._restore(trainstate.load_checkpoint(self._ckpt_dir() / trainstate.LATEST))
        self.model: nn.Module = self.heads
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.heads, device_ids=ids)

    def _ckpt_dir(self) -> Path:
        return self.opts.out / trainstate.CKPT_DIR

    def _restore(self, state: dict[str, Any]) -> None:
        self.heads.load_state_dict(state["heads"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        trainstate.set_rng_state(state["rng"])

    def _prepare_run_folder(self) -> None:
        out = self.opts.out
        if self.info.is_main:
            if not self.opts.resume and (out / trainstate.CKPT_DIR / trainstate.LATEST).exists():
                raise DelitError(f"{out}: holds a run already (pass --resume, or a new --out)")
            out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, out / "config.yaml")
            write_mean_env(self.cache, self.train_idx, out / "mean_env.exr")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=self.step or None)
        barrier()

    # -- steps ------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self) -> dict[str, torch.Tensor]:
        batch = self.train_data.batch(
            self.schedule.positions(self.step, self.info.rank), self.device
        )
        self.model.train()
        with self._autocast():
            out = self.model(batch["relit_latent"])
        losses = compute_losses(
            out, batch["flat_latent"], batch["env"], self.cfg, self.heads.latent_std
        )
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        if self.cfg.grad_clip > 0:
            losses["grad_norm"] = nn.utils.clip_grad_norm_(
                self.heads.parameters(), self.cfg.grad_clip
            )
        self.opt.step()
        self.sched.step()
        self.step += 1
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean val losses and env metrics over the val split (all ranks share the work)."""
        n = len(self.val_data)
        if n == 0:
            return {}
        self.heads.eval()
        bs = self.cfg.batch_size
        starts = list(range(0, n, bs))
        if self.cfg.val_batches > 0:
            starts = starts[: self.cfg.val_batches]
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), device=self.device)
        for start in starts[self.info.rank :: self.info.world_size]:
            batch = self.val_data.batch(np.arange(start, min(n, start + bs)), self.device)
            with self._autocast():
                out = self.heads(batch["relit_latent"])
            terms = compute_losses(
                out, batch["flat_latent"], batch["env"], self.cfg, self.heads.latent_std
            )
            terms |= env_metrics(out["env_code"], batch["env"])
            k = batch["env"].shape[0]
            for name, value in terms.items():
                sums[name] = sums.get(name, torch.zeros((), device=self.device)) + value.float() * k
            count += k
        return self._reduce_val(sums, count)

    def _reduce_val(self, sums: dict[str, torch.Tensor], count: torch.Tensor) -> dict[str, float]:
        names = sorted(sums) if sums else []
        names = _broadcast_names(names)
        stacked = torch.stack([sums.get(k, torch.zeros((), device=self.device)) for k in names])
        total = all_reduce_mean(torch.cat([stacked, count[None]]))
        return {k: float(v / total[-1]) for k, v in zip(names, total[:-1], strict=True)}

    # -- outputs ----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "heads": {k: v.detach().cpu() for k, v in self.heads.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "rng": trainstate.rng_state(),
            "config": self.cfg.to_dict(),
        }

    def save(self) -> None:
        """Checkpoint (rank 0 writes; all ranks wait)."""
        if self.info.is_main:
            trainstate.save_checkpoint(self.opts.out, self._state(), self.step, self.cfg.keep_last)
        barrier()

    def _log(self, tag: str, values: dict[str, float | torch.Tensor]) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{tag}/{name}", float(value), self.step)

    def _after_step(self, losses: dict[str, torch.Tensor], bar) -> None:
        cfg = self.cfg
        last = self.step == self.total_steps
        if self.step % cfg.log_every == 0 or last:
            reduced = {k: float(all_reduce_mean(v.float())) for k, v in sorted(losses.items())}
            self._log("train", reduced)
            self._log("train", {"lr": self.sched.get_last_lr()[0]})
            bar.set_postfix(flat=f"{reduced['flat']:.4f}", env=f"{reduced['env']:.4f}")
        if (cfg.val_every and self.step % cfg.val_every == 0) or last:
            self.last_val = self.validate()
            self._log("val", self.last_val)
        stop = self.opts.stop_after_step
        if self.step % cfg.ckpt_every == 0 or last or self.step == stop:
            self.save()
        if stop is not None and self.step == stop:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: a hard crash after the checkpoint

    def run(self) -> DelitHeads:
        """Train to ``total_steps``; write heads.safetensors; return the (unwrapped) heads."""
        self._build()
        self._prepare_run_folder()
        self.last_val: dict[str, float] = {}
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            disable=not (self.opts.progress and self.info.is_main),
            dynamic_ncols=True,
        )
        while self.step < self.total_steps:
            losses = self._train_step()
            bar.update(1)
            self._after_step(losses, bar)
        bar.close()
        if self.info.is_main:
            save_heads(
                self.heads, self.opts.out / "heads.safetensors", heads_extra(self.cache, self.step)
            )
            if self.writer is not None:
                self.writer.close()
        barrier()
        return self.heads


def _broadcast_names(names: list[str]) -> list[str]:
    """Rank 0's metric names on every rank (ranks without val batches have none)."""
    from delit_cache.train.distributed import broadcast_object

    return broadcast_object(names)


def train_heads(opts: RunOptions) -> Trainer:
    """Run a training (joining the process group under torchrun); return the finished Trainer."""
    info = dist_info()
    init_distributed(info)
    try:
        trainer = Trainer(opts)
        trainer.run()
        return trainer
    finally:
        cleanup()

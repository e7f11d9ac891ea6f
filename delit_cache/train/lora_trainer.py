"""``delit train-lora``: LoRA adapters on the frozen Wan decoder, trained with a pixel loss.

Each step takes a batch of shard samples, gets the relit latent (from ``--cache`` when given,
else from the frozen encoder), runs the heads, decodes their flat-lit latent through the
decoder with adapters and takes the L1 distance to the true flat-lit image. The decoder's
blocks are checkpointed (recomputed in backward). ``--train-heads`` also trains the heads'
flat projection (the env map's path is left as it was).

The run folder matches ``train-heads``': ``config.yaml``, ``tb/``, ``checkpoints/`` (written by
``train.state``: weights-only, atomic, ``--resume`` continues exactly), and at the end
``lora.safetensors`` (adapters alone), ``heads.safetensors`` and the source's ``mean_env.exr``
so the folder is a ``--checkpoint`` for ``eval``/``infer`` with ``--lora RUN/lora.safetensors``.
DDP under torchrun like train-heads (each rank reads its slice of the global batch).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from delit_cache.train import state as trainstate
from delit_cache.train.batches import Schedule
from delit_cache.train.distributed import (
    all_reduce_mean,
    barrier,
    cleanup,
    dist_info,
    init_distributed,
)
from delit_cache.train.lora_config import resolve_lora_config, save_lora_config
from delit_cache.utils.errors import DelitError
from delit_cache.utils.faults import fault_point
from delit_cache.utils.logs import get_logger, progress_bar

log = get_logger(__name__)

LORA_FILENAME = "lora.safetensors"


@dataclass
class LoraRunOptions:
    """Command-line settings of a train-lora run that are not part of its config."""

    checkpoint: str  # heads to start from (run folder, heads file, save_pretrained folder, demo)
    vae: str  # the frozen Wan 2.1 VAE (path or "demo")
    data: list[str]  # training shards (relit and flat-lit images)
    out: Path  # the run folder
    cache: Path | None = None  # latent cache of the same shards and VAE (skips the encoder)
    overrides: dict[str, Any] = field(default_factory=dict)  # CLI values (None = unset)
    resume: bool = False  # continue from RUN/checkpoints/latest.pt
    progress: bool = True  # progress bar on rank 0


class _Student(nn.Module):
    """Heads + decoder with adapters: relit latent -> decoded flat-lit image (unclamped)."""

    def __init__(self, heads: nn.Module, vae: nn.Module, size: int):
        super().__init__()
        self.heads, self.vae, self.size = heads, vae, size

    def forward(self, relit_latent: torch.Tensor) -> torch.Tensor:
        flat_latent = self.heads(relit_latent)["flat_latent"]
        return self.vae.decode(flat_latent, size=(self.size, self.size), clamp=False)


class LoraTrainer:
    """One train-lora run (any rank); ``run()`` trains and writes the outputs."""

    def __init__(self, opts: LoraRunOptions):
        from delit_cache.data.shard_index import ShardIndex
        from delit_cache.infer.delighter import model_size, resolve_checkpoint

        self.opts = opts
        self.info = dist_info()
        self.cfg = resolve_lora_config(opts.out, opts.overrides, opts.resume)
        if not opts.resume and (opts.out / trainstate.CKPT_DIR / trainstate.LATEST).exists():
            raise DelitError(f"{opts.out}: holds a run already (pass --resume, or a new --out)")
        self.index = ShardIndex(opts.data)
        self.heads, _, self.ckpt_info = resolve_checkpoint(opts.checkpoint)
        self.size = model_size(self.ckpt_info, self.cfg.image_size or None)
        self.cfg.image_size = self.size
        self.schedule = Schedule(
            len(self.index), self.cfg.batch_size, self.info.world_size, self.cfg.seed
        )
        self.step = 0
        self.writer = None

    # -- setup ------------------------------------------------------------------------
    def _build(self) -> None:
        from delit_cache.train.trainer import rank_device
        from delit_cache.vae import load_wan_vae
        from delit_cache.vae.grad_checkpoint import checkpoint_decoder_blocks
        from delit_cache.vae.lora import LoraSpec, add_lora, lora_parameters

        cfg = self.cfg
        self.device = rank_device(cfg, self.info)
        self.vae = load_wan_vae(self.opts.vae, device=self.device)
        self.rows = self._cache_rows() if self.opts.cache is not None else None
        with torch.random.fork_rng(devices=[]):  # adapter init: a function of the seed
            torch.manual_seed(cfg.seed)
            self.spec = add_lora(self.vae, LoraSpec(cfg.lora_rank, cfg.lora_alpha))
        if cfg.activation_checkpointing:
            checkpoint_decoder_blocks(self.vae)
        self.heads = self.heads.to(self.device)
        self.heads.requires_grad_(False)
        groups = [{"params": lora_parameters(self.vae), "lr": cfg.lr}]
        if cfg.train_heads:
            flat = list(self.heads.flat_proj.parameters())
            for p in flat:
                p.requires_grad_(True)
            groups.append({"params": flat, "lr": cfg.heads_lr})
        self.opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        warm = cfg.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: (s + 1) / warm if warm > 0 and s < warm else 1.0
        )
        self.student = _Student(self.heads, self.vae, self.size)
        if self.opts.resume:
            self.step = self._restore()
        self.model: nn.Module = self.student
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)

    def _cache_rows(self) -> np.ndarray:
        """Cache row of every shard sample (the cache must hold them all, for this VAE/size)."""
        from delit_cache.cache.store import LatentCache

        cache = LatentCache(self.opts.cache)
        meta = cache.metadata
        if meta.get("vae_fingerprint") != self.vae.fingerprint:
            raise DelitError(f"{self.opts.cache}: encoded with VAE {meta.get('vae_fingerprint')}, "
                             f"not the given {self.vae.fingerprint}")  # fmt: skip
        if int(meta.get("image_size", -1)) != self.size:
            raise DelitError(f"{self.opts.cache}: image size {meta.get('image_size')}, the "
                             f"heads' model size is {self.size}")  # fmt: skip
        where = {k: i for i, k in enumerate(cache.keys)}
        missing = [k for k in self.index.keys if k not in where]
        if missing:
            raise DelitError(f"{self.opts.cache}: {len(missing)} shard sample(s) not in the "
                             f"cache (e.g. {missing[0]})")  # fmt: skip
        self.cache = cache
        return np.array([where[k] for k in self.index.keys], dtype=np.int64)

    def _restore(self) -> int:
        from delit_cache.vae.lora import load_lora_state

        state = trainstate.load_resumable(self.opts.out)
        load_lora_state(self.vae, state["lora"], str(self.opts.out / trainstate.CKPT_DIR))
        self.heads.load_state_dict(state["heads"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        trainstate.set_rng_state(state["rng"])
        return int(state["step"])

    # -- steps ------------------------------------------------------------------------
    def _batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(relit latents, true flat-lit images) of the samples at ``positions``."""
        keys = [self.index.keys[int(i)] for i in positions]
        samples = [self.index.sample(k, self.size) for k in keys]
        flat = torch.stack([s["flat"] for s in samples]).to(self.device)
        if self.rows is not None:
            rows = self.rows[positions.numpy()]
            latent = torch.from_numpy(self.cache.read("relit_latent", rows)).to(self.device)
        else:
            with torch.no_grad():
                latent = self.vae.encode(torch.stack([s["relit"] for s in samples]))
        return latent.float(), flat

    def _autocast(self):
        if self.cfg.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self) -> float:
        from delit_cache.vae.lora import lora_parameters

        latent, flat = self._batch(self.schedule.positions(self.step, self.info.rank))
        self.heads.train(self.cfg.train_heads)
        with self._autocast():
            pred = self.model(latent)
        loss = F.l1_loss(pred.float(), flat)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            params = [p for g in self.opt.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if not torch.isfinite(loss) or not all(
            p.isfinite().all() for p in lora_parameters(self.vae)
        ):
            raise DelitError(f"{self.opts.out}: the loss or adapters became NaN or Inf at step "
                             f"{self.step + 1}; try a lower --lr")  # fmt: skip
        self.opt.step()
        self.sched.step()
        self.step += 1
        return float(all_reduce_mean(loss.detach()))

    # -- outputs ----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        from delit_cache.vae.lora import lora_state

        return {
            "heads": {k: v.detach().cpu() for k, v in self.heads.state_dict().items()},
            "lora": lora_state(self.vae),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "rng": trainstate.rng_state(),
            "config": self.cfg.to_dict(),
        }

    def save(self) -> None:
        if self.info.is_main:
            trainstate.save_checkpoint(self.opts.out, self._state(), self.step, self.cfg.keep_last)
        barrier()

    def _prepare_run_folder(self) -> None:
        if not self.info.is_main:
            return
        out = self.opts.out
        out.mkdir(parents=True, exist_ok=True)
        save_lora_config(self.cfg, out / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tb"), purge_step=self.step or None)

    def _write_outputs(self) -> None:
        from delit_cache.models.pretrained import HEADS_FILENAME, save_heads
        from delit_cache.vae.lora import save_lora

        out = self.opts.out
        extra = {"step": self.step, "checkpoint": self.ckpt_info["checkpoint"]}
        save_lora(self.vae, self.spec, out / LORA_FILENAME, extra)
        heads_extra = dict(self.ckpt_info.get("extra") or {})
        heads_extra.update(lora_step=self.step, image_size=self.size)
        save_heads(self.heads, out / HEADS_FILENAME, heads_extra)
        mean_env = self.ckpt_info.get("mean_env")
        if mean_env and Path(mean_env).resolve() != (out / "mean_env.exr").resolve():
            shutil.copyfile(mean_env, out / "mean_env.exr")

    def run(self) -> LoraTrainer:
        self._build()
        self._prepare_run_folder()
        barrier()
        cfg = self.cfg
        bar = progress_bar(total=cfg.steps, initial=self.step, unit="step",
                           enabled=self.opts.progress and self.info.is_main)  # fmt: skip
        self.last_loss = float("nan")
        while self.step < cfg.steps:
            self.last_loss = self._train_step()
            bar.update(1)
            if self.writer is not None and (
                self.step % cfg.log_every == 0 or self.step == cfg.steps
            ):
                self.writer.add_scalar("train/pixel_l1", self.last_loss, self.step)
                bar.set_postfix(l1=f"{self.last_loss:.4f}")
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save()
            fault_point("train.step", self.step)
        bar.close()
        if self.info.is_main:
            self._write_outputs()
            if self.writer is not None:
                self.writer.close()
        barrier()
        return self


def train_lora(opts: LoraRunOptions) -> LoraTrainer:
    """Run a train-lora run (joining the process group under torchrun); the finished trainer."""
    init_distributed(dist_info())
    try:
        return LoraTrainer(opts).run()
    finally:
        cleanup()

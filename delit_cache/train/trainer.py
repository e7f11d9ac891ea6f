"""``delit train-heads``: the step and validation loop over the latent cache (no VAE loaded).

The run folder is ``train.run_folder``'s, the data order ``train.batches``', the checkpoint
policy ``train.checkpointing``'s. Multi-process (DDP): launch with torchrun or
``accelerate launch``; each rank takes its slice of the global batch. A single-process run
that trains the light head alone (``train_only``) computes what the head reads once per
sample and steps the head alone (``trains_light_head_alone``).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading

import numpy as np
import torch
from torch import nn

from delit_cache.cache.store import LatentCache
from delit_cache.lighting.sphere_metrics import brightest_direction
from delit_cache.models.config import DelitConfig
from delit_cache.models.heads import DelitHeads, create_heads
from delit_cache.train.batches import (
    CacheData,
    Derived,
    Schedule,
    decide_in_memory,
    in_memory_bytes,
)
from delit_cache.train.checkpointing import (
    is_checkpoint_step,
    restore_training_state,
    training_state,
    write_final_heads,
)
from delit_cache.train.config import TrainConfig
from delit_cache.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    dist_info,
    init_distributed,
)
from delit_cache.train.losses import compute_losses, env_metrics, light_head_loss, loss_targets
from delit_cache.train.optim import make_optimizer
from delit_cache.train.run_folder import RunOptions, prepare_run_folder, resolve_run_config
from delit_cache.train.state import save_checkpoint
from delit_cache.utils.device import has_fast_bf16, resolve_device
from delit_cache.utils.errors import DelitError
from delit_cache.utils.faults import fault_point
from delit_cache.utils.logs import get_logger, progress_bar

log = get_logger(__name__)

LIGHT_HEAD = "env_decoder.light_head"
LIGHT_INPUTS = ("light_pooled", "light_map")  # DelitHeads.light_inputs


def trains_light_head_alone(cfg: TrainConfig, info: DistInfo) -> bool:
    """Whether only the light head trains (``train_only`` within it), in one process: what it
    reads comes from weights held fixed, so it is computed once per sample
    (``DelitHeads.light_inputs``) instead of at every step. Only its loss term is computed
    (every other term is a constant of such a run); validation runs the whole heads."""
    inside = [p == LIGHT_HEAD or p.startswith(LIGHT_HEAD + ".") for p in cfg.train_only]
    return not info.enabled and bool(inside) and all(inside)


def rank_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    """``cfg.device`` resolved for this rank (``cuda``/``auto`` -> this rank's GPU)."""
    device = resolve_device(cfg.device, local_rank=info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def initial_heads(cfg: TrainConfig, cache: LatentCache, train_idx: list[int]) -> DelitHeads:
    """A run's step-0 heads: seeded init, standardising latents with the training split's
    per-channel statistics; or, with ``init_from``, those heads as they are (weights and
    latent statistics), which must have this run's architecture and VAE."""
    if cfg.init_from:
        return heads_to_fine_tune(cfg, cache.metadata.get("vae_fingerprint"))
    heads = create_heads(cfg.heads_config(), seed=cfg.seed)
    heads.set_latent_stats(*cache.latent_stats(train_idx))
    return heads


def heads_to_fine_tune(cfg: TrainConfig, fingerprint: str | None) -> DelitHeads:
    """The heads of ``cfg.init_from`` in ``cfg``'s architecture (grown where it may grow);
    ``DelitError`` when they cannot be, or were trained on latents of a VAE other than the
    one of ``fingerprint`` (None: not known, not checked)."""
    from delit_cache.infer.delighter import resolve_checkpoint
    from delit_cache.models.pretrained import require_same_training

    heads, _, info = resolve_checkpoint(cfg.init_from)
    wanted = cfg.heads_config()
    if heads.config != wanted:
        heads = _grown(heads, wanted, cfg.init_from, cfg.seed)
    require_same_training(f"init_from {cfg.init_from}", info, fingerprint)
    return heads


# DelitConfig fields that init_from may raise, and what raising means
GROWABLE = {
    "flat_blocks": lambda old, new: new >= old,
    "light_head": lambda old, new: new or not old,
    "flat_matte": lambda old, new: new or not old,
    "env_layers": lambda old, new: new >= old,  # the added layers start as the identity
}


def _grown(heads: DelitHeads, wanted: DelitConfig, source: str, seed: int) -> DelitHeads:
    """``heads`` loaded into heads of config ``wanted``, which may only add parts that start
    as (almost) the identity (``GROWABLE``: more flat blocks, more env-decoder layers, a light
    head, a background matte; their initial weights drawn with ``seed``); else
    ``DelitError``."""
    got, want = heads.config.to_dict(), wanted.to_dict()
    diff = {k for k in want if got[k] != want[k]}
    grows = all(k in GROWABLE and GROWABLE[k](got[k], want[k]) for k in diff)
    if not grows:
        listed = ", ".join(f"{k} {got[k]} (config: {want[k]})" for k in sorted(diff))
        raise DelitError(
            f"init_from {source}: other architecture: {listed} (heads may only grow: "
            f"{', '.join(GROWABLE)} may be raised)"
        )
    grown = create_heads(wanted, seed=seed)
    result = grown.load_state_dict(heads.state_dict(), strict=False)
    if result.unexpected_keys:  # a growable field removed a part: a bug in GROWABLE
        raise DelitError(f"init_from {source}: weights left over: {result.unexpected_keys[:3]}")
    for layer in grown.env_decoder.layers[got["env_layers"] :]:
        layer.zero_residuals()
    return grown


class Trainer:
    """One training run (any rank); ``run()`` trains and returns the final heads."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.info = dist_info()
        self.cfg = resolve_run_config(opts)
        self.cache = LatentCache(opts.cache)
        self.cache.verify()  # refuse a damaged cache before training
        if len(self.cache) == 0:
            raise DelitError(f"{opts.cache}: the cache holds no finished samples")
        self.train_idx, self.val_idx = self.cache.split(self.cfg.val_fraction, self.cfg.seed)
        if self.cfg.max_samples > 0:
            self.train_idx = self.train_idx[: self.cfg.max_samples]
        self.light_alone = trains_light_head_alone(self.cfg, self.info)
        if self.light_alone and self.cfg.light_head_weight <= 0:
            raise DelitError(
                f"train_only {list(self.cfg.train_only)}: no loss term with a weight above 0 "
                "reaches those parameters (light_head_weight is 0)"
            )
        targets = functools.partial(loss_targets, cfg=self.cfg)
        train, val = Derived(targets, keep_env=False), Derived(targets)
        needed = in_memory_bytes(self.cache, len(self.train_idx), train)
        needed += in_memory_bytes(self.cache, len(self.val_idx), val)
        self.in_memory = decide_in_memory(self.cfg, needed)
        self.train_data: CacheData | None = None  # light head alone: made once the heads exist
        if not self.light_alone:
            self.train_data = CacheData(self.cache, self.train_idx, self.in_memory, train)
        self.val_data = CacheData(self.cache, self.val_idx, self.in_memory, val)
        self.schedule = Schedule(
            len(self.train_idx), self.cfg.batch_size, self.info.world_size, self.cfg.seed
        )
        self.total_steps = self.cfg.steps or self.cfg.epochs * self.schedule.steps_per_epoch
        self.writer = None
        self.last_val: dict[str, float] = {}
        self.last_saved = 0  # step of the newest checkpoint (0: none yet)
        self.stop_signal: int | None = None  # SIGTERM/SIGINT received (single process)

    # -- setup ------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        self.device = rank_device(cfg, self.info)
        self.bf16 = cfg.mixed_precision == "bf16" or (
            cfg.mixed_precision == "auto" and has_fast_bf16(self.device)
        )
        log.debug("training on %s, %s", self.device, "bf16 autocast" if self.bf16 else "float32")
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
            self.step = restore_training_state(self.opts.out, self.heads, self.opt, self.sched)
        self.last_saved = self.step
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)
        self.model: nn.Module = self.heads
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.heads, device_ids=ids)
        if self.light_alone:
            log.info("light head alone: its inputs for %d samples, once", len(self.train_idx))
            only = (*LIGHT_INPUTS, "light_dir")
            derived = Derived(_light_targets, False, self._light_inputs, only)
            self.train_data = CacheData(self.cache, self.train_idx, self.in_memory, derived)

    @torch.no_grad()
    def _light_inputs(self, relit_latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """``DelitHeads.light_inputs`` of relit latents, in float32, 32 at a time on the
        run's device; returned where the latents were."""
        self.heads.eval()
        parts = [self.heads.light_inputs(x.to(self.device)) for x in relit_latent.split(32)]
        return {
            n: torch.cat([p[n] for p in parts]).float().to(relit_latent.device) for n in parts[0]
        }

    def _prepare_run_folder(self) -> None:
        if self.info.is_main:
            self.writer = prepare_run_folder(
                self.opts, self.cfg, self.cache, self.train_idx, self.step
            )
        barrier()

    # -- steps ------------------------------------------------------------------------
    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self) -> dict[str, torch.Tensor]:
        batch = self.train_data.batch(
            self.schedule.positions(self.step, self.info.rank), self.device
        )
        self.model.train()
        if self.light_alone:
            with self._autocast():
                head = self.heads.env_decoder.light_head
                light = head.read(batch["light_pooled"], batch["light_map"])
            losses = {"light_head": light_head_loss(light, batch["light_dir"])}
            losses["total"] = self.cfg.light_head_weight * losses["light_head"]
        else:
            with self._autocast():
                out = self.model(batch["relit_latent"])
            losses = compute_losses(out, batch, self.cfg, self.heads.latent_std)
        if not losses["total"].requires_grad:
            raise DelitError(
                f"train_only {list(self.cfg.train_only)}: no loss term with a weight above 0 "
                "reaches those parameters"
            )
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        if self.cfg.grad_clip > 0:
            losses["grad_norm"] = nn.utils.clip_grad_norm_(
                self.heads.parameters(), self.cfg.grad_clip
            )
        self.finite &= torch.isfinite(losses["total"].detach())  # checked without a sync
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
            terms = compute_losses(out, batch, self.cfg, self.heads.latent_std)
            terms |= env_metrics(out["env_code"], batch["env"])
            k = batch["env"].shape[0]
            for name, value in terms.items():
                sums[name] = sums.get(name, torch.zeros((), device=self.device)) + value.float() * k
            count += k
        return self._reduce_val(sums, count)

    def _reduce_val(self, sums: dict[str, torch.Tensor], count: torch.Tensor) -> dict[str, float]:
        names = broadcast_object(sorted(sums) if sums else [])  # ranks without val batches
        stacked = torch.stack([sums.get(k, torch.zeros((), device=self.device)) for k in names])
        total = all_reduce_mean(torch.cat([stacked, count[None]]))
        return {k: float(v / total[-1]) for k, v in zip(names, total[:-1], strict=True)}

    # -- outputs ----------------------------------------------------------------------
    def check_finite(self) -> None:
        """``DelitError`` when a loss since the last check or a weight is NaN/Inf (all ranks
        agree: the flag is reduced; DDP keeps the weights equal). The last checkpoint stays."""
        weights_ok = all(bool(p.isfinite().all()) for p in self.heads.parameters())
        finite = float(all_reduce_mean(self.finite.float())) == 1.0
        if finite and weights_ok:
            return
        what = "weights" if finite else "loss"
        kept = (
            f"the last good checkpoint is step {self.last_saved} ({self.opts.out / 'checkpoints'})"
            if self.last_saved
            else "no checkpoint was written"
        )
        raise DelitError(
            f"{self.opts.out}: the {what} became NaN or Inf by step {self.step}; stopped, "
            f"{kept} (try a lower --lr or grad_clip)"
        )

    def save(self) -> None:
        """Checkpoint (rank 0 writes; all ranks wait) after checking the weights are finite."""
        self.check_finite()
        self.last_saved = self.step
        if self.info.is_main:
            state = training_state(self.heads, self.opt, self.sched, self.step, self.cfg)
            save_checkpoint(self.opts.out, state, self.step, self.cfg.keep_last)
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
            self.check_finite()
            reduced = {k: float(all_reduce_mean(v.float())) for k, v in sorted(losses.items())}
            self._log("train", reduced)
            self._log("train", {"lr": self.sched.get_last_lr()[0]})
            shown = [n for n in ("flat", "env", "light_head") if n in reduced]
            bar.set_postfix({n: f"{reduced[n]:.4f}" for n in shown[:2]})
        if (cfg.val_every and self.step % cfg.val_every == 0) or last:
            self.last_val = self.validate()
            self._log("val", self.last_val)
        if is_checkpoint_step(self.step, self.total_steps, cfg):
            self.save()

    @contextlib.contextmanager
    def _checkpoint_on_signals(self):
        """Single process, main thread: SIGTERM/SIGINT end the run after the current step with
        a checkpoint (under DDP the ranks could not agree on the step: default handling)."""
        if self.info.enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        signums = (signal.SIGTERM, signal.SIGINT)
        previous = {s: signal.getsignal(s) for s in signums}

        def note(signum, _frame):
            self.stop_signal = signum

        for s in signums:
            signal.signal(s, note)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_on_signal(self) -> None:
        name = signal.Signals(self.stop_signal).name
        if self.last_saved != self.step:
            self.save()
        log.warning(
            "%s: %s after step %d; checkpoint written, continue with --resume",
            self.opts.out, name, self.step,
        )  # fmt: skip
        raise SystemExit(128 + self.stop_signal)

    def run(self) -> DelitHeads:
        """Train to ``total_steps``; write heads.safetensors; return the (unwrapped) heads."""
        self._build()
        self._prepare_run_folder()
        bar = progress_bar(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            enabled=self.opts.progress and self.info.is_main,
        )
        with self._checkpoint_on_signals():
            while self.step < self.total_steps:
                losses = self._train_step()
                bar.update(1)
                self._after_step(losses, bar)
                fault_point("train.step", self.step)
                if self.stop_signal is not None:
                    self._stop_on_signal()
        bar.close()
        if self.info.is_main:
            write_final_heads(self.heads, self.opts.out, self.cache, self.step, len(self.train_idx))
            log.info("%s: heads written after %d steps", self.opts.out, self.step)
            if self.writer is not None:
                self.writer.close()
        barrier()
        return self.heads


def _light_targets(env: torch.Tensor) -> dict[str, torch.Tensor]:
    """The light head's target: the true map's brightest-light direction."""
    return {"light_dir": brightest_direction(env.float())}


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

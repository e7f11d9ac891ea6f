"""Training data from the latent cache: in memory or per batch, and a seeded order per step.

The data order of epoch e is a permutation seeded by (seed, e); step s reads batch
``s mod steps_per_epoch`` of epoch ``s // steps_per_epoch``, so a resumed run reads what an
uninterrupted one would. Under DDP each rank takes its slice of the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from delit_cache.cache.store import DATA_ARRAYS, LatentCache
from delit_cache.train.config import TrainConfig


def available_memory() -> int:
    """Bytes of memory available (``MemAvailable``), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


TargetFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Derived:
    """What batches hold besides the cache's arrays, and what they drop."""

    targets: TargetFn | None = None  # env maps -> loss targets (``losses.loss_targets``)
    keep_env: bool = True  # keep the env maps beside their targets
    inputs: TargetFn | None = None  # relit latents -> inputs computed by frozen weights
    only: tuple[str, ...] = ()  # keep just these names (empty: everything)

    def __call__(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.targets is not None:
            data |= self.targets(data["env"])
            if not self.keep_env:
                del data["env"]
        if self.inputs is not None:
            data |= self.inputs(data["relit_latent"])
        return {n: data[n] for n in self.only} if self.only else data


class CacheData:
    """Samples ``indices`` of a cache, in memory (float32 tensors) or read per batch.

    ``derived`` (a ``Derived``) adds to each sample what is computed from it: the loss
    targets from the env maps (``losses.loss_targets``; the env maps dropped unless
    ``keep_env``) and inputs from the relit latents; in memory they are computed once at
    load, else per batch on the batch's device."""

    def __init__(
        self,
        cache: LatentCache,
        indices: list[int],
        in_memory: bool,
        derived: Derived = Derived(),
    ):
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.derived = derived
        self.arrays: dict[str, torch.Tensor] | None = None
        if in_memory:
            self.arrays = _load(cache, self.indices, self.derived)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, positions: torch.Tensor | np.ndarray, device: torch.device) -> dict:
        """Tensors of the samples at ``positions`` (into ``indices``) on ``device``."""
        pos = torch.as_tensor(positions, dtype=torch.long)
        if self.arrays is not None:
            data = {n: a.index_select(0, pos) for n, a in self.arrays.items()}
            return {n: t.to(device, non_blocking=True) for n, t in data.items()}
        return _read(self.cache, self.indices[pos.numpy()], self.derived, device)


def _read(
    cache: LatentCache, idx: np.ndarray, derived: Derived, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Samples ``idx`` of ``cache`` as tensors on ``device`` (None: the CPU), with what
    ``derived`` adds computed there."""
    data = {n: torch.from_numpy(cache.read(n, idx)) for n in DATA_ARRAYS}
    if device is not None:
        data = {n: t.to(device, non_blocking=True) for n, t in data.items()}
    return derived(data)


def _load(
    cache: LatentCache, indices: np.ndarray, derived: Derived, chunk: int = 256
) -> dict[str, torch.Tensor]:
    """Samples ``indices`` in memory, read and given their targets ``chunk`` samples at a
    time into arrays allocated once: beyond what is kept, at most one chunk is held (reading
    the whole env array first held it, its targets and their copies at once)."""
    if len(indices) == 0:  # no targets of nothing (an empty validation split)
        return {n: torch.from_numpy(cache.read(n, indices)) for n in DATA_ARRAYS}
    arrays: dict[str, torch.Tensor] = {}
    for start in range(0, len(indices), chunk):
        part = _read(cache, indices[start : start + chunk], derived)
        if not arrays:  # allocated once, from the first chunk's shapes
            arrays = {n: t.new_empty((len(indices), *t.shape[1:])) for n, t in part.items()}
        for n, t in part.items():
            arrays[n][start : start + len(t)] = t
    return arrays


def in_memory_bytes(cache: LatentCache, n: int, derived: Derived = Derived()) -> int:
    """Bytes that ``n`` samples of ``cache`` take in memory as ``CacheData`` holds them with
    ``derived``: the arrays kept, measured on one sample."""
    if len(cache) == 0 or n == 0:
        return 0
    one = _read(cache, np.zeros(1, dtype=np.int64), derived)
    return n * sum(t.element_size() * t[0].numel() for t in one.values())


def decide_in_memory(cfg: TrainConfig, needed: int) -> bool:
    """Whether to hold the training data in memory (``in_memory`` auto/yes/no): "auto" when
    its ``needed`` bytes (``in_memory_bytes``) are less than ``memory_fraction`` of the memory
    available."""
    if cfg.in_memory != "auto":
        return cfg.in_memory == "yes"
    free = available_memory()
    return free == 0 or needed < cfg.memory_fraction * free


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

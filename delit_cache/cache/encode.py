"""``delit encode``: frozen-VAE encoding of webdataset shards into the latent cache.

Steps (see ``delit_cache.cache.store`` for the store layout):

1. Rank 0 takes the store's lock file (``CACHE.zarr.lock``; a second ``delit encode`` on
   the same store is refused in one line while the first runs), opens or creates the store
   (refusing another VAE, size, precision or augmentation setting), checks every done block
   against its digests and makes damaged ones pending again, drops planned rows whose sample
   has left its shard, lists the keys of every shard (tar headers only; a key in two shards
   is refused), drops keys the store already plans, and appends the rest as whole blocks.
2. After a barrier every rank lists the blocks not yet marked done (new ones and those an
   interrupted run left) and encodes blocks ``rank, rank + W, ...``: ranks never share a chunk.
   Each block's arrays are written first, its ``block_done`` flag last. With ``workers`` > 0
   (the default) shard samples are decoded in worker threads and blocks are written by a
   background thread (``delit_cache.cache.pipeline``), so the encoder rarely waits; on CUDA
   the images go through pinned memory with asynchronous copies. ``workers=0`` runs every
   stage in turn in the main thread (the plain path). ``EncodeSummary.stages`` says how long
   each stage was busy and ``limiting_stage`` which one the encoder waited for.
3. After a second barrier rank 0 stamps the update time.

Rerunning the same command therefore resumes an interrupted encode, and running it with more
shards appends them. Multi-process: launch with ``torchrun --nproc_per_node N`` or
``accelerate launch``; the process group (gloo) only carries barriers and the plan's status.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from delit_cache.cache import integrity
from delit_cache.cache import store as cache_mod
from delit_cache.cache.pipeline import BackgroundWriter, StageClock, ordered_map
from delit_cache.data.augment import augment_sample
from delit_cache.data.shards import REQUIRED_FIELDS, decode_sample, expand_shards, raw_samples
from delit_cache.data.tarscan import scan_shard
from delit_cache.lighting.envmap import resample_env
from delit_cache.models.transform import PortraitTransform
from delit_cache.train.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup,
    dist_info,
    init_distributed,
)
from delit_cache.utils.device import dtype_name, resolve_device, resolve_dtype
from delit_cache.utils.errors import DelitError
from delit_cache.utils.faults import fault_point
from delit_cache.utils.logs import get_logger, progress_bar

log = get_logger(__name__)

# variants per sample (--augment): far more than distinct augmentations are useful, and well
# inside the store's int16 variant column
MAX_AUGMENT = 1024


@dataclass(frozen=True)
class EncodeOptions:
    """Per-run settings of the block encoder."""

    size: int  # square model input side in pixels
    batch_size: int  # images per VAE call (relit and flat together: 2x this)
    seed: int  # augmentation seed
    progress: bool  # show a progress bar on rank 0
    workers: int = 0  # decoding threads; > 0 also writes blocks in a background thread


@dataclass
class EncodeSummary:
    """What one ``encode_shards`` call did (counts for this rank unless noted)."""

    rows: int  # valid rows in the store afterwards (rank 0's view)
    planned: int  # rows newly planned by this call (all ranks)
    skipped: int  # shard samples whose keys were already in the store
    encoded: int  # rows encoded by this rank
    seconds: float  # wall time of this rank's encoding
    # busy seconds of this rank's stages: "decode" (shard reading and image decoding, summed
    # over workers), "encode" (the VAE, copies included), "write" (Zarr), and what the
    # encoding loop spent waiting: "wait_input" (for decoded images), "wait_write" (for a
    # full write queue; with workers=0 the writes themselves)
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def encoder_share(self) -> float:
        """The encoder's busy time as a fraction of the wall time (0 when nothing ran)."""
        return self.stages.get("encode", 0.0) / self.seconds if self.seconds > 0 else 0.0

    @property
    def limiting_stage(self) -> str:
        """``encode`` when the encoder was busy most of the time, else what it waited for."""
        waits = {
            "decode": self.stages.get("wait_input", 0.0),
            "write": self.stages.get("wait_write", 0.0),
        }
        if max(waits.values()) <= 0.1 * max(self.seconds, 1e-9):
            return "encode"
        return max(waits, key=waits.get)

    def stage_line(self) -> str:
        """One line: wall time, each stage's busy time, the encoder's share, the limit."""
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(self.stages.items()))
        return (
            f"encode stages: wall {self.seconds:.2f} s; {parts}; encoder busy "
            f"{100 * self.encoder_share:.0f} % of the wall time; limiting stage: "
            f"{self.limiting_stage}"
        )


def shard_keys(path: Path) -> list[str]:
    """Sample keys of a tar shard in order, from the tar headers only; a damaged shard raises
    one ``DamagedShard`` line (the shard, the last intact key, how many precede the damage)."""
    scan = scan_shard(path, REQUIRED_FIELDS)
    if scan.damage:
        raise scan.error()
    return scan.keys


def keys_by_shard(shards: Sequence[Path]) -> dict[Path, list[str]]:
    """``shard_keys`` of every distinct shard (resolved paths, in order)."""
    return {shard: shard_keys(shard) for shard in dict.fromkeys(Path(s).resolve() for s in shards)}


def plan_entries(
    keys_of: dict[Path, list[str]], existing: set[str], augment: int
) -> tuple[list[cache_mod.Entry], int]:
    """New rows for the shards' keys (K variants per sample) not in ``existing``; and the skip
    count. Raises ``DelitError`` when one sample key is in two shards."""
    entries: list[cache_mod.Entry] = []
    skipped = 0
    first_shard: dict[str, Path] = {}
    for shard, keys in keys_of.items():
        for key in keys:
            if cache_mod.VARIANT_SEP in key:
                raise DelitError(f"{shard}: sample key {key!r} contains '#'")
            if key in first_shard:
                raise DelitError(
                    f"sample key {key!r} is in both {first_shard[key]} and {shard} (keys must "
                    "be unique across shards; run delit data check)"
                )
            first_shard[key] = shard
            for variant in range(augment):
                if cache_mod.variant_key(key, variant) in existing:
                    skipped += 1
                else:
                    entries.append(cache_mod.Entry(key, str(shard), variant))
    return entries, skipped


def lock_file(out: Path) -> Path:
    """``OUT.lock``: the lock file beside the store ``out``."""
    return out.with_name(out.name + ".lock")


@contextmanager
def encode_lock(out: Path) -> Iterator[None]:
    """Hold ``OUT.lock`` (beside the store) for one encode; refuse when another holds it."""
    lock_path = lock_file(out)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise DelitError(
                f"{out}: another delit encode (pid {holder}) is writing this cache; wait for "
                "it to finish (for more GPUs, launch one encode with torchrun)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def repair_damage(out: Path, group) -> int:
    """Make blocks whose digests no longer match pending again; return how many."""
    damage = integrity.scan(group, cache_mod.CHECKED_ARRAYS)
    for d in damage:
        log.warning("%s: %s; re-encoding it", out, d)
    integrity.repair(group, damage)
    return len({d.block for d in damage})


def drop_vanished(out: Path, group) -> int:
    """Blank the planned rows of pending blocks whose sample left its shard; return how many."""
    keys_of: dict[str, set[str] | None] = {}
    dropped = 0
    for block in cache_mod.pending_blocks(group):
        for row, key, source, _ in cache_mod.block_rows(group, block):
            if source not in keys_of:
                keys_of[source] = set(shard_keys(Path(source))) if Path(source).is_file() else None
            have = keys_of[source]
            if have is None or cache_mod.base_key(key) not in have:
                group["key"][row] = ""
                dropped += 1
    if dropped:
        log.warning("%s: %d planned sample(s) are no longer in their shards; dropped", out, dropped)
    return dropped


def _plan_on_main(
    out: Path, spec: cache_mod.CacheSpec, block_size: int, shards: list[Path]
) -> tuple[int, int]:
    """Rank 0: read the shards' keys (a damaged shard stops here, before the store is made),
    open/create the store, repair it and append the new rows; (planned, skipped)."""
    keys_of = keys_by_shard(shards)
    group = cache_mod.open_store(out, spec, block_size)
    repair_damage(out, group)
    drop_vanished(out, group)
    entries, skipped = plan_entries(keys_of, cache_mod.planned_keys(group), spec.augment)
    cache_mod.plan_append(group, entries)
    return len(entries), skipped


def _collective_plan(
    info: DistInfo,
    out: Path,
    spec: cache_mod.CacheSpec,
    block_size: int,
    shards: list[Path],
    stack: ExitStack,
) -> tuple[int, int]:
    """Plan on rank 0 (taking the lock onto ``stack``) and share the outcome; every rank
    raises the same DelitError on failure. A store and lock file this run made are removed
    again when planning fails."""
    result: tuple[str, object] = ("ok", (0, 0))
    if info.is_main:
        fresh = not out.exists() and not lock_file(out).exists()
        try:
            stack.enter_context(encode_lock(out))
            result = ("ok", _plan_on_main(out, spec, block_size, shards))
        except DelitError as exc:
            result = ("error", str(exc))
            if fresh:
                shutil.rmtree(out, ignore_errors=True)
                lock_file(out).unlink(missing_ok=True)
    result = broadcast_object(result)
    if result[0] == "error":
        raise DelitError(str(result[1]))
    planned, skipped = result[1]  # type: ignore[misc]
    return planned, skipped


def _sample_variants(
    raw: dict, variants: list[int], size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Decode a raw sample and build its variants: (relit, flat [3,S,S] in [0,1], env HDR)."""
    sample = decode_sample(raw)
    if not torch.isfinite(sample["env"]).all():
        raise DelitError(f"{raw['__key__']}: env map has NaN or Inf values (run delit data check)")
    if not (sample["env"] > 0).any():
        raise DelitError(f"{raw['__key__']}: env map holds no light (every value is 0)")
    env = resample_env(sample["env"].clamp_min(0.0), cache_mod.ENV_SIZE)
    transform = PortraitTransform(size)
    out = []
    for v in variants:
        relit, flat, env_v = augment_sample(
            sample["relit"], sample["flat"], env, raw["__key__"], v, seed
        )
        out.append((transform(relit)[0], transform(flat)[0], env_v))
    return out


def iter_block_inputs(
    group,
    blocks: Sequence[int],
    size: int,
    seed: int,
    workers: int = 0,
    clock: StageClock | None = None,
) -> Iterator[tuple[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]]:
    """Yield ``(block, inputs in row order)`` for ``blocks``, reading each shard once.

    ``workers`` > 0 decodes samples on that many threads (same results, same order);
    ``clock`` collects the decoding time under ``decode``.
    """
    clock = clock or StageClock()

    def decode(job: tuple[dict, list[tuple[int, int, int]]]):
        raw, targets = job
        with clock.stage("decode"):
            return targets, _sample_variants(raw, [v for _, _, v in targets], size, seed)

    rows_of = {b: cache_mod.block_rows(group, b) for b in blocks}
    wanted: OrderedDict[str, dict[str, list[tuple[int, int, int]]]] = OrderedDict()
    for b in blocks:
        for slot, (_, key, source, variant) in enumerate(rows_of[b]):
            per_key = wanted.setdefault(source, {})
            per_key.setdefault(cache_mod.base_key(key), []).append((b, slot, variant))
    buffers: dict[int, list] = {b: [None] * len(rows_of[b]) for b in blocks}
    filled = dict.fromkeys(blocks, 0)
    for b in [b for b in blocks if not rows_of[b]]:  # every planned sample was dropped
        yield b, buffers.pop(b)
    for source, per_key in wanted.items():
        if not Path(source).is_file():
            raise DelitError(f"{source}: shard listed in the cache is gone (needed to resume)")
        jobs = ((raw, per_key.pop(raw["__key__"], None)) for raw in raw_samples([Path(source)]))
        for targets, made in ordered_map(decode, (j for j in jobs if j[1]), workers):
            for (b, slot, _), item in zip(targets, made, strict=True):
                buffers[b][slot] = item
                filled[b] += 1
                if filled[b] == len(buffers[b]):
                    yield b, buffers.pop(b)
        if per_key:
            raise DelitError(f"{source}: sample {next(iter(per_key))!r} is missing from the shard")


@torch.no_grad()
def encode_block(
    vae, inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], batch_size: int
) -> dict[str, np.ndarray]:
    """Encode one block's inputs -> numpy arrays for ``cache.write_block``.

    On CUDA each batch is staged in pinned memory and copied without blocking, and the
    latents come back once the whole block is queued, so the host runs ahead of the GPU.
    """
    if not inputs:
        return {n: np.zeros((0, 1), dtype=np.float32) for n in cache_mod.DATA_ARRAYS}
    device = next(vae.parameters()).device
    cuda = device.type == "cuda"
    queued: list[tuple[int, torch.Tensor]] = []
    for lo in range(0, len(inputs), batch_size):
        part = inputs[lo : lo + batch_size]
        images = torch.stack([r for r, _, _ in part] + [f for _, f, _ in part])
        if cuda:
            images = images.pin_memory()
        queued.append((len(part), vae.encode(images.to(device, non_blocking=cuda))))
    latents: dict[str, list[np.ndarray]] = {"relit_latent": [], "flat_latent": []}
    for n, z in queued:
        z = z.float().cpu().numpy()
        latents["relit_latent"].append(z[:n])
        latents["flat_latent"].append(z[n:])
    env = torch.stack([e for _, _, e in inputs]).float().numpy()
    return {name: np.concatenate(parts) for name, parts in latents.items()} | {"env": env}


def _encode_blocks(
    group,
    vae,
    blocks: list[int],
    opts: EncodeOptions,
    info: DistInfo,
    clock: StageClock,
) -> int:
    """Encode and write ``blocks``; return the rows written. ``clock`` gets the stage times."""
    total = sum(len(cache_mod.block_rows(group, b)) for b in blocks)
    bar = progress_bar(
        total=total,
        unit="sample",
        desc=f"encode rank {info.rank}" if info.enabled else "encode",
        enabled=opts.progress and info.is_main,
    )
    n_written = 0

    def write(block: int, arrays: dict[str, np.ndarray]) -> None:
        nonlocal n_written
        with clock.stage("write"):
            cache_mod.write_block(group, block, arrays)
        n_written += 1
        fault_point("encode.block", n_written)

    written = 0
    inputs = iter_block_inputs(group, blocks, opts.size, opts.seed, opts.workers, clock)
    with closing(inputs), BackgroundWriter(write, enabled=opts.workers > 0) as writer:
        while True:
            with clock.stage("wait_input"):
                got = next(inputs, None)
            if got is None:
                break
            block, items = got
            with clock.stage("encode"):
                arrays = encode_block(vae, items, opts.batch_size)
            with clock.stage("wait_write"):
                writer.submit(block, arrays)
            written += len(items)
            bar.update(len(items))
    bar.close()
    return written


def encode_shards(
    vae_source: str | Path,
    shards: str | Path | Sequence[str | Path],
    out: str | Path,
    size: int = 512,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "float32",
    augment: int = 1,
    seed: int = 0,
    block_size: int = 64,
    progress: bool = True,
    vae=None,
    compile: bool = False,
    workers: int = 2,
) -> EncodeSummary:
    """Encode the samples of ``shards`` into the cache ``out`` (create, resume or append).

    ``size``: square model input side (multiple of 8); images are letterboxed like at
    inference (``PortraitTransform``). ``dtype``: encoder precision, ``float32`` or ``bf16``
    (recorded; inference must match). ``augment``: variants per sample (1 = originals only).
    ``vae``: an already loaded ``WanVAE`` (skips loading ``vae_source``; its own precision is
    the one used and recorded, whatever ``dtype`` says). ``compile``: run
    the encoder through ``torch.compile`` (minutes to compile; faster over large caches).
    ``workers``: image-decoding threads, with blocks written in the background (0: every
    stage in turn in this thread).
    """
    if size < 8 or size % 8:
        raise DelitError(f"--size {size}: must be a positive multiple of 8")
    if batch_size < 1 or augment < 1:
        raise DelitError("--batch-size and --augment must be >= 1")
    if augment > MAX_AUGMENT:
        raise DelitError(f"--augment {augment}: at most {MAX_AUGMENT} variants per sample")
    if workers < 0:
        raise DelitError(f"--workers {workers}: must be >= 0")
    if block_size < 1:  # checked before the lock file is made beside the store
        raise DelitError(f"--block-size {block_size}: must be >= 1")
    encode_dtype = vae.dtype if vae is not None else resolve_dtype(dtype)
    out = cache_mod.check_cache_path(out)  # before the lock file is made beside it
    info = dist_info()
    init_distributed(info, backend="gloo")
    try:
        shard_list = expand_shards(shards)
        if vae is None:
            from delit_cache.vae import load_wan_vae

            dev = resolve_device(device, info.local_rank if info.enabled else None)
            vae = load_wan_vae(vae_source, dev, encode_dtype)
        if compile:
            vae.compile_codec(2 * batch_size)  # relit and flat images go in together
        spec = cache_mod.CacheSpec(
            vae_fingerprint=vae.fingerprint,
            vae_dim=int(vae.dim),
            image_size=size,
            encode_dtype=dtype_name(encode_dtype),
            augment=augment,
            augment_seed=seed,
            z_dim=int(vae.z_dim),
        )
        with ExitStack() as stack:
            planned, skipped = _collective_plan(info, out, spec, block_size, shard_list, stack)
            barrier()
            opts = EncodeOptions(size, batch_size, seed, progress, workers)
            return _run_encode(out, vae, info, planned, skipped, opts)
    finally:
        cleanup()


def _run_encode(
    out: Path, vae, info: DistInfo, planned: int, skipped: int, opts: EncodeOptions
) -> EncodeSummary:
    """Encode this rank's share of the pending blocks, then let rank 0 stamp the store."""
    import zarr

    group = zarr.open_group(str(out), mode="r+")
    mine = cache_mod.pending_blocks(group)[info.rank :: info.world_size]
    clock = StageClock()
    start = time.perf_counter()
    written = _encode_blocks(group, vae, mine, opts, info, clock)
    seconds = time.perf_counter() - start
    barrier()
    if info.is_main:
        cache_mod.touch(group)
    rows = len(cache_mod.LatentCache(out))
    summary = EncodeSummary(rows, planned, skipped, written, seconds, dict(clock.seconds))
    if written:
        log.info("%s", summary.stage_line())
    return summary

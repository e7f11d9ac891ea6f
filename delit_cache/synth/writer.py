"""``delit synth``: render synthetic samples in worker processes and write them as shards.

Sample ``i`` is drawn from a generator seeded with ``(seed, i)`` and rendered with one torch
thread, so the images do not depend on the number of workers; the main process writes the
samples in index order with ``shards.ShardWriter`` (atomic shards, no time stamps), so the
same arguments give byte-identical shards.

The arguments are recorded in ``OUT/synth.json``; rerun with the same arguments, an
interrupted synth keeps its complete shards (each checked against the keys it must hold) and
renders from the first missing or incomplete one, as an interrupted encode resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from delit_cache import __version__
from delit_cache.data.shards import REQUIRED_FIELDS, SHARD_PATTERN, ShardWriter, encode_sample
from delit_cache.data.tarscan import scan_shard
from delit_cache.synth.compose import render_sample, sample_key
from delit_cache.synth.environments import INDOOR_LAYOUTS, LightingOptions, list_hdris, load_hdri
from delit_cache.utils.atomic import check_output_dir, write_json
from delit_cache.utils.errors import DelitError
from delit_cache.utils.logs import get_logger, progress_bar

log = get_logger(__name__)

MIN_SIZE = 32
MANIFEST = "synth.json"  # the arguments of the run that writes a folder (to resume it)


def encode_synth(
    seed: int,
    index: int,
    size: int,
    hdris: list[Path],
    lighting: LightingOptions = LightingOptions(),
) -> dict[str, Any]:
    """Render sample ``index`` and encode it for a shard (relit/flat PNG, env/normal EXR...)."""
    s = render_sample(seed, index, size, hdris, lighting)
    relit, flat = s.display()
    return encode_sample(s.key, relit, flat, s.env, s.mask, s.normal, s.meta)


def _init_worker() -> None:
    torch.set_num_threads(1)


def _job(args: tuple[int, int, int, list[Path], LightingOptions]) -> dict[str, Any]:
    return encode_synth(*args)


def _samples(
    seed: int,
    indices: range,
    size: int,
    hdris: list[Path],
    lighting: LightingOptions,
    workers: int,
) -> Iterator[dict[str, Any]]:
    jobs = [(seed, i, size, hdris, lighting) for i in indices]
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield from map(_job, jobs)
        finally:
            torch.set_num_threads(threads)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_job, jobs, chunksize=2)


def synth(
    out: str | Path,
    n: int,
    size: int = 512,
    hdri_dir: str | Path | None = None,
    seed: int = 0,
    workers: int = 1,
    shard_size: int = 1000,
    progress: bool = True,
    hdris: Sequence[str] | None = None,
    exclude_hdris: Sequence[str] = (),
    p_hdri: float = 0.5,
    p_other_background: float = 0.0,
    p_mirror: float = 0.0,
    max_tilt_deg: float = 0.0,
    indoor_layout: str = "ceiling",
) -> list[Path]:
    """Render ``n`` samples of ``size x size`` into ``out/shard-XXXXXX.tar``; return the shards.

    ``hdri_dir``: folder of ``.exr``/``.hdr`` env maps mixed with procedural lighting
    (default: the packaged ``delit_cache/assets/hdri`` when present, else procedural only);
    ``hdris`` / ``exclude_hdris``: stems of that folder to use / to leave out (a held-out
    split); ``p_hdri``: probability that a sample is lit by an HDRI (1: HDRIs only);
    ``p_other_background``: probability that the background shows another env map than the
    one lighting the subject; ``p_mirror`` / ``max_tilt_deg``: HDRIs mirrored left-right with
    that probability / tilted by up to that many degrees; ``indoor_layout``: how procedural
    indoor maps place their lights (``LightingOptions``, ``INDOOR_LAYOUTS``).
    Raises ``DelitError`` for bad arguments or an output folder that already holds shards.
    """
    if n < 1:
        raise DelitError(f"--n must be >= 1, got {n}")
    if size < MIN_SIZE:
        raise DelitError(f"--size must be >= {MIN_SIZE}, got {size}")
    if seed < 0:
        raise DelitError(f"--seed must be >= 0, got {seed}")
    if workers < 1:
        raise DelitError(f"--workers must be >= 1, got {workers}")
    if shard_size < 1:
        raise DelitError(f"--shard-size must be >= 1, got {shard_size}")
    if hdris is not None and not hdris:
        raise DelitError("--hdris names no HDRI (give comma-separated stems)")
    if hdri_dir is not None and not Path(hdri_dir).is_dir():
        raise DelitError(f"{hdri_dir}: HDRI folder not found")
    probabilities = (
        ("--p-hdri", p_hdri),
        ("--p-other-background", p_other_background),
        ("--p-mirror", p_mirror),
    )
    for flag, p in probabilities:
        if not 0.0 <= p <= 1.0:  # also refuses NaN
            raise DelitError(f"{flag} must be in [0, 1], got {p}")
    if not 0.0 <= max_tilt_deg <= 45.0:  # also refuses NaN
        raise DelitError(f"--max-tilt must be in [0, 45] degrees, got {max_tilt_deg}")
    if indoor_layout not in INDOOR_LAYOUTS:
        raise DelitError(
            f"--indoor-layout must be one of {', '.join(INDOOR_LAYOUTS)}, got {indoor_layout!r}"
        )
    try:
        files = list_hdris(hdri_dir, hdris, exclude_hdris)
    except ValueError as exc:
        raise DelitError(str(exc)) from None
    if (hdri_dir is not None or hdris) and not files:
        raise DelitError(f"{hdri_dir or 'packaged HDRIs'}: no .exr or .hdr files selected")
    if p_hdri == 1.0 and not files:
        raise DelitError("--p-hdri 1 needs HDRIs, and none are selected")
    for f in files:  # every selected map checked now, not when a sample first draws it
        load_hdri(str(f))
    lighting = LightingOptions(
        p_hdri=p_hdri,
        p_other_background=p_other_background,
        p_mirror=p_mirror,
        max_tilt_deg=max_tilt_deg,
        indoor_layout=indoor_layout,
    )
    out = check_output_dir(out)  # a file in the way is "Not a directory", before any work
    manifest = {"n": n, "size": size, "seed": seed, "shard_size": shard_size}
    manifest.update(hdris=[str(f) for f in files], **dataclasses.asdict(lighting))
    manifest["delit_version"] = __version__
    first = _resume_shard(out, manifest)
    write_json(out / MANIFEST, manifest)
    indices = range(first * shard_size, n)
    bar = progress_bar(total=len(indices), desc="synth", unit="sample", enabled=progress)
    with ShardWriter(out, shard_size=shard_size, start_shard=first) as writer:
        for sample in _samples(seed, indices, size, files, lighting, workers):
            writer.write(sample)
            bar.update(1)
    bar.close()
    return [out / SHARD_PATTERN.format(s) for s in range(math.ceil(n / shard_size))]


def _resume_shard(out: Path, manifest: dict) -> int:
    """The first shard to write into ``out``: 0 when it holds no shards; else, when an earlier
    run with the same ``manifest`` left them, the first that is missing or incomplete;
    ``DelitError`` for shards of another run."""
    if not any(out.glob("shard-*.tar")):
        return 0
    try:
        saved = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        saved = None
    if saved != manifest:
        raise DelitError(
            f"{out}: already holds shard-*.tar files of another synth run (rerun with the same "
            "arguments to resume it); choose an empty folder"
        )
    n, size, seed = manifest["n"], manifest["shard_size"], manifest["seed"]
    for shard in range(math.ceil(n / size)):
        keys = [sample_key(seed, i) for i in range(shard * size, min(n, (shard + 1) * size))]
        if not _holds_exactly(out / SHARD_PATTERN.format(shard), keys):
            log.info("%s: resuming at shard %d (the shards before it are complete)", out, shard)
            return shard
    return math.ceil(n / size)


def _holds_exactly(shard: Path, keys: list[str]) -> bool:
    """Whether ``shard`` is an undamaged tar of the samples ``keys``, in that order."""
    if not shard.is_file():
        return False
    scan = scan_shard(shard, REQUIRED_FIELDS)
    return not scan.damage and scan.keys == keys

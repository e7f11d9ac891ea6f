"""``delit demo``: the whole job on the bundled demo codec, on a fresh machine, in minutes.

synth (training and held-out portraits) -> encode (latent cache) -> train-heads -> eval on
the held-out split (against both baselines and the codec ceiling) -> report (HTML + PNG).
By default train-heads fine-tunes the packaged heads (trained on thousands of portraits
without the held-out HDRIs: ``scripts/train_demo_heads.sh``) for a few steps on the demo's own
training portraits; ``init_from="none"`` trains small heads from scratch (``configs/demo.yaml``).

The demo codec is a small stand-in for the Wan 2.1 VAE, trained on synthetic portraits
(``scripts/train_demo_codec.py``); the numbers the demo prints say how the pipeline does on
synthetic data, not on real photos.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from delit_cache.train.config import TrainConfig, load_config
from delit_cache.train.trainer import heads_to_fine_tune
from delit_cache.utils.atomic import make_dir, write_json
from delit_cache.utils.device import dtype_name, has_fast_bf16, resolve_device, resolve_dtype
from delit_cache.utils.errors import DelitError
from delit_cache.utils.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    """What ``delit demo`` runs; the defaults aim at 5 minutes on 2 CPU cores."""

    out: Path  # output folder (data, cache, run, report)
    train_samples: int = 192  # synthetic training portraits (seed ``seed``)
    val_samples: int = 24  # held-out portraits (seed ``seed + 1``: other faces and lights)
    size: int = 256  # image size; the demo codec was trained at 256
    config: str | None = None  # training config (None: see ``training_plan``)
    init_from: str = "demo"  # heads to fine-tune ("demo": the packaged ones; "none": scratch)
    steps: int | None = None  # override the config's step count
    workers: int = 2  # synth worker processes
    seed: int = 0  # data seed
    examples: int = 4  # held-out samples shown in the report
    vae: str = "demo"  # the codec ("demo", or a Wan 2.1 VAE path)
    device: str = "auto"  # where to run (see ``delit_cache.utils.device``)
    dtype: str = "float32"  # codec precision for encode and eval ("auto": see ``demo_dtype``)


def demo_dtype(dtype: str, vae: str, device: torch.device) -> torch.dtype:
    """The codec precision of the demo: ``auto`` is bfloat16 for the demo codec on hardware
    with fast bf16 (``has_fast_bf16``) and float32 otherwise, and always float32 for a Wan
    VAE path (bf16 encoding shifts its latents: see ``benchmarks/results/cpu-bf16-encode.md``).
    The cache and the evaluation use the same precision."""
    if dtype != "auto":
        return resolve_dtype(dtype)
    fast = vae == "demo" and has_fast_bf16(device)
    return torch.bfloat16 if fast else torch.float32


def training_plan(opts: DemoOptions, device: torch.device) -> TrainConfig:
    """The training stage's config: ``opts.config``, else ``demo-finetune`` (the packaged
    heads' architecture) when fine-tuning and ``demo`` (small heads) from scratch; with
    ``init_from``, ``steps`` and ``device`` from ``opts`` on top."""
    scratch = opts.init_from.strip().lower() in ("", "none")
    name = opts.config or ("demo" if scratch else "demo-finetune")
    overrides = {"steps": opts.steps, "device": str(device)}
    overrides["init_from"] = "" if scratch else opts.init_from
    cfg = load_config(name, overrides)
    cfg.validate(str(name))
    return cfg


def check_init(cfg: TrainConfig, vae_fingerprint: str) -> None:
    """``DelitError`` now, before any stage, for heads to fine-tune that cannot be loaded into
    ``cfg``'s architecture or were trained on another VAE's latents."""
    if cfg.init_from:
        heads_to_fine_tune(cfg, vae_fingerprint)


def _stage(name: str, t0: float) -> None:
    log.info("[%6.1fs] %s", time.perf_counter() - t0, name)


def make_data(opts: DemoOptions) -> tuple[Path, Path]:
    """Training portraits without the held-out HDRIs; held-out portraits (another seed) lit
    only by them: the demo scores lighting its training split never contained."""
    from delit_cache.synth.environments import HELDOUT_HDRIS
    from delit_cache.synth.writer import synth

    train_dir, val_dir = opts.out / "data" / "train", opts.out / "data" / "val"
    splits = (
        (train_dir, opts.train_samples, opts.seed, {"exclude_hdris": HELDOUT_HDRIS}),
        (val_dir, opts.val_samples, opts.seed + 1, {"hdris": HELDOUT_HDRIS, "p_hdri": 1.0}),
    )
    for folder, n, seed, lighting in splits:  # a split an earlier demo finished is kept
        synth(folder, n=n, size=opts.size, seed=seed, workers=opts.workers, **lighting)
    return train_dir, val_dir


def check_options(opts: DemoOptions) -> None:
    """``DelitError`` naming the first count that is not positive (``--steps 0`` would
    otherwise mean the config's steps), before any stage starts."""
    counts = {
        "--train-samples": opts.train_samples,
        "--val-samples": opts.val_samples,
        "--steps": opts.steps,
        "--workers": opts.workers,
        "examples": opts.examples,
    }
    for flag, value in counts.items():
        if value is not None and value < 1:
            raise DelitError(f"{flag} {value}: must be >= 1")


def _training_note(opts: DemoOptions, cfg: TrainConfig) -> str:
    data = f"{opts.train_samples} synthetic portraits at {opts.size}px"
    if not cfg.init_from:
        return f"Training: small heads from scratch, {cfg.steps} steps on {data}."
    source = (
        "the packaged heads (trained without the held-out HDRIs: scripts/train_demo_heads.sh)"
        if cfg.init_from == "demo"
        else f"the heads of {cfg.init_from}"
    )
    return f"Training: {source}, fine-tuned for {cfg.steps} steps on {data}."


def run_demo(opts: DemoOptions) -> dict:
    """Run every stage into ``opts.out``; return the eval metrics (also in metrics.json)."""
    from delit_cache.cache.encode import encode_shards
    from delit_cache.data.shards import iter_samples
    from delit_cache.evaluate.evaluate import evaluate
    from delit_cache.evaluate.report import model_examples, write_report
    from delit_cache.infer.delighter import load_vae_and_model
    from delit_cache.synth.environments import HELDOUT_HDRIS
    from delit_cache.train.trainer import RunOptions, train_heads
    from delit_cache.vae import load_wan_vae

    check_options(opts)
    run = opts.out / "run"
    if (run / "heads.safetensors").exists():
        raise DelitError(f"{opts.out}: holds a finished demo run already (pass a new --out)")
    t0 = time.perf_counter()
    torch.manual_seed(opts.seed)
    device = resolve_device(opts.device)
    dtype = demo_dtype(opts.dtype, opts.vae, device)
    vae = load_wan_vae(opts.vae, device=device, dtype=dtype)  # a bad --vae fails first
    cfg = training_plan(opts, device)
    check_init(cfg, vae.fingerprint)  # so do heads that cannot be fine-tuned here
    make_dir(opts.out)  # and an --out that cannot be made, before any stage starts
    _stage("synth: training and held-out portraits", t0)
    train_dir, val_dir = make_data(opts)
    _stage("encode: training portraits -> latent cache", t0)
    cache = opts.out / "cache.zarr"
    encode_shards(opts.vae, train_dir, cache, size=opts.size, batch_size=8, vae=vae)
    _stage("train-heads: from the cache, no VAE", t0)
    train_heads(RunOptions(cache=cache, out=run, config=None, overrides=cfg.to_dict()))
    _stage("eval: held-out portraits, decoded with the codec", t0)
    model, _, mean_env, _ = load_vae_and_model(run, vae, device=device, size=opts.size)
    metrics = evaluate(model, iter_samples(val_dir), mean_env, image_size=opts.size, progress=True)
    metrics["demo"] = {k: str(v) for k, v in asdict(opts).items()}
    write_json(opts.out / "metrics.json", metrics)
    _stage("report", t0)
    samples = [s for _, s in zip(range(opts.examples), iter_samples(val_dir), strict=False)]
    notes = [
        f"Codec: {opts.vae} ({'a stand-in for the Wan 2.1 VAE trained on synthetic portraits; not for real photos' if opts.vae == 'demo' else 'Wan 2.1 VAE'}).",
        f"Codec precision: {dtype_name(dtype)} (encode and eval).",
        _training_note(opts, cfg),
        f"Held out: {opts.val_samples} portraits from another seed (other faces), lit only by "
        f"HDRIs the training split never contained ({', '.join(HELDOUT_HDRIS)}).",
        f"Total time: {time.perf_counter() - t0:.0f} s.",
    ]
    paths = write_report(opts.out, model_examples(model, samples, opts.size), metrics, notes)
    _stage(f"done: {paths['html']} and {paths['png']}", t0)
    return metrics

"""``delit eval``: the whole chain on raw samples, scored against ground truth and baselines.

For every sample (relit photo, true flat-lit image, true env map) this measures

* the model: flat-lit PSNR / SSIM (per-channel least-squares scale fitted to the truth, see
  ``evaluate.image_metrics.flat_psnr_ssim``), and the three-sphere env metrics (diffuse,
  matte silver, mirror: si-RMSE, angular error, nRMSE) plus the brightest-light direction
  error (``lighting.sphere_metrics``);
* the codec ceiling: PSNR of ``decode(encode(true flat))`` against the true flat image, the
  best any flat latent decoded by the frozen Wan decoder could do;
* two free baselines: the input photo taken as the flat-lit image, and the mean env map
  (of the training cache, or of the evaluated data when the training mean is unknown).

Images go through the model's ``PortraitTransform`` (a square photo is simply resized to the
model size; others are letterboxed) and are scored at the model size, inside the photo's box.
The result is a dict of means over samples (see ``evaluate``); ``format_table`` prints it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from delit_cache.lighting.envmap import ENV_SIZE, require_light, resample_env
from delit_cache.models import DelitModel, Placement, PortraitTransform
from delit_cache.utils.errors import DelitError
from delit_cache.utils.logs import progress_bar

SPHERES = ("diffuse", "matte", "mirror")
SPHERE_METRICS = ("si_rmse", "angular_deg", "nrmse")
REF_SPHERES = ("diffuse", "matte_silver", "mirror")  # the diffusionlight protocol's spheres


class _Means:
    """Running sums of named scalars; ``mean(name)`` is their average over added values."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, value: float, count: int = 1) -> None:
        """Add ``value``, the mean over ``count`` samples."""
        self.sums[name] += float(value) * count
        self.counts[name] += count

    def mean(self, name: str) -> float | None:
        """The average of ``name``'s values; None (JSON null) when none were added."""
        return self.sums[name] / self.counts[name] if self.counts[name] else None

    def env_block(self, prefix: str) -> dict[str, Any]:
        """Means in the JSON shape ``{diffuse: {...}, matte: {...}, mirror: {...}, light_dir_deg}``."""
        block: dict[str, Any] = {
            s: {k: self.mean(f"{prefix}.{s}.{k}") for k in SPHERE_METRICS} for s in SPHERES
        }
        block["light_dir_deg"] = self.mean(f"{prefix}.light_dir_deg")
        return block

    def reference_block(self, prefix: str) -> dict[str, Any]:
        """The diffusionlight protocol's means: spheres, EnvMapNet's light error (mean over
        pairs where both maps have a light) and how many pairs that is."""
        key = f"{prefix}.ref"
        block: dict[str, Any] = {
            s: {k: self.mean(f"{key}.{s}.{k}") for k in SPHERE_METRICS} for s in REF_SPHERES
        }
        block["light_dir_deg"] = self.mean(f"{key}.light_dir_deg")
        block["light_pairs"] = self.counts[f"{key}.light_dir_deg"]
        return block


def _sample_batches(
    samples: Iterable[dict], batch_size: int, limit: int | None
) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for i, sample in enumerate(samples):
        if limit is not None and i >= limit:
            break
        batch.append(sample)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def crop_to_photo(image: torch.Tensor, placement: Placement) -> torch.Tensor:
    """The photo's box of a model-size image [...,S,S] -> [...,h,w] (no rescaling)."""
    top, left, h, w = placement.box
    return image[..., top : top + h, left : left + w]


def model_inputs(sample: dict, transform: PortraitTransform) -> dict[str, Any]:
    """Model-size relit/flat squares, their placement and the 128x256 true env of one sample."""
    for name in ("relit", "flat", "env"):
        if name not in sample:
            raise DelitError(f"{sample.get('key', '?')}: sample without '{name}'")
    relit, flat = sample["relit"].float(), sample["flat"].float()
    if relit.shape != flat.shape:
        raise DelitError(
            f"{sample.get('key', '?')}: relit {tuple(relit.shape)} and flat "
            f"{tuple(flat.shape)} differ in size"
        )
    relit_sq, placement = transform(relit)
    flat_sq, _ = transform(flat)
    env = require_light(sample["env"].float(), sample.get("key", "?"))
    if tuple(env.shape[-2:]) != ENV_SIZE:
        env = resample_env(env, ENV_SIZE)
    return {"relit": relit_sq, "flat": flat_sq, "placement": placement, "env": env}


def _score_flat(means: _Means, name: str, pred: list, gt: list) -> None:
    """Per-sample scale-fitted PSNR/SSIM of ``pred`` against ``gt`` ([3,h,w] each) into means."""
    from delit_cache.evaluate.image_metrics import flat_psnr_ssim

    for p, g in zip(pred, gt, strict=True):
        psnr, ssim = flat_psnr_ssim(p, g)
        means.add(f"{name}.flat_psnr", psnr)
        means.add(f"{name}.flat_ssim", ssim)


class _EnvScorer:
    """Three-sphere scores of env maps, through ``metrics.sphere_errors`` (the one definition
    of the protocol), on the model's device; the mean-env baseline is held here."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline: torch.Tensor | None = None

    def set_baseline(self, mean_env: torch.Tensor) -> None:
        """The mean env map [3,h,w] linear HDR of the mean-env baseline."""
        env = mean_env.float().to(self.device)
        self.baseline = resample_env(env, ENV_SIZE) if tuple(env.shape[-2:]) != ENV_SIZE else env

    @torch.no_grad()
    def score(self, means: _Means, prefix: str, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add per-sample scores of ``pred`` ([B,3,h,w], or [3,h,w] for every sample) against
        ``gt`` [B,3,h,w] to ``means`` under ``prefix``."""
        from delit_cache.lighting.sphere_metrics import sphere_errors

        b = gt.shape[0]
        gt = gt.float().to(self.device)
        pred = pred.float().to(self.device)
        pred = pred[None].expand(b, -1, -1, -1) if pred.ndim == 3 else pred
        errs = sphere_errors(pred, gt)
        for sphere in SPHERES:
            for key in SPHERE_METRICS:
                means.add(f"{prefix}.{sphere}.{key}", errs[f"{sphere}_{key}"].mean(), b)
        means.add(f"{prefix}.light_dir_deg", errs["light_dir_deg"].mean(), b)
        _score_reference(means, prefix, pred.cpu(), gt.cpu())


def _score_reference(means: _Means, prefix: str, pred: torch.Tensor, gt: torch.Tensor) -> None:
    """The diffusionlight protocol's per-sample scores (``lighting.protocol``, on the CPU)."""
    from delit_cache.lighting.protocol import diffusionlight_errors

    errs = diffusionlight_errors(pred, gt)
    for sphere in REF_SPHERES:
        for key in SPHERE_METRICS:
            means.add(f"{prefix}.ref.{sphere}.{key}", errs[f"{sphere}_{key}"].mean(), len(gt))
    for value in errs["light_dir_deg"].tolist():
        if not math.isnan(value):
            means.add(f"{prefix}.ref.light_dir_deg", value)


@torch.no_grad()
def _eval_batch(
    model: DelitModel,
    transform: PortraitTransform,
    batch: list[dict],
    means: _Means,
    scorer: _EnvScorer,
    flip_average: bool = False,
) -> list[torch.Tensor]:
    """Score one batch into ``means``; return the batch's true env maps (CPU, [3,128,256])."""
    prepared = [model_inputs(s, transform) for s in batch]
    device = scorer.device
    relit = torch.stack([p["relit"] for p in prepared]).to(device)
    flat = torch.stack([p["flat"] for p in prepared]).to(device)
    out = model.infer(relit, flip_average=flip_average)
    ceiling = model.vae.decode(model.vae.encode(flat), size=tuple(flat.shape[-2:])).float()
    gt = [crop_to_photo(p["flat"], p["placement"]) for p in prepared]
    crops = [
        [crop_to_photo(x.cpu(), p["placement"]) for x, p in zip(images, prepared, strict=True)]
        for images in (out["flat"], ceiling, relit)
    ]
    _score_flat(means, "model", crops[0], gt)
    _score_flat(means, "codec_ceiling", crops[1], gt)
    _score_flat(means, "baseline_input_as_flat", crops[2], gt)
    envs = [p["env"] for p in prepared]
    gt_env = torch.stack(envs)
    scorer.score(means, "model", out["env"], gt_env)
    if scorer.baseline is not None:
        scorer.score(means, "baseline_mean_env", scorer.baseline, gt_env)
    return envs


def evaluate(
    model: DelitModel,
    samples: Iterable[dict],
    mean_env: torch.Tensor | None,
    *,
    image_size: int | None = None,
    batch_size: int = 4,
    limit: int | None = None,
    progress: bool = False,
    flip_average: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on raw ``samples`` (dicts with ``relit``/``flat`` [3,H,W] in [0,1] and
    ``env`` [3,h,w] linear HDR, as from ``delit_cache.data.shards.iter_samples``).

    ``mean_env`` [3,h,w] linear HDR is the mean-env baseline; None means the mean env of the
    evaluated samples themselves (their env maps are kept in memory, 0.4 MB per sample, and
    scored in a second pass), and the result says so under ``mean_env_source``.
    ``image_size`` is the model size (default: 512); ``flip_average`` runs the model with
    ``DelitModel.infer(..., flip_average=True)``. Returns means over samples::

        {"n", "model": {flat_psnr, flat_ssim, diffuse: {si_rmse, angular_deg, nrmse}, matte,
         mirror, light_dir_deg}, "codec_ceiling": {flat_psnr, flat_ssim},
         "baseline_input_as_flat": {flat_psnr, flat_ssim}, "baseline_mean_env": {diffuse,
         matte, mirror, light_dir_deg}, "mean_env_source", "seconds", "images_per_s",
         "flip_average"}

    PSNR in dB, SSIM in [-1, 1], angles in degrees. Raises ``DelitError`` for no samples.
    """

    if batch_size < 1:
        raise DelitError(f"--batch-size {batch_size}: must be >= 1")
    transform = PortraitTransform(image_size or 512)
    model.eval()
    means = _Means()
    scorer = _EnvScorer(next(model.heads.parameters()).device)
    if mean_env is not None:
        scorer.set_baseline(mean_env)
    gt_envs: list[torch.Tensor] = []
    start = time.perf_counter()
    bar = progress_bar(total=limit, unit="img", enabled=progress)
    for batch in _sample_batches(samples, batch_size, limit):
        envs = _eval_batch(model, transform, batch, means, scorer, flip_average)
        gt_envs.extend(envs if mean_env is None else [torch.empty(0)] * len(envs))
        bar.update(len(batch))
    bar.close()
    if not gt_envs:
        raise DelitError("no samples to evaluate")
    source = "training cache"
    if mean_env is None:
        source = "evaluated data (no mean_env.exr beside the checkpoint)"
        _score_own_mean_env(means, scorer, gt_envs, batch_size)
    seconds = time.perf_counter() - start
    return {**_result(means, len(gt_envs), source, seconds), "flip_average": flip_average}


def _score_own_mean_env(
    means: _Means, scorer: _EnvScorer, gt_envs: list[torch.Tensor], chunk: int
) -> None:
    """The mean-env baseline when the training mean is unknown: the evaluated data's own mean."""
    scorer.set_baseline(torch.stack(gt_envs).mean(dim=0))
    assert scorer.baseline is not None
    for start in range(0, len(gt_envs), chunk):
        gt = torch.stack(gt_envs[start : start + chunk])
        scorer.score(means, "baseline_mean_env", scorer.baseline, gt)


def _result(means: _Means, n: int, source: str, seconds: float) -> dict[str, Any]:
    model = {"flat_psnr": means.mean("model.flat_psnr"), "flat_ssim": means.mean("model.flat_ssim")}
    model.update(means.env_block("model"))
    return {
        "n": n,
        "model": model,
        "codec_ceiling": {
            "flat_psnr": means.mean("codec_ceiling.flat_psnr"),
            "flat_ssim": means.mean("codec_ceiling.flat_ssim"),
        },
        "baseline_input_as_flat": {
            "flat_psnr": means.mean("baseline_input_as_flat.flat_psnr"),
            "flat_ssim": means.mean("baseline_input_as_flat.flat_ssim"),
        },
        "baseline_mean_env": means.env_block("baseline_mean_env"),
        "reference_protocol": {
            "model": means.reference_block("model"),
            "baseline_mean_env": means.reference_block("baseline_mean_env"),
        },
        "mean_env_source": source,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 3) if seconds > 0 else None,
    }


# ----------------------------------------------------------------------------------------------
# Table


def _row(
    label: str,
    model: float | None,
    base: float | None,
    lower_is_better: bool,
    digits: int,
    baseline: bool = True,
) -> str:
    """One table row; a score that is None (e.g. no detected light in any pair) shows as
    ``-``; ``baseline=False``: a row without a baseline column."""

    def fmt(x: float | None) -> str:
        return "-" if x is None or math.isnan(x) else f"{x:.{digits}f}"

    mark = ""
    if baseline and "-" in (fmt(model), fmt(base)):
        mark = "-"
    elif baseline:
        better = model < base if lower_is_better else model > base
        mark = "yes" if better else "no"
    return f"{label:<24} {fmt(model):>10} {fmt(base):>10}  {mark:>6}"


def _header(result: dict[str, Any]) -> list[str]:
    lines = [f"delit eval: {result['n']} samples"]
    facts = [
        f"{k} {result[k]}" for k in ("checkpoint", "vae", "device", "image_size") if k in result
    ]
    if result.get("flip_average"):
        facts.append("flip-average on")
    if facts:
        lines.append(", ".join(facts))
    if "seconds" in result:
        lines.append(f"{result['seconds']:.1f} s ({result.get('images_per_s') or 0:.2f} images/s)")
    return lines


def format_table(result: dict[str, Any]) -> str:
    """An aligned plain-text table of an ``evaluate`` result (model beside its baseline)."""
    m = result["model"]
    base_flat, base_env = result["baseline_input_as_flat"], result["baseline_mean_env"]
    head = f"{'metric':<24} {'model':>10} {'baseline':>10}  {'beats':>6}"
    lines = [*_header(result), "", head, "-" * len(head)]
    lines.append("flat-lit image (baseline: the input photo taken as flat-lit)")
    lines.append(_row("  PSNR (dB)", m["flat_psnr"], base_flat["flat_psnr"], False, 2))
    lines.append(_row("  SSIM", m["flat_ssim"], base_flat["flat_ssim"], False, 4))
    ceiling = result["codec_ceiling"]["flat_psnr"]
    lines.append(_row("  codec ceiling PSNR", ceiling, None, False, 2, baseline=False))
    lines.append(f"env map (baseline: mean env map of the {_short_source(result)})")
    names = {"si_rmse": ("si-RMSE", 4), "angular_deg": ("angular (deg)", 2), "nrmse": ("nRMSE", 4)}
    for sphere in SPHERES:
        for key, (label, digits) in names.items():
            row = _row(f"  {sphere} {label}", m[sphere][key], base_env[sphere][key], True, digits)
            lines.append(row)
    light = _row("  light dir (deg)", m["light_dir_deg"], base_env["light_dir_deg"], True, 2)
    lines.append(light)
    if "reference_protocol" in result:
        lines.extend(_reference_rows(result["reference_protocol"]))
    if "evaluated data" in result.get("mean_env_source", ""):
        lines.append(
            "note: no mean_env.exr beside the checkpoint, so the mean-env baseline uses the "
            "mean env map of the evaluated data itself"
        )
    return "\n".join(lines)


def _reference_rows(ref: dict[str, Any]) -> list[str]:
    """Table rows of the diffusionlight protocol block (published tables' renderer and scores)."""
    m, base = ref["model"], ref["baseline_mean_env"]
    lines = ["env map, diffusionlight protocol (diffuse, matte silver, mirror; published tables)"]
    names = {"si_rmse": ("si-RMSE", 4), "angular_deg": ("angular (deg)", 2), "nrmse": ("nRMSE", 4)}
    for sphere in REF_SPHERES:
        for key, (label, digits) in names.items():
            short = sphere.replace("matte_", "")  # matte_silver -> silver, to fit the column
            lines.append(
                _row(f"  {short} {label}", m[sphere][key], base[sphere][key], True, digits)
            )
    lines.append(
        _row("  EnvMapNet light (deg)", m["light_dir_deg"], base["light_dir_deg"], True, 2)
    )
    lines.append(
        f"note: EnvMapNet light error over the {m['light_pairs']} (model) / "
        f"{base['light_pairs']} (baseline) pairs where both maps have a detected light"
    )
    return lines


def _short_source(result: dict[str, Any]) -> str:
    source = result.get("mean_env_source", "training cache")
    return "evaluated data (see note)" if "evaluated data" in source else source

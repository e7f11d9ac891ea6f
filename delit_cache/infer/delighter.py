"""Inference on photos: checkpoint resolution, the ``Delighter`` API and ``delit infer``.

``resolve_checkpoint`` turns a ``--checkpoint`` argument (a run folder, a heads
``.safetensors`` file, or the word ``demo``) into heads, the training split's mean env map
(when one is stored beside the heads) and an info dict; ``delit eval`` uses it too.

``Delighter`` wraps the model and its ``PortraitTransform``: photos of any size in, a flat-lit
image of the same size and a 128 x 256 linear-HDR env map out, in batches.
"""

from __future__ import annotations

import importlib.resources
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from delit_cache.models import (
    DelitHeads,
    DelitModel,
    PortraitTransform,
    create_model_and_transforms,
)
from delit_cache.models.pretrained import heads_facts, heads_weights_path, load_heads
from delit_cache.utils.atomic import writable_dir
from delit_cache.utils.device import resolve_device, resolve_dtype
from delit_cache.utils.errors import DelitError
from delit_cache.utils.logs import get_logger, logging_beside_bars, progress_bar

log = get_logger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
MEAN_ENV_FILENAME = "mean_env.exr"
DEMO_HEADS = "demo_heads.safetensors"
DEMO_MEAN_ENV = "demo_mean_env.exr"
DEFAULT_SIZE = 512

# ----------------------------------------------------------------------------------------------
# Checkpoints


def _demo_files() -> tuple[Path, Path]:
    """Paths of the packaged demo heads and mean env map (they may not exist)."""
    assets = Path(str(importlib.resources.files("delit_cache") / "assets"))
    return assets / DEMO_HEADS, assets / DEMO_MEAN_ENV


def _checkpoint_files(spec: str | Path) -> tuple[Path, Path | None]:
    """``--checkpoint`` argument -> (heads file, mean env file or None)."""
    if str(spec) == "demo":
        heads, mean_env = _demo_files()
        if not heads.is_file():
            raise DelitError(
                f"demo: the packaged demo checkpoint {heads} is missing "
                "(reinstall delit, or pass a run folder or heads file with --checkpoint)"
            )
        return heads, mean_env if mean_env.is_file() else None
    path = Path(spec)
    if not path.exists():
        raise DelitError(
            f"{path}: no such checkpoint (expected a save_pretrained folder, a heads file, "
            "a run folder or 'demo')"
        )
    heads = heads_weights_path(path)
    mean_env = heads.parent / MEAN_ENV_FILENAME
    return heads, mean_env if mean_env.is_file() else None


def resolve_checkpoint(spec: str | Path) -> tuple[DelitHeads, torch.Tensor | None, dict]:
    """Load the heads named by ``spec``: a save_pretrained folder, a heads file, a run folder,
    or ``"demo"``.

    Returns ``(heads, mean_env, info)``: ``mean_env`` is the training split's mean env map
    ``[3,128,256]`` linear HDR read from ``mean_env.exr`` beside the heads, or None when there
    is none; ``info`` holds ``checkpoint`` (path), ``mean_env`` (path or None), ``extra``
    (the training metadata), ``image_size`` (int or None) and ``vae_fingerprint`` (or None).
    Raises ``DelitError`` for a missing or unusable checkpoint (VAE weights, garbage, ...).
    """
    # the HDR reader pulls in OpenEXR
    from delit_cache.lighting.envmap import load_env, require_light

    heads_path, env_path = _checkpoint_files(spec)
    heads, facts = load_heads(heads_path), heads_facts(heads_path)
    mean_env = require_light(load_env(env_path), env_path) if env_path is not None else None
    info = {
        "checkpoint": str(heads_path),
        "mean_env": str(env_path) if env_path is not None else None,
        **facts,
    }
    return heads, mean_env, info


def vae_mismatch_warning(info: dict, vae: object) -> str | None:
    """One warning line if the heads were trained on a VAE with another fingerprint, else None."""
    trained, given = info.get("vae_fingerprint"), getattr(vae, "fingerprint", None)
    if trained and given and trained != given:
        return (
            f"warning: {info['checkpoint']}: heads were trained on VAE {trained}, "
            f"but the given VAE is {given}; results may be poor"
        )
    return None


def model_size(info: dict, size: int | None) -> int:
    """The model input size: ``size`` if given, else the heads' training size, else 512."""
    chosen = size if size is not None else info.get("image_size") or DEFAULT_SIZE
    if chosen % 8 or chosen < 8:
        raise DelitError(f"--size {chosen}: the model size must be a positive multiple of 8")
    return int(chosen)


def load_vae_and_model(
    checkpoint: str | Path,
    vae: str | Path | torch.nn.Module,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    size: int | None = None,
    warn: bool = True,
    lora: str | Path | None = None,
) -> tuple[DelitModel, PortraitTransform, torch.Tensor | None, dict]:
    """Checkpoint + VAE (path, ``"demo"`` or a loaded ``WanVAE``) -> model, transform, mean env,
    info; ``lora`` names decoder adapters (``delit train-lora``'s file) to load into the VAE
    (a loaded ``WanVAE`` passed in then holds them)."""
    heads, mean_env, info = resolve_checkpoint(checkpoint)
    device = resolve_device(device)
    if not isinstance(vae, torch.nn.Module):
        from delit_cache.vae import load_wan_vae

        vae = load_wan_vae(vae, device=device, dtype=resolve_dtype(dtype))
    info["lora"] = None
    if lora is not None:
        from delit_cache.vae.lora import apply_lora_file

        spec = apply_lora_file(vae, lora)
        info["lora"] = {"file": str(lora), "rank": spec.rank, "alpha": spec.alpha}
    message = vae_mismatch_warning(info, vae)
    if message and warn:
        log.warning(message)
    info["vae_warning"] = message
    info["vae_fingerprint_given"] = getattr(vae, "fingerprint", None)
    image_size = model_size(info, size)
    info["model_size"] = image_size
    model, transform = create_model_and_transforms(vae, heads, image_size=image_size, device=device)
    return model, transform, mean_env, info


# ----------------------------------------------------------------------------------------------
# Inputs and output names


def collect_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files and folders -> (image files, one-line problems for inputs that do not exist).

    Folders are searched recursively for png/jpg/jpeg/webp/tif files, less the PNGs that
    ``delit infer`` wrote (``is_own_output``); a file named in ``inputs`` is always taken.
    Each folder's files and the list as a whole keep the given order, folder contents sorted.
    Duplicates (the same file named twice, by any spelling or link) are dropped.
    """
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found, problem = _folder_photos(path)
            problems.extend([problem] if problem else [])
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    unique: dict[Path, Path] = {}  # resolved path -> the first spelling given
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values()), problems


def _folder_photos(folder: Path) -> tuple[list[Path], str | None]:
    """The photos under ``folder`` (sorted), less delit infer's own outputs; a problem line
    when none is left."""
    found = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    photos = [p for p in found if not is_own_output(p)]
    if len(photos) < len(found):
        log.info(
            "%s: skipping %d image(s) that delit infer wrote (name a file to delight it)",
            folder,
            len(found) - len(photos),
        )
    if photos:
        return photos, None
    if found:
        return [], f"{folder}: folder holds only images that delit infer wrote"
    return [], f"{folder}: folder holds no png/jpg/jpeg/webp/tif images"


# a text chunk in every PNG, and a header attribute in every EXR, that delit infer writes
OUTPUT_MARK = {"Software": "delit infer"}
OUTPUT_SUFFIXES = ("_flat.png", "_env.exr", "_env.png")


def is_own_output(path: Path) -> bool:
    """Whether ``path`` is a PNG or EXR that ``delit infer`` wrote (it carries
    ``OUTPUT_MARK``): a folder that also receives the outputs must not feed them back in as
    photos, and a rerun may replace them, but no other file."""
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as im:  # reads the chunks before the pixels only
                found = {k: im.info.get(k) for k in OUTPUT_MARK}
        elif path.suffix.lower() == ".exr":
            import OpenEXR

            with OpenEXR.File(str(path), header_only=True) as f:  # the header is gone after
                found = {k: f.header().get(k) for k in OUTPUT_MARK}
        else:
            return False
        return found == OUTPUT_MARK
    except Exception:  # unreadable: not ours; reading it as a photo reports it
        return False


@dataclass
class InputPlan:
    """The photos of one run, their output names, and one-line problems for missing inputs."""

    paths: list[Path]
    problems: list[str]
    names: dict[Path, str]


def plan_inputs(inputs: Sequence[str | Path], out_dir: str | Path) -> InputPlan:
    """``collect_inputs`` and ``output_names``; ``DelitError`` naming both paths when an
    output in ``out_dir`` would overwrite an input (``--out`` is a folder of the inputs), or
    naming the file when it would replace one that delit infer did not write."""
    paths, problems = collect_inputs(inputs)
    names = output_names(paths)
    given = {p.resolve(): p for p in paths}
    for path in paths:
        for suffix in OUTPUT_SUFFIXES:
            target = Path(out_dir) / f"{names[path]}{suffix}"
            if target.resolve() in given:
                raise DelitError(
                    f"{target}: the output of {path} would overwrite this input; "
                    "choose another --out"
                )
            if target.is_file() and not is_own_output(target):
                raise DelitError(
                    f"{target}: exists and delit infer did not write it; the output of {path} "
                    "would replace it (choose another --out, or move the file away)"
                )
    return InputPlan(paths, problems, names)


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A distinct output stem for every input path.

    A file keeps its stem unless another input shares it; same-stem inputs are named by their
    path relative to their common folder, joined with ``__`` (``a/x.png``, ``b/x.png`` ->
    ``a__x``, ``b__x``), with the extension added if still equal (``x.png``, ``x.jpg`` ->
    ``x_png``, ``x_jpg``); a numeric suffix settles anything left.
    """
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in paths:
        by_stem[p.stem].append(p)
    names: dict[Path, str] = {}
    for stem, group in by_stem.items():
        if len(group) == 1:
            names[group[0]] = stem
            continue
        resolved = [p.resolve() for p in group]
        root = Path(_common_parent(resolved))
        rel = ["__".join(r.relative_to(root).with_suffix("").parts) for r in resolved]
        dup = {n for n in rel if rel.count(n) > 1}
        rel = [
            f"{n}_{p.suffix.lstrip('.').lower()}" if n in dup else n
            for n, p in zip(rel, group, strict=True)
        ]
        names.update(zip(group, rel, strict=True))
    seen: set[str] = set()
    for p in paths:
        base, name, k = names[p], names[p], 2
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        names[p] = name
    return names


def _common_parent(paths: Sequence[Path]) -> str:
    import os.path

    return os.path.commonpath([str(p.parent) for p in paths])


def to_image_tensor(image: np.ndarray | torch.Tensor | object) -> torch.Tensor:
    """A photo -> float32 ``[3,H,W]`` in [0,1].

    Accepts a PIL image; a numpy array ``[H,W]``/``[H,W,C]`` (channels last); or a torch tensor
    ``[3,H,W]`` (channels first, the library convention) or ``[H,W,3]``. Values are uint8 or
    floats in [0,1] (clipped); a fourth (alpha) channel is dropped, grey is replicated.
    """
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        if not hasattr(image, "convert"):
            raise TypeError(f"expected an array, tensor or PIL image, got {type(image).__name__}")
        image = np.asarray(image.convert("RGB"))  # type: ignore[attr-defined]
    if isinstance(image, np.ndarray):
        x = torch.from_numpy(np.array(image))  # a copy: PIL arrays are read-only
        x = x[..., None] if x.ndim == 2 else x
        x = x.permute(2, 0, 1) if x.ndim == 3 else x
    else:
        x = image.detach().cpu()
        x = x[None] if x.ndim == 2 else x
        if x.ndim == 3 and x.shape[0] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
            x = x.permute(2, 0, 1)
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected an RGB image, got shape {tuple(image.shape)}")
    x = x[:3] if x.shape[0] >= 3 else x.expand(3, -1, -1)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float().clamp(0.0, 1.0).contiguous()


# ----------------------------------------------------------------------------------------------
# The Delighter


@dataclass
class DelitResult:
    """One photo's result: ``flat`` [H,W,3] float32 in [0,1] (the photo's size, sRGB-encoded
    like the input) and ``env`` [128,256,3] float32 linear HDR radiance."""

    flat: np.ndarray
    env: np.ndarray


@dataclass
class RunSummary:
    """What ``Delighter.run`` did: outputs per input, and one-line problems for the failures."""

    written: dict[Path, list[Path]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def all_failed(self) -> bool:
        """Every input failed (each already reported in its own line): nothing was written."""
        return bool(self.failed) and not self.written

    def line(self) -> str:
        n_ok, n_bad = len(self.written), len(self.failed)
        return f"delit infer: {n_ok} image(s) done, {n_bad} failed"


class Delighter:
    """Photos -> (flat-lit image, env map). Build with ``Delighter.from_pretrained``."""

    def __init__(
        self,
        model: DelitModel,
        transform: PortraitTransform,
        device: torch.device,
        batch_size: int = 4,
        info: dict | None = None,
        flip_average: bool = False,
    ):
        if batch_size < 1:
            raise DelitError(f"--batch-size {batch_size}: must be >= 1")
        self.model = model.eval()
        self.transform = transform
        self.device = device
        self.batch_size = batch_size
        self.info = info or {}
        self.flip_average = flip_average  # DelitModel.infer's mirror-image averaging

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        vae: str | Path | torch.nn.Module,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        size: int | None = None,
        batch_size: int = 4,
        lora: str | Path | None = None,
        compile: bool = False,
        flip_average: bool = False,
    ) -> Delighter:
        """Checkpoint (save_pretrained folder, heads file, run folder or ``"demo"``) and VAE
        (path, ``"demo"`` or a loaded ``WanVAE``) -> a ready ``Delighter``; ``dtype`` is the
        VAE's compute dtype; ``lora`` an adapter file for the decoder. On CUDA the speed
        settings of ``delit_cache.infer.fast`` apply; ``compile`` adds torch.compile (CUDA
        graphs at batch 1 on CUDA); ``flip_average`` averages each photo's answer with its
        mirror image's (``DelitModel.infer``)."""
        from delit_cache.infer.fast import speed_up

        dev = resolve_device(device)
        model, transform, _, info = load_vae_and_model(checkpoint, vae, dev, dtype, size, lora=lora)
        speed_up(model, dev, batch_size, compile=compile)
        return cls(model, transform, dev, batch_size, info, flip_average)

    def __call__(self, image: np.ndarray | torch.Tensor | object) -> DelitResult:
        """One photo (array [H,W,3], PIL image or tensor; values in [0,1] or uint8)."""
        return self.predict([to_image_tensor(image)])[0]

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[DelitResult]:
        """Photos [3,H,W] in [0,1] of any sizes -> results, run in batches of ``batch_size``."""
        results: list[DelitResult] = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self._predict_batch(images[start : start + self.batch_size]))
        return results

    def _predict_batch(self, images: Sequence[torch.Tensor]) -> list[DelitResult]:
        squares, placements = zip(*(self.transform(im) for im in images), strict=True)
        batch = torch.stack(squares).to(self.device)
        out = self.model.infer(batch, flip_average=self.flip_average)
        flats = out["flat"].float().cpu()
        envs = out["env"].float().cpu()
        return [
            DelitResult(
                flat=self.transform.restore(f, p).permute(1, 2, 0).contiguous().numpy(),
                env=e.permute(1, 2, 0).contiguous().numpy(),
            )
            for f, e, p in zip(flats, envs, placements, strict=True)
        ]

    def run(
        self, inputs: Sequence[str | Path] | InputPlan, out_dir: str | Path, progress: bool = True
    ) -> RunSummary:
        """Delight every photo in ``inputs`` (files or folders, or their ``plan_inputs``)
        into ``out_dir``.

        Writes ``<name>_flat.png`` (the photo's size), ``<name>_env.exr`` (128 x 256 linear
        HDR) and ``<name>_env.png`` (panorama and three spheres) atomically. An unreadable
        photo is reported in one line on stderr and skipped; see ``RunSummary``. An output
        that would overwrite an input is a ``DelitError`` before any photo is read.
        """
        out = Path(out_dir)
        plan = inputs if isinstance(inputs, InputPlan) else plan_inputs(inputs, out)
        paths, names = plan.paths, plan.names
        summary = RunSummary(failed=list(plan.problems))
        for line in plan.problems:
            log.error("error: %s", line)
        if not paths:
            return summary
        existed = out.exists()
        bar = progress_bar(total=len(paths), unit="img", enabled=progress)
        try:
            with logging_beside_bars():
                for batch in _path_batches(paths, self.batch_size):
                    loaded = self._load_batch(batch, summary)
                    if loaded:
                        writable_dir(out)  # only once there is something to write
                        results = self.predict([im for _, im in loaded])
                        for (path, _), res in zip(loaded, results, strict=True):
                            _write_checked(path, res, out / names[path], summary)
                    bar.update(len(batch))
        finally:
            bar.close()
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # a run that wrote nothing (out of memory, say) leaves no folder
        return summary

    def _load_batch(self, batch: Sequence[Path], summary: RunSummary) -> list:
        from delit_cache.data.imageio import read_ldr

        loaded = []
        for path in batch:
            try:
                loaded.append((path, to_image_tensor(read_ldr(path))))
            except DelitError as exc:
                summary.failed.append(str(exc))
                log.error("error: %s", exc)
        return loaded


def _write_checked(path: Path, res: DelitResult, stem: Path, summary: RunSummary) -> None:
    """Write ``res`` for the photo ``path`` unless it holds NaN or Inf (then log it as failed)."""
    if not (np.isfinite(res.flat).all() and np.isfinite(res.env).all()):
        summary.failed.append(f"{path}: the model returned NaN or Inf; nothing written")
    else:
        try:
            summary.written[path] = write_result(res, stem.parent, stem.name)
            return
        except OSError as exc:  # one output that cannot be written fails this photo only
            where = f"{exc.filename}: " if exc.filename else ""
            summary.failed.append(f"{path}: {where}{exc.strerror or exc}; nothing written")
    log.error("error: %s", summary.failed[-1])


def _path_batches(items: Sequence[Path], size: int) -> Iterable[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_result(result: DelitResult, out_dir: Path, name: str) -> list[Path]:
    """Write ``<name>_flat.png``, ``<name>_env.exr`` and ``<name>_env.png`` (the PNGs marked
    with ``OUTPUT_MARK``); return the paths."""
    from delit_cache.data.imageio import write_exr, write_png
    from delit_cache.lighting.envshow import env_figure

    figure = env_figure(torch.from_numpy(result.env).permute(2, 0, 1))
    flat, exr, show = (out_dir / f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES)
    writes = [
        (flat, lambda p: write_png(p, result.flat, text=OUTPUT_MARK)),
        (exr, lambda p: write_exr(p, result.env, text=OUTPUT_MARK)),
        (show, lambda p: write_png(p, figure, text=OUTPUT_MARK)),
    ]
    done: list[Path] = []
    try:
        for path, write in writes:
            write(path)
            done.append(path)
    except BaseException:  # all three or none: a photo's outputs are never half there
        for path in done:
            path.unlink(missing_ok=True)
        raise
    return done

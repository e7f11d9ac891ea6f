"""Checkpoint averaging: a finished run's heads averaged over some of its saved steps.

Late in a cosine schedule a run's saved steps scatter around one solution; their uniform
mean (as fairseq's ``average_checkpoints`` and stochastic weight averaging take it) can score
better than any one of them. ``delit average-heads`` writes the mean as a new run folder
(``heads.safetensors``, the run's ``config.yaml`` and ``mean_env.exr``) that ``eval``,
``infer`` and ``--init-from`` read like any other. With ``blend`` the mean is then averaged
half and half with other heads of the same architecture (typically the heads the run was
fine-tuned from: a "model soup" of the run's end and its start).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from delit_cache.models.pretrained import (
    HEADS_FILENAME,
    heads_facts,
    heads_weights_path,
    load_heads,
    require_same_training,
    save_heads,
)
from delit_cache.train import state as trainstate
from delit_cache.utils.atomic import atomic_dir, check_output_dir
from delit_cache.utils.errors import DelitError

RUN_FILES = ("config.yaml", "mean_env.exr")  # copied from the run beside the averaged heads


def step_checkpoints(run: Path, steps: list[int] | None = None, last: int = 0) -> list[Path]:
    """The ``step_XXXXXX.pt`` files of ``run``: those of ``steps``, or the ``last`` newest."""
    folder = run / trainstate.CKPT_DIR
    if steps:
        if min(steps) < 1:
            raise DelitError(f"--steps {','.join(map(str, steps))}: steps are positive numbers")
        if len(set(steps)) != len(steps):
            raise DelitError(f"--steps {','.join(map(str, steps))}: a step is named twice")
        paths = [folder / f"step_{s:06d}.pt" for s in steps]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DelitError(f"{missing[0]}: no such checkpoint (keep_last may have dropped it)")
        return paths
    if last < 2:
        raise DelitError(f"--last {last}: average at least 2 checkpoints")
    found = trainstate.step_files(folder)
    if len(found) < last:
        raise DelitError(f"{folder}: {len(found)} step checkpoints, fewer than --last {last}")
    return found[-last:]


def mean_state(
    first: tuple[str, dict[str, torch.Tensor]],
    others: Iterable[tuple[str, dict[str, torch.Tensor]]],
) -> dict[str, torch.Tensor]:
    """The uniform mean (in float64, stored as float32) of named heads state dicts, read one at
    a time; integer tensors must agree. ``DelitError`` naming the first that does not match
    ``first``."""
    first_name, state = first
    sums = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    count = 1
    for name, heads in others:
        if heads.keys() != sums.keys():
            raise DelitError(f"{name}: other heads weights than {first_name}")
        for k, v in heads.items():
            if v.shape != sums[k].shape:
                raise DelitError(f"{name}: {k} is {tuple(v.shape)}, not {tuple(sums[k].shape)}")
            if v.is_floating_point():
                sums[k] += v.double()
            elif not torch.equal(v, sums[k]):
                raise DelitError(f"{name}: {k} differs from {first_name}")
        count += 1
    return {k: (v / count).float() if v.is_floating_point() else v for k, v in sums.items()}


def average_heads(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The mean of the checkpoints' heads weights (``mean_state``), naming a bad file."""
    first = (paths[0].name, trainstate.load_checkpoint(paths[0])["heads"])
    return mean_state(first, ((p, trainstate.load_checkpoint(p)["heads"]) for p in paths[1:]))


def blend_heads(
    state: dict[str, torch.Tensor], other: Path, other_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` and ``other_state`` (the heads at ``other``) averaged half and half
    (``mean_state``); ``DelitError`` naming ``other`` when its weights do not match."""
    return mean_state(("the run's", state), [(other, other_state)])


def blend_partner(blend: Path, facts: dict) -> dict[str, torch.Tensor]:
    """The weights of the heads at ``blend``, which must have been trained like the run of
    ``facts`` (same VAE and size: ``require_same_training``)."""
    path = heads_weights_path(blend)
    other, other_facts = load_heads(path), heads_facts(path)
    fingerprint, size = facts["vae_fingerprint"], facts["image_size"]
    require_same_training(f"--blend {blend}", other_facts, fingerprint, size)
    return other.state_dict()


def write_averaged_run(
    run: Path, out: Path, steps: list[int] | None = None, last: int = 0, blend: Path | None = None
) -> Path:
    """``out``: a run folder whose heads are the mean of ``run``'s chosen step checkpoints,
    averaged half and half with the heads at ``blend`` when given.

    ``run`` must be finished (its ``heads.safetensors`` gives the architecture and training
    facts); ``out`` must not exist. The folder is built as ``out.partial``, then renamed.
    """
    run, out = Path(run), Path(out)
    final = run / HEADS_FILENAME
    if not final.is_file():
        raise DelitError(f"{run}: not a finished run folder (no {HEADS_FILENAME})")
    if out.exists():
        raise DelitError(f"{out}: exists already (pass a new --out)")
    check_output_dir(out.parent)
    paths = step_checkpoints(run, steps, last)
    heads, facts = load_heads(final), heads_facts(final)
    partner = blend_partner(Path(blend), facts) if blend is not None else None
    try:
        heads.load_state_dict(average_heads(paths), strict=True)
    except RuntimeError as exc:
        raise DelitError(f"{paths[0]}: does not match {final} ({exc})") from None
    extra = dict(facts["extra"])
    extra["averaged_steps"] = [trainstate.checkpoint_step(p) for p in paths]
    extra["averaged_from"] = str(run.resolve())
    if partner is not None:
        blend = Path(blend)
        heads.load_state_dict(blend_heads(heads.state_dict(), blend, partner), strict=True)
        extra["blended_with"] = str(blend.resolve())
    with atomic_dir(out) as tmp:
        save_heads(heads, tmp / HEADS_FILENAME, extra)
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, tmp / name)
    return out

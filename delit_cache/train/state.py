"""Training checkpoints: everything ``--resume`` needs, saved atomically, loaded weights-only.

``RUN/checkpoints/latest.pt`` and ``RUN/checkpoints/step_XXXXXX.pt`` (the last ``keep_last``
kept) each hold a dict of tensors and plain Python values only::

    heads      state dict of the heads
    optimizer  AdamW state dict
    scheduler  LambdaLR state dict
    step       optimiser steps done (int)
    rng        torch / cuda / numpy / python RNG states of rank 0
    config     the resolved TrainConfig as a dict

so ``torch.load(path, weights_only=True)`` reads it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delit_cache.utils.atomic import atomic_path
from delit_cache.utils.errors import DelitError
from delit_cache.utils.logs import get_logger

log = get_logger(__name__)

CKPT_DIR = "checkpoints"
LATEST = "latest.pt"
STEP_FILE = re.compile(r"^step_(\d{6,})\.pt$")


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors / lists (weights-only loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_step(path: Path) -> int:
    """The step of a ``step_XXXXXX.pt`` file."""
    return int(STEP_FILE.match(path.name)[1])


def step_files(folder: Path) -> list[Path]:
    """The ``step_XXXXXX.pt`` files of a checkpoint folder, oldest step first (by number, so
    step 1000000 sorts after 999999)."""
    return sorted(
        (p for p in folder.glob("step_*.pt") if STEP_FILE.match(p.name)), key=checkpoint_step
    )


def save_checkpoint(run: Path, state: dict[str, Any], step: int, keep_last: int) -> Path:
    """Write ``step_XXXXXX.pt`` and ``latest.pt`` atomically; drop all but ``keep_last`` steps."""
    folder = run / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    step_path = folder / f"step_{step:06d}.pt"
    for target in (step_path, folder / LATEST):
        with atomic_path(target) as tmp:
            torch.save(state, tmp)
    for old in step_files(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return step_path


def load_resumable(run: Path) -> dict[str, Any]:
    """The newest intact checkpoint of ``run``: ``latest.pt``, else (with a warning) the newest
    ``step_XXXXXX.pt`` that loads; ``DelitError`` naming the first problem when none does."""
    folder = run / CKPT_DIR
    problems = []
    for path in [folder / LATEST, *reversed(step_files(folder))]:
        try:
            state = load_checkpoint(path)
        except DelitError as exc:
            problems.append(str(exc))
            continue
        if problems:
            log.warning("%s; resuming from %s (step %s)", problems[0], path, state["step"])
        return state
    raise DelitError(problems[0])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint (weights only); ``DelitError`` when unusable."""
    if not path.is_file():
        raise DelitError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DelitError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise DelitError(f"{path}: not a delit training checkpoint (a {type(state).__name__})")
    missing = {"heads", "optimizer", "scheduler", "step", "rng"} - set(state)
    if missing:
        raise DelitError(f"{path}: not a delit training checkpoint (missing {sorted(missing)})")
    bad = [k for k, v in state["heads"].items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise DelitError(f"{path}: heads weights hold NaN or Inf (e.g. {bad[0]})")
    return state

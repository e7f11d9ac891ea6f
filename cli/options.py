"""Option types shared by the ``delit`` commands, and the old script spellings they accept.

Each ``XxxOption`` is an ``Annotated`` type: ``device: DeviceOption = "auto"``. Old
spellings (``--data_root``, ``--batch_size``, ...) are rewritten to the current ones before
parsing by ``accepts_old_spellings``, so they work but stay out of ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from delit_cache.utils.device import DEVICE_CHOICES

DeviceOption = Annotated[
    str,
    typer.Option(
        "--device", help=f"Where to run: {DEVICE_CHOICES} (auto: cuda, else mps, else cpu)."
    ),
]
DtypeOption = Annotated[
    str, typer.Option("--dtype", help="VAE compute precision: float32 (fp32) or bfloat16 (bf16).")
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Images per VAE call.")]
VaeOption = Annotated[
    str,
    typer.Option(
        "--vae", help="Wan 2.1 VAE: model folder, .pth/.safetensors file, or 'demo' (stand-in)."
    ),
]
CheckpointOption = Annotated[
    str,
    typer.Option(
        "--checkpoint",
        help="Heads: a folder from save_pretrained (config.json + model.safetensors), a heads "
        ".safetensors file, a run folder, or 'demo'.",
    ),
]
DataOption = Annotated[
    list[str],
    typer.Option("--data", help="Shards: folder, .tar file, glob or brace pattern (repeatable)."),
]
ModelSizeOption = Annotated[
    int | None,
    typer.Option("--size", help="Model input size (default: the heads' training size, else 512)."),
]
ProgressOption = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress", help="Progress bar on stderr (only when it is a terminal)."
    ),
]


def _rewrite(args: list[str], spellings: dict[str, str]) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        out.append(spellings[name] + eq + value if name in spellings else arg)
    return out


def accepts_old_spellings(spellings: dict[str, str]) -> type[TyperCommand]:
    """A command class that reads ``old`` as ``new`` for each ``old: new`` of ``spellings``
    (``--batch_size 4`` and ``--batch_size=4``), without listing ``old`` in ``--help``."""

    class OldSpellings(TyperCommand):
        def parse_args(self, ctx, args: list[str]) -> list[str]:
            return super().parse_args(ctx, _rewrite(list(args), spellings))

    return OldSpellings


LoraOption = Annotated[
    Path | None,
    typer.Option(
        "--lora",
        help="LoRA adapters for the decoder (a lora.safetensors from delit train-lora).",
    ),
]
FlipAverageOption = Annotated[
    bool,
    typer.Option(
        "--flip-average/--no-flip-average",
        help="Also run each photo's mirror image and average the two answers (flat-lit in "
        "pixels, env map in radiance): better figures, twice the compute.",
    ),
]

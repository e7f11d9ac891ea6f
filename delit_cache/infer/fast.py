"""Speed settings for inference: cuDNN autotuning, TF32, channels-last, torch.compile, CUDA graphs.

``speed_up(model, device, batch_size, compile=...)`` prepares a ``DelitModel`` in place:

- on CUDA: cuDNN autotuning (``cudnn.benchmark``: each conv shape picks its fastest kernel
  on first use) and TF32 matmuls/convs for float32 (what ``h100-vae.md`` measured), and the
  VAE's single-frame path in channels-last (NHWC) format;
- ``compile=True``: the VAE's encoder and decoder through ``torch.compile`` in fixed chunks of
  ``batch_size`` images, and the heads too; at batch 1 on CUDA with
  ``mode="reduce-overhead"``, which replays CUDA graphs (kernel launches cost more than the
  arithmetic there).

All of it leaves the values the same up to float rounding (checked against the plain float32
path by ``benchmarks/gpu_all.sh`` (``benchmarks/gpu_speed.py infer``)).
"""

from __future__ import annotations

import torch

from delit_cache.utils.logs import get_logger

log = get_logger(__name__)


def speed_up(
    model,
    device: torch.device,
    batch_size: int,
    compile: bool = False,
    channels_last: bool | None = None,
    backend: str = "inductor",
):
    """Apply the speed settings to ``model`` (a ``DelitModel``) in place; return it.

    ``channels_last``: None means on for CUDA only (on CPU it is not reliably faster).
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vae = model.vae
    if channels_last if channels_last is not None else cuda:
        vae.channels_last = True
    if compile:
        mode = "reduce-overhead" if cuda and batch_size == 1 else None
        vae.compile_codec(batch_size, backend=backend, mode=mode)
        model.heads = torch.compile(model.heads, dynamic=False, backend=backend, mode=mode)
        log.info("compiling the VAE and heads (batch %d, mode %s)", batch_size, mode or "default")
    return model

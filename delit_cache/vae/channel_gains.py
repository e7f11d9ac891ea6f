"""How much each latent channel shows in decoded pixels: per-channel weights for the flat loss.

A codec's latent channels are not equal: some carry most of the image, others almost none
(the demo codec's largest and smallest gains differ by more than 10x). A flat loss that
counts every standardised channel alike spends the heads' capacity on channels the decoder
hardly shows. ``decoder_channel_gains`` measures, per channel, the RMS change of the
decoded pixels per unit of standardised latent error; ``benchmarks/channel_gains.py`` prints
them as the ``flat_channel_weights`` line of a training config.
"""

from __future__ import annotations

import torch

from delit_cache.utils.errors import DelitError


@torch.no_grad()
def decoder_channel_gains(
    vae,
    latents: torch.Tensor,
    std: torch.Tensor | None = None,
    noise: float = 0.1,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``latents`` ``[N,C,h,w]`` (normalised, e.g. ``vae.encode`` of flat-lit images) ->
    ``(gains, std)``, both ``[C]``.

    ``std`` ``[C]``: the latent unit per channel, as the flat loss standardises it (the heads'
    ``latent_std``, from the training cache); None: each channel's std over ``latents``.
    For each channel c, the latents get i.i.d. Gaussian noise of ``noise`` x ``std[c]`` in
    channel c only; the gain is the RMS change of the decoded image (clamped to [0,1], as
    scored) divided by ``noise``. The gains are returned normalised to mean 1, with the
    ``std`` used.
    """
    if latents.ndim != 4 or latents.shape[0] < 2:
        raise DelitError(f"need latents [N>=2,C,h,w], got {tuple(latents.shape)}")
    if not noise > 0:
        raise DelitError(f"noise must be > 0, got {noise}")
    latents = latents.float()
    if std is None:
        std = latents.transpose(0, 1).flatten(1).std(dim=1)
    std = std.float().cpu()
    if std.shape != (latents.shape[1],):
        raise DelitError(f"std must have shape ({latents.shape[1]},), got {tuple(std.shape)}")
    if not bool(torch.isfinite(latents).all()) or not bool((std > 0).all()):
        raise DelitError("latents must be finite and std > 0 in every channel")
    generator = torch.Generator().manual_seed(seed)
    base = vae.decode(latents)
    power = torch.zeros(latents.shape[1])
    for c in range(latents.shape[1]):
        shifted = latents.clone()
        step = noise * float(std[c])
        shifted[:, c] += step * torch.randn(shifted[:, c].shape, generator=generator).to(shifted)
        power[c] = (vae.decode(shifted) - base).pow(2).mean()
    gains = power.sqrt() / noise
    if not bool(gains.sum() > 0):
        raise DelitError("the decoder shows none of the channels (every gain is 0)")
    return gains / gains.mean(), std

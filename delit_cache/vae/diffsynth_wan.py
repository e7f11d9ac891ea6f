"""Everything that touches DiffSynth's Wan VAE code.

Import this module only inside functions (as ``delit_cache.vae`` does): ``import
delit_cache.vae`` must not load it. The code comes from DiffSynth's
``models/wan_video_vae.py`` alone (``wan_source``), not the whole ``diffsynth`` package.

The single-frame fold: every ``CausalConv3d`` pads ``kt - 1`` zero frames in front of its
input (``kt`` = temporal kernel size). For a one-frame input without cached frames, the
output has one frame and only the last temporal slice of the kernel touches data, so the
layer equals ``F.conv2d`` with ``weight[:, :, -1]`` on that frame (same spatial zero
padding). ``FoldedCausalConv3d`` does exactly that and falls back to the original forward
for anything else (cached frames, several frames, strided or dilated time axes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from delit_cache.vae.wan_source import wan_video_vae_module

_wan = wan_video_vae_module()
CausalConv3d = _wan.CausalConv3d
VideoVAE_ = _wan.VideoVAE_

__all__ = ["CausalConv3d", "FoldedCausalConv3d", "NullCache", "VideoVAE_", "build_videovae"]


class FoldedCausalConv3d(CausalConv3d):
    """A ``CausalConv3d`` that runs one uncached frame as a 2-D convolution (exact).

    Instances are made by swapping the class of existing ``CausalConv3d`` modules (see
    ``fold_single_frame``); the parameters and state-dict keys are unchanged.
    ``fold_enabled`` switches the 2-D path on or off; ``channels_last`` runs it in the
    channels-last memory format (NHWC: faster on tensor cores, same values).
    """

    fold_enabled: bool = True
    channels_last: bool = False

    def _foldable(self, x: torch.Tensor, cache_x: torch.Tensor | None) -> bool:
        kt = self.kernel_size[0]
        return (
            self.fold_enabled
            and cache_x is None
            and x.dim() == 5
            and x.shape[2] == 1
            and self.stride[0] == 1
            and self.dilation[0] == 1
            and self._padding[4] == kt - 1
            and self._padding[5] == 0
        )

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B,C,T,H,W] -> [B,C',T',H',W']; the 2-D path when T == 1 and nothing is cached."""
        if not self._foldable(x, cache_x):
            return super().forward(x, cache_x)
        pad_w, pad_h = self._padding[0], self._padding[2]
        x2d, w2d = x[:, :, 0], self.weight[:, :, -1]
        if self.channels_last:
            x2d = x2d.contiguous(memory_format=torch.channels_last)
            w2d = w2d.contiguous(memory_format=torch.channels_last)
        out = F.conv2d(
            x2d,
            w2d,
            self.bias,
            stride=self.stride[1:],
            padding=(pad_h, pad_w),
            dilation=self.dilation[1:],
            groups=self.groups,
        )
        return out.unsqueeze(2)


def set_channels_last(model: nn.Module, enabled: bool) -> None:
    """Run ``model``'s folded convs and its plain 2-D convs in channels-last format (or not)."""
    fmt = torch.channels_last if enabled else torch.contiguous_format
    for module in model.modules():
        if isinstance(module, FoldedCausalConv3d):
            module.channels_last = enabled
        elif isinstance(module, nn.Conv2d):
            module.to(memory_format=fmt)


def fold_single_frame(model: nn.Module, enabled: bool = True) -> int:
    """Turn every ``CausalConv3d`` of ``model`` into a ``FoldedCausalConv3d``; return the count.

    Idempotent; ``enabled`` sets ``fold_enabled`` on each of them.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, CausalConv3d):
            if not isinstance(module, FoldedCausalConv3d):
                module.__class__ = FoldedCausalConv3d
            module.fold_enabled = enabled
            count += 1
    return count


class NullCache(list):
    """A stand-in for DiffSynth's per-conv frame cache when encoding or decoding ONE frame.

    Reads always give ``None`` (as for the first chunk of a video) and writes are dropped,
    so the clones the encoder and decoder store for later chunks are freed at once
    instead of being held (and, with autograd on, keeping the graph alive) until the
    next ``clear_cache``.
    """

    def __getitem__(self, index: int) -> None:
        return None

    def __setitem__(self, index: int, value: object) -> None:
        return None


def build_videovae(dim: int, z_dim: int = 16, device: str | torch.device = "meta") -> VideoVAE_:
    """An (uninitialised when ``device='meta'``) ``VideoVAE_(dim, z_dim)`` of the Wan 2.1 layout."""
    with torch.device(device):
        return VideoVAE_(dim=dim, z_dim=z_dim)


def encode_one_frame(model: VideoVAE_, x: torch.Tensor) -> torch.Tensor:
    """``x`` [B,3,1,H,W] in [-1,1] (H, W multiples of 8) -> posterior mean [B,z,1,H/8,W/8], unnormalised."""
    out, _, _ = model.encoder(x, feat_cache=NullCache(), feat_idx=[0])
    mu, _log_var = model.conv1(out).chunk(2, dim=1)
    return mu


def decode_one_frame(model: VideoVAE_, z: torch.Tensor) -> torch.Tensor:
    """``z`` [B,z,1,h,w] unnormalised latent -> [B,3,1,8h,8w], roughly [-1,1], not clamped."""
    out, _, _ = model.decoder(model.conv2(z), feat_cache=NullCache(), feat_idx=[0])
    return out


def _shipped(model: VideoVAE_, method, x: torch.Tensor) -> torch.Tensor:
    """Call DiffSynth's ``VideoVAE_.encode``/``decode`` with an identity scale, then clear its cache."""
    zero = torch.zeros(model.z_dim, device=x.device, dtype=x.dtype)
    try:
        return method(x, [zero, torch.ones_like(zero)])
    finally:
        model.clear_cache()


def encode_shipped(model: VideoVAE_, x: torch.Tensor) -> torch.Tensor:
    """DiffSynth's own ``VideoVAE_.encode`` (no normalisation), cache cleared afterwards."""
    return _shipped(model, model.encode, x)


def decode_shipped(model: VideoVAE_, z: torch.Tensor) -> torch.Tensor:
    """DiffSynth's own ``VideoVAE_.decode`` (no normalisation, no clamp), cache cleared afterwards."""
    return _shipped(model, model.decode, z)

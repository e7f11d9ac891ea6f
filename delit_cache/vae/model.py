"""``WanVAE``: the frozen Wan 2.1 VAE as a batched image codec (one frame per image).

Images are display-referred sRGB values as stored in a PNG, float in [0, 1], ``[B,3,H,W]``;
they are mapped to [-1, 1] internally. Latents are the posterior mean normalised per
channel, ``(mu - mean) / std``, ``[B,16,ceil(H/8),ceil(W/8)]`` (Wan 2.1 constants for real
Wan weights), which puts most values within a few units of 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Wan 2.1 latent normalisation (as in diffsynth.models.wan_video_vae.WanVideoVAE).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


class WanVAE(nn.Module):
    """Frozen Wan 2.1 VAE (DiffSynth ``VideoVAE_``) with batched single-image helpers.

    * ``encode(images [B,3,H,W] in [0,1]) -> latents [B,16,ceil(H/8),ceil(W/8)]``
    * ``decode(latents [B,16,h,w], size=None) -> images [B,3,8h,8w] in [0,1]``
      (``size=(H, W)`` crops to the original size: ``decode(encode(x), size=x.shape[-2:])``
      or ``roundtrip(x)`` returns ``x``'s size).

    Computation runs in the load dtype (float32 or bfloat16); inputs are cast, outputs are
    float32. Weights never get gradients (``requires_grad=False``, always ``eval()``), but
    gradients flow through ``decode`` (and ``encode``) to their inputs.

    Attributes: ``z_dim`` (16), ``scale_factor`` (8), ``dim`` (width: 96 for the real VAE),
    ``fingerprint`` (16 hex chars identifying the weights), ``source`` (where they came
    from), ``dtype``, ``device``, ``fast_single_frame`` (the exact 2-D fold of each causal
    3-D conv for one frame, on by default; settable).
    """

    z_dim: int = 16
    scale_factor: int = 8

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | torch.Tensor = WAN21_LATENT_MEAN,
        std: Sequence[float] | torch.Tensor = WAN21_LATENT_STD,
        *,
        fingerprint: str = "",
        source: str = "",
        fast_single_frame: bool = True,
    ) -> None:
        super().__init__()
        from delit_cache.vae.diffsynth_wan import fold_single_frame

        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != self.z_dim or std_t.numel() != self.z_dim:
            raise ValueError(f"latent mean/std need {self.z_dim} values each")
        if getattr(model, "z_dim", None) != self.z_dim:
            raise ValueError(f"WanVAE needs a VideoVAE_ with z_dim={self.z_dim}")
        self.model = model
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())
        self.dim = int(model.dim)
        self.fingerprint = fingerprint
        self.source = source
        self.model.requires_grad_(False)
        fold_single_frame(self.model, fast_single_frame)
        self._fast = fast_single_frame
        self._compiled: dict[str, object] = {}  # "encode"/"decode" -> compiled one-frame fn
        self._compiled_batch = 0
        super().train(False)

    # -- frozen state -------------------------------------------------------------------
    def train(self, mode: bool = True) -> WanVAE:
        """Always stays in eval mode (the VAE is frozen); ``mode`` is ignored."""
        return super().train(False)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """``.to()``/``.cuda()``/``.half()`` move the VAE; mean/std stay float32."""
        mean, std = self.mean, self.std
        super()._apply(fn, recurse)
        self.mean = mean.to(device=self.mean.device, dtype=torch.float32)
        self.std = std.to(device=self.std.device, dtype=torch.float32)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the VAE weights (float32 or bfloat16)."""
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the VAE weights."""
        return next(self.model.parameters()).device

    @property
    def num_params(self) -> int:
        """Total parameter count (126.9 M for the real Wan 2.1 VAE)."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def fast_single_frame(self) -> bool:
        """Whether the exact single-frame 2-D fold (and cache-free path) is used."""
        return self._fast

    @fast_single_frame.setter
    def fast_single_frame(self, enabled: bool) -> None:
        from delit_cache.vae.diffsynth_wan import fold_single_frame

        fold_single_frame(self.model, bool(enabled))
        self._fast = bool(enabled)

    @property
    def channels_last(self) -> bool:
        """Whether the single-frame path runs in the channels-last (NHWC) memory format."""
        return getattr(self, "_channels_last", False)

    @channels_last.setter
    def channels_last(self, enabled: bool) -> None:
        from delit_cache.vae.diffsynth_wan import set_channels_last

        set_channels_last(self.model, bool(enabled))
        self._channels_last = bool(enabled)

    def compile_codec(
        self, batch_size: int, backend: str = "inductor", mode: str | None = None
    ) -> WanVAE:
        """Run the single-frame encoder and decoder through ``torch.compile`` (inductor).

        Every call then runs in chunks of exactly ``batch_size`` images (a shorter last chunk
        is padded with zeros and cut off again), so each graph compiles once. Compiling takes
        minutes on CPU and pays off over thousands of images (``delit encode --compile``).
        ``mode``: torch.compile's mode; ``"reduce-overhead"`` replays CUDA graphs on CUDA.
        """
        if not self._fast:
            raise ValueError("compile_codec needs the single-frame fast path")
        if batch_size < 1:
            raise ValueError(f"compile_codec: batch_size must be >= 1, got {batch_size}")
        from delit_cache.vae import diffsynth_wan as ds

        model = self.model
        self._compiled = {
            "encode": torch.compile(
                lambda x: ds.encode_one_frame(model, x), dynamic=False, backend=backend, mode=mode
            ),
            "decode": torch.compile(
                lambda z: ds.decode_one_frame(model, z), dynamic=False, backend=backend, mode=mode
            ),
        }
        self._compiled_batch = batch_size
        return self

    def _one_frame(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``encode_one_frame`` / ``decode_one_frame``, compiled in fixed chunks if asked."""
        from delit_cache.vae import diffsynth_wan as ds

        fn = self._compiled.get(name)
        if fn is None:
            return getattr(ds, f"{name}_one_frame")(self.model, x)
        b, n = self._compiled_batch, x.shape[0]
        outs = []
        for lo in range(0, n, b):
            part = x[lo : lo + b]
            pad = b - part.shape[0]
            if pad:
                part = torch.cat([part, part.new_zeros((pad, *part.shape[1:]))])
            outs.append(fn(part)[: b - pad])
        return torch.cat(outs)

    # -- codec --------------------------------------------------------------------------
    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) for an image of ``height x width``: ``ceil(H/8), ceil(W/8)``."""
        f = self.scale_factor
        return math.ceil(height / f), math.ceil(width / f)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B,3,H,W]`` in [0,1] (sRGB as stored in PNG) -> normalised latents.

        Returns float32 ``[B,16,ceil(H/8),ceil(W/8)]``: the posterior mean, normalised as
        ``(mu - mean) / std``. Sizes that are not multiples of 8 are padded at the bottom
        and right by replicating the edge pixels.
        """
        _check_batch(images, 3, "images")
        height, width = images.shape[-2:]
        h, w = self.latent_size(height, width)
        f = self.scale_factor
        x = images.to(device=self.device, dtype=self.dtype)
        if (h * f, w * f) != (height, width):
            x = F.pad(x, (0, w * f - width, 0, h * f - height), mode="replicate")
        x = (x * 2.0 - 1.0).unsqueeze(2)
        from delit_cache.vae import diffsynth_wan as ds

        mu = self._one_frame("encode", x) if self._fast else ds.encode_shipped(self.model, x)
        mu = mu[:, :, 0].float()
        return (mu - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def decode(
        self, latents: torch.Tensor, size: tuple[int, int] | None = None, clamp: bool = True
    ) -> torch.Tensor:
        """Normalised latents ``[B,16,h,w]`` -> float32 images ``[B,3,8h,8w]`` in [0,1].

        ``size=(H, W)`` crops the top-left ``H x W`` (the size given to ``encode``).
        ``clamp`` (default) clips to [0,1]; pass ``False`` for losses that need gradients
        at out-of-range pixels. Gradients reach ``latents``, never the VAE weights.
        """
        _check_batch(latents, self.z_dim, "latents")
        z = latents.float() * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)
        z = z.to(device=self.device, dtype=self.dtype).unsqueeze(2)
        from delit_cache.vae import diffsynth_wan as ds

        out = self._one_frame("decode", z) if self._fast else ds.decode_shipped(self.model, z)
        images = (out[:, :, 0].float() + 1.0) * 0.5
        if clamp:
            images = images.clamp(0.0, 1.0)
        if size is not None:
            images = _crop(images, size)
        return images

    def roundtrip(self, images: torch.Tensor) -> torch.Tensor:
        """``decode(encode(images))`` cropped back to the input size; [B,3,H,W] in [0,1]."""
        return self.decode(self.encode(images), size=tuple(images.shape[-2:]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as ``encode``."""
        return self.encode(images)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, z_dim={self.z_dim}, fingerprint={self.fingerprint!r}, "
            f"fast_single_frame={self._fast}"
        )


def _check_batch(x: torch.Tensor, channels: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a [B,{channels},H,W] tensor, got {shape}")
    if x.shape[0] == 0 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"{name} is empty: {tuple(x.shape)}")


def _crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    height, width = int(size[0]), int(size[1])
    if not (0 < height <= images.shape[-2] and 0 < width <= images.shape[-1]):
        raise ValueError(f"size {size} does not fit the decoded {tuple(images.shape[-2:])}")
    return images[..., :height, :width]

"""The two projections from shared features: flat latent (residual) and env features."""

from __future__ import annotations

import torch
from torch import nn

from delit_cache.models.config import DelitConfig
from delit_cache.models.layers import ResBlock, norm


class FlatProjection(nn.Module):
    """Features [B,32,h,w] + relit latent -> flat latent [B,16,h,w] = relit latent + delta.

    The last convolution starts at zero, so an untrained model returns its input latent:
    the flat-lit output of a fresh model is the input photo (through the codec).
    """

    def __init__(self, cfg: DelitConfig):
        super().__init__()
        width = cfg.flat_width
        self.body = nn.Sequential(
            nn.Conv2d(cfg.feature_channels + cfg.latent_channels, width, 3, padding=1),
            ResBlock(width),
            norm(width),
            nn.SiLU(),
        )
        # blocks beyond the first run between body[1] and body[2]; kept apart so that heads
        # with one block load into heads with more
        self.extra = nn.Sequential(
            *[ResBlock(width, identity_start=True) for _ in range(cfg.flat_blocks - 1)]
        )
        self.delta = nn.Conv2d(width, cfg.latent_channels, 3, padding=1)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)
        self.matte = BackgroundMatte(width, cfg.latent_channels) if cfg.flat_matte else None

    def forward(self, features: torch.Tensor, relit_latent: torch.Tensor) -> torch.Tensor:
        conv, block, out_norm, act = self.body
        hidden = block(conv(torch.cat([features, relit_latent], dim=1)))
        hidden = act(out_norm(self.extra(hidden)))
        flat = relit_latent + self.delta(hidden)
        return flat if self.matte is None else self.matte(hidden, flat)


class BackgroundMatte(nn.Module):
    """Blends the flat latent towards one learned background latent by a predicted matte:
    the flat-lit background is plain white whatever the photo showed behind the person, so
    the heads only have to find it, not undo it. Starts almost closed (matte 0.25 %)."""

    def __init__(self, width: int, latent_channels: int):
        super().__init__()
        self.logit = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.logit.weight)
        nn.init.constant_(self.logit.bias, -6.0)
        self.background = nn.Parameter(torch.zeros(latent_channels, 1, 1))

    def forward(self, hidden: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.logit(hidden))
        return flat + alpha * (self.background - flat)


class EnvProjection(nn.Module):
    """Features [B,32,h,w] -> env features [B,16,h,w] for the env decoder."""

    def __init__(self, cfg: DelitConfig):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cfg.feature_channels, cfg.feature_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(cfg.feature_channels, cfg.env_channels, 3, padding=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)

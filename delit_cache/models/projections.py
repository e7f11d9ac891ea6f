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
        self.delta = nn.Conv2d(width, cfg.latent_channels, 3, padding=1)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def forward(self, features: torch.Tensor, relit_latent: torch.Tensor) -> torch.Tensor:
        hidden = self.body(torch.cat([features, relit_latent], dim=1))
        return relit_latent + self.delta(hidden)


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

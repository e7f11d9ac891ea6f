"""Feature extractor: Wan latent [B,16,h,w] -> shared features [B,32,h,w]."""

from __future__ import annotations

import torch
from torch import nn

from delit_cache.models.config import DelitConfig
from delit_cache.models.layers import GlobalContext, ResBlock, norm


class FeatureExtractor(nn.Module):
    def __init__(self, cfg: DelitConfig):
        super().__init__()
        width = cfg.extractor_width
        self.stem = nn.Conv2d(cfg.latent_channels, width, 3, padding=1)
        blocks: list[nn.Module] = []
        for _ in range(cfg.extractor_blocks):
            blocks.append(ResBlock(width))
            if cfg.global_context:
                blocks.append(GlobalContext(width))
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Sequential(
            norm(width), nn.SiLU(), nn.Conv2d(width, cfg.feature_channels, 3, padding=1)
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.stem(latent)))

"""DelitHeads: the trainable part of delit, working on Wan latents alone."""

from __future__ import annotations

import torch
from torch import nn

from delit_cache.models.config import DEFAULT_CONFIG, DelitConfig
from delit_cache.models.env_decoder import EnvDecoder
from delit_cache.models.feature_extractor import FeatureExtractor
from delit_cache.models.projections import EnvProjection, FlatProjection


class DelitHeads(nn.Module):
    """Relit latent [B,16,h,w] -> flat latent [B,16,h,w] and env encoding [B,4,128,256].

    Needs no VAE, so stage two trains straight from the latent cache.
    """

    def __init__(self, cfg: DelitConfig = DEFAULT_CONFIG):
        super().__init__()
        self.config = cfg
        self.features = FeatureExtractor(cfg)
        self.flat_proj = FlatProjection(cfg)
        self.env_proj = EnvProjection(cfg)
        self.env_decoder = EnvDecoder(cfg)

    def forward(self, relit_latent: torch.Tensor) -> dict[str, torch.Tensor]:
        if relit_latent.ndim != 4 or relit_latent.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"expected latents [B,{self.config.latent_channels},h,w], "
                f"got {tuple(relit_latent.shape)}"
            )
        features = self.features(relit_latent)
        return {
            "flat_latent": self.flat_proj(features, relit_latent),
            "env_code": self.env_decoder(self.env_proj(features)),
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def create_heads(cfg: DelitConfig = DEFAULT_CONFIG, seed: int | None = None) -> DelitHeads:
    """Build the heads; with ``seed`` the initial weights are reproducible."""
    if seed is None:
        return DelitHeads(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DelitHeads(cfg)

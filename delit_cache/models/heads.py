"""DelitHeads: the trainable part of delit, working on Wan latents alone."""

from __future__ import annotations

import torch
from torch import nn

from delit_cache.lighting.envcode import decode_env
from delit_cache.lighting.steer import move_brightest_light
from delit_cache.models.config import DEFAULT_CONFIG, DelitConfig
from delit_cache.models.env_decoder import EnvDecoder
from delit_cache.models.feature_extractor import FeatureExtractor
from delit_cache.models.projections import EnvProjection, FlatProjection


def steered(env: torch.Tensor, light_dir: torch.Tensor | None) -> torch.Tensor:
    """Linear env maps ``[B,3,H,W]`` with their brightest light moved to the light head's
    directions ``[B,3]`` (None: heads without a light head; the maps as they are)."""
    return env if light_dir is None else move_brightest_light(env, light_dir.float())


class DelitHeads(nn.Module):
    """Relit latent [B,16,h,w] -> flat latent [B,16,h,w] and env encoding [B,4,128,256]
    (and, with ``light_head``, the dominant light's direction ``light_dir`` [B,3]).

    Needs no VAE, so stage two trains straight from the latent cache. The heads first
    standardise the latent per channel with statistics of the training cache (buffers
    ``latent_mean`` / ``latent_std``, saved with the weights; identity until
    ``set_latent_stats``), so that they see unit-scale inputs whatever the VAE's latent scale.
    The flat residual is predicted in standardised units, so
    ``flat = relit + latent_std * delta``.
    """

    def __init__(self, cfg: DelitConfig = DEFAULT_CONFIG):
        super().__init__()
        self.config = cfg
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))
        self.features = FeatureExtractor(cfg)
        self.flat_proj = FlatProjection(cfg)
        self.env_proj = EnvProjection(cfg)
        self.env_decoder = EnvDecoder(cfg)

    def _standardise(self, relit_latent: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(z, mean, std): the standardised latent and the ``[C,1,1]`` statistics."""
        if relit_latent.ndim != 4 or relit_latent.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"expected latents [B,{self.config.latent_channels},h,w], "
                f"got {tuple(relit_latent.shape)}"
            )
        mean = self.latent_mean.to(relit_latent.dtype)[:, None, None]
        std = self.latent_std.to(relit_latent.dtype)[:, None, None]
        return (relit_latent - mean) / std, mean, std

    def forward(self, relit_latent: torch.Tensor) -> dict[str, torch.Tensor]:
        z, mean, std = self._standardise(relit_latent)
        features = self.features(z)
        return {
            "flat_latent": self.flat_proj(features, z) * std + mean,
            **self.env_decoder(self.env_proj(features)),
        }

    @torch.no_grad()
    def light_inputs(self, relit_latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the light head reads (``EnvDecoder.light_inputs``), from parts it does not
        train: ``env_decoder.light_head.read`` of them is ``forward``'s ``light_dir``."""
        z, _, _ = self._standardise(relit_latent)
        return self.env_decoder.light_inputs(self.env_proj(self.features(z)))

    def flat_latent(self, relit_latent: torch.Tensor) -> torch.Tensor:
        """The flat path alone (no env decoding): ``forward(x)["flat_latent"]``, cheaper."""
        z, mean, std = self._standardise(relit_latent)
        return self.flat_proj(self.features(z), z) * std + mean

    @staticmethod
    def env_hdr(out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The linear HDR env maps ``[B,3,128,256]`` (float32) of ``forward``'s outputs:
        ``env_code`` decoded and, where the heads have a light head, the map's brightest light
        moved to the head's ``light_dir`` (``lighting.steer.move_brightest_light``)."""
        env = decode_env(out["env_code"].float().clamp(0.0, 1.0))
        return steered(env, out.get("light_dir"))

    @torch.no_grad()
    def env_maps(self, relit_latent: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Linear HDR env maps ``[B,3,128,256]`` (float32) of relit latents ``[B,16,h,w]``
        (``env_hdr``), ``batch_size`` at a time: what the heads predict from a latent cache,
        no VAE."""
        return torch.cat(
            [
                self.env_hdr(self(relit_latent[i : i + batch_size]))
                for i in range(0, len(relit_latent), batch_size)
            ]
        )

    @torch.no_grad()
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and standard deviation ``[C]`` of the training latents."""
        c = self.config.latent_channels
        if mean.shape != (c,) or std.shape != (c,):
            raise ValueError(f"latent stats must have shape ({c},), got {tuple(mean.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("latent stats must be finite with std > 0")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, folder, extra: dict | None = None):
        """Write ``folder/config.json`` and ``folder/model.safetensors`` (see ``pretrained``)."""
        from delit_cache.models.pretrained import save_pretrained

        return save_pretrained(self, folder, extra)

    @classmethod
    def from_pretrained(cls, source, map_location: str = "cpu") -> DelitHeads:
        """Heads from a save_pretrained folder, a heads ``.safetensors`` file or a run folder."""
        from delit_cache.models.pretrained import load_heads

        return load_heads(source, map_location)


def create_heads(cfg: DelitConfig = DEFAULT_CONFIG, seed: int | None = None) -> DelitHeads:
    """Build the heads; with ``seed`` the initial weights are reproducible."""
    if seed is None:
        return DelitHeads(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DelitHeads(cfg)

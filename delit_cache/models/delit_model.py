"""DelitModel: the frozen Wan VAE around the trainable heads, and the factory that builds it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from delit_cache.lighting.envcode import decode_env
from delit_cache.lighting.envmap import mirror_direction, mirror_env
from delit_cache.models.config import DEFAULT_CONFIG, DelitConfig
from delit_cache.models.heads import DelitHeads, create_heads, steered
from delit_cache.models.transform import PortraitTransform


def assert_frozen(module: nn.Module, name: str = "vae") -> None:
    """Raise if any parameter of ``module`` would be trained."""
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert not trainable, f"{name} must be frozen, but {trainable[:3]} require grad"


class DelitModel(nn.Module):
    """relit image -> (frozen encoder) -> heads -> (frozen decoder) flat image, and env map.

    ``forward`` is for training: it returns the heads' raw outputs (latent space and env
    encoding). ``infer`` returns images: ``flat`` [B,3,H,W] in [0,1] and ``env`` [B,3,128,256]
    linear HDR, with ``env_code`` and ``flat_latent`` beside them.
    """

    def __init__(self, vae: nn.Module, heads: DelitHeads):
        super().__init__()
        if getattr(vae, "z_dim", heads.config.latent_channels) != heads.config.latent_channels:
            raise ValueError(
                f"VAE has {vae.z_dim} latent channels, heads expect {heads.config.latent_channels}"
            )
        for p in vae.parameters():
            p.requires_grad_(False)
        self.vae = vae.eval()
        self.heads = heads

    def train(self, mode: bool = True) -> DelitModel:
        super().train(mode)
        self.vae.eval()  # the VAE is frozen: never in training mode
        return self

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images [B,3,H,W] in [0,1] -> heads outputs (``flat_latent``, ``env_code``)."""
        assert_frozen(self.vae)
        with torch.no_grad():
            relit_latent = self.vae.encode(images)
        return self.heads(relit_latent.float())

    @torch.no_grad()
    def infer(self, images: torch.Tensor, flip_average: bool = False) -> dict[str, torch.Tensor]:
        """Images [B,3,H,W] in [0,1] -> ``flat`` [B,3,H,W] in [0,1] and ``env`` linear HDR.

        ``flip_average``: also run the mirror image (in the same batch) and average the two
        answers, each mapped back: flat-lit images in pixels, env maps in linear radiance
        (a left-right flip mirrors the env map's azimuth, ``envmap.mirror_env``). The task is
        exactly mirror-symmetric, the VAE's latents are not, so the mirror pass is a second,
        partly independent estimate; twice the compute. ``env_code`` and ``flat_latent``
        are then the unflipped pass's.

        Heads with a light head also return its direction ``light_dir`` [B,3], and ``env`` is
        the decoded map with its brightest light moved there (``DelitHeads.env_hdr``);
        ``env_code`` stays the map as decoded.
        """
        batch = torch.cat([images, images.flip(-1)]) if flip_average else images
        out = self.heads(self.vae.encode(batch).float())
        code = out["env_code"].clamp(0.0, 1.0)
        flat = self.vae.decode(out["flat_latent"], size=tuple(images.shape[-2:])).float()
        n = len(images)
        env, light = decode_env(code), out.get("light_dir")
        if flip_average:
            flat = 0.5 * (flat[:n] + flat[n:].flip(-1))
            env = 0.5 * (env[:n] + mirror_env(env[n:]))
            if light is not None:  # the mirror pass's direction mirrored back
                light = F.normalize(light[:n] + mirror_direction(light[n:]), dim=1)
        result = {
            "flat": flat,
            "env": steered(env, light),
            "env_code": code[:n],
            "flat_latent": out["flat_latent"][:n],
        }
        return result if light is None else {**result, "light_dir": light[:n]}


def create_model_and_transforms(
    vae: nn.Module,
    heads: DelitHeads | None = None,
    config: DelitConfig = DEFAULT_CONFIG,
    image_size: int = 512,
    device: str | torch.device = "cpu",
) -> tuple[DelitModel, PortraitTransform]:
    """The one factory: a ``DelitModel`` on ``device`` and the transform for its inputs.

    ``vae`` comes from ``delit_cache.vae.load_wan_vae``; ``heads`` from
    ``delit_cache.models.pretrained.load_heads`` (fresh heads built from ``config`` when None).
    """
    heads = heads if heads is not None else create_heads(config)
    model = DelitModel(vae, heads).to(device).eval()
    return model, PortraitTransform(image_size)

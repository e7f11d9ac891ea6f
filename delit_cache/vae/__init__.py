"""The frozen Wan 2.1 VAE: loading (any checkpoint form), a batched image codec, a demo codec.

Public API::

    from delit_cache.vae import load_wan_vae, WanVAE
    vae = load_wan_vae("Wan2.2-I2V-A14B/", device="cuda", dtype=torch.bfloat16)
    z = vae.encode(images)                 # [B,3,H,W] in [0,1] -> [B,16,ceil(H/8),ceil(W/8)]
    out = vae.decode(z, size=(H, W))       # -> [B,3,H,W] in [0,1], float32

DiffSynth (``diffsynth.models.wan_video_vae``) is imported only when a model is built.
"""

from delit_cache.utils.device import resolve_device, resolve_dtype
from delit_cache.vae.loader import (
    CODEC_FORMAT,
    DEMO_SOURCE,
    demo_codec_path,
    load_wan_vae,
    new_wan_vae,
    save_codec,
)
from delit_cache.vae.model import WAN21_LATENT_MEAN, WAN21_LATENT_STD, WanVAE

__all__ = [
    "CODEC_FORMAT",
    "DEMO_SOURCE",
    "WAN21_LATENT_MEAN",
    "WAN21_LATENT_STD",
    "WanVAE",
    "demo_codec_path",
    "load_wan_vae",
    "new_wan_vae",
    "resolve_device",
    "resolve_dtype",
    "save_codec",
]

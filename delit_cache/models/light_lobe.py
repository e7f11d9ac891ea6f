"""Light lobe: one dominant light added to the env decoder's panorama.

An L1-trained panorama that is unsure where the sun is spreads it out, and what stays
brightest is the average sky overhead. The lobe is an explicit light instead: one learned
query attends to the env decoder's image tokens and reads out a direction, an RGB radiance
and a sharpness, rendered as a spherical Gaussian ``radiance * exp(sharpness * (cos - 1))``
and added to the panorama in linear radiance. Its direction is also returned, so that a loss
can supervise it directly with the true light's direction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from delit_cache.lighting.envcode import LOG_M_REF
from delit_cache.lighting.envmap import direction_grid

START_RADIANCE = 0.1  # the lobe's peak before training, in units of a photo's white
START_SHARPNESS = 100.0  # a lobe about 8 degrees wide before training
LOG_SCALE = 4.0  # read-out units per unit of log radiance / log sharpness (faster to learn)
SHARPNESS_RANGE = (4.0, 4000.0)  # from a broad window to a sun-sized lobe


class LightLobe(nn.Module):
    """Image tokens ``[B,N,dim]`` -> lobe panorama ``[B,3,H,W]`` and its direction ``[B,3]``.

    Starts as a dim, overhead lobe (``START_RADIANCE``, a hundredth of a percent of a
    typical map's energy): heads grown from trained ones (``init_from``) begin with almost
    the function they had.
    """

    def __init__(self, dim: int, heads: int, env_size: tuple[int, int]):
        super().__init__()
        self.query = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        # read-out: direction (3), log radiance (1), log colour (3), log sharpness (1)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 8))
        nn.init.zeros_(self.out[-1].weight)
        with torch.no_grad():
            start = math.log(START_RADIANCE) / LOG_SCALE
            self.out[-1].bias.copy_(torch.tensor([0, 1, 0, start, 0, 0, 0, 0.0]))
        self.env_size = env_size

    def parameters_of(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``direction`` ``[B,3]`` (unit), ``radiance`` ``[B,3]``, ``sharpness`` ``[B]``."""
        q = self.query.expand(tokens.shape[0], -1, -1)
        kv = self.norm(tokens)
        raw = self.out(self.attn(q, kv, kv, need_weights=False)[0][:, 0]).float()
        log_radiance = (LOG_SCALE * (raw[:, 3:4] + raw[:, 4:7])).clamp(max=LOG_M_REF)
        sharpness = START_SHARPNESS * torch.exp(LOG_SCALE * raw[:, 7])
        sharpness = sharpness.clamp(*SHARPNESS_RANGE)
        return {
            "direction": F.normalize(raw[:, :3], dim=1, eps=1e-6),
            "radiance": torch.exp(log_radiance),
            "sharpness": sharpness,
        }

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.parameters_of(tokens)
        dirs = direction_grid(*self.env_size, device=tokens.device)
        cos = torch.einsum("bc,chw->bhw", p["direction"], dirs)
        shape = torch.exp(p["sharpness"][:, None, None] * (cos - 1.0))
        return p["radiance"][:, :, None, None] * shape[:, None], p["direction"]

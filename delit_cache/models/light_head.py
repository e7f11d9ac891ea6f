"""Light head: the direction of the dominant light, read off the image features together with
the env decoder's own map.

The brightest spot of the decoded map is a guess the image features can correct: a small
convolution over the env decoder's pooled image features (their layout kept) and the map
itself, area-resampled to 16 x 32 in log radiance, feed an MLP that outputs a direction.
Training supervises it with the true map's brightest-light direction (``light_head_weight``);
``DelitHeads.env_hdr`` then moves the map's brightest light there
(``lighting.steer.move_brightest_light``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from delit_cache.lighting.envcode import decode_env
from delit_cache.lighting.envmap import resample_env

MAP_SIZE = (16, 32)  # the decoder's map as the head sees it


class LightHead(nn.Module):
    """Pooled features ``[B,width,g,g]`` and the env encoding ``[B,4,H,W]`` -> unit direction
    ``[B,3]`` (starts straight up, +y). The map enters detached: the head reads it, it does not
    train it."""

    def __init__(self, width: int, grid: int, hidden: int = 256):
        super().__init__()
        self.features = nn.Sequential(
            nn.GroupNorm(1, width),  # one group: any width
            nn.Conv2d(width, 64, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(64, 32, 1),
            nn.GELU(),
        )
        inputs = 32 * grid * grid + 3 * MAP_SIZE[0] * MAP_SIZE[1]
        self.out = nn.Sequential(
            nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(0.2), nn.Linear(hidden, 3)
        )
        nn.init.zeros_(self.out[-1].weight)
        with torch.no_grad():
            self.out[-1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))

    def forward(self, pooled: torch.Tensor, env_code: torch.Tensor) -> torch.Tensor:
        return self.read(pooled, self.map_input(env_code).to(pooled.dtype))

    @staticmethod
    def map_input(env_code: torch.Tensor) -> torch.Tensor:
        """The decoder's map as the head reads it: ``[B,3,16,32]`` log radiance, detached."""
        env = decode_env(env_code.detach().float().clamp(0.0, 1.0))
        return torch.log1p(resample_env(env, MAP_SIZE))

    def read(self, pooled: torch.Tensor, small_map: torch.Tensor) -> torch.Tensor:
        """The direction from pooled features and ``map_input``'s map (both computed by parts
        the head does not train: a run that trains the head alone computes them once)."""
        x = torch.cat([self.features(pooled).flatten(1), small_map.flatten(1)], dim=1)
        return F.normalize(self.out(x).float(), dim=1, eps=1e-6)

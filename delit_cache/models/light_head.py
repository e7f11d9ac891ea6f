"""Light head: the direction of the dominant light, read off the env decoder's image tokens.

One learned query attends to the tokens the panorama queries see and a small MLP reads out a
direction. Training supervises it with the true map's brightest-light direction
(``light_head_weight``), which teaches the shared tokens where the light is; the direction is
also an output of its own (``light_dir``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LightHead(nn.Module):
    """Image tokens ``[B,N,dim]`` -> unit direction ``[B,3]`` (starts straight up, +y)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 3))
        nn.init.zeros_(self.out[-1].weight)
        with torch.no_grad():
            self.out[-1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query.expand(tokens.shape[0], -1, -1)
        kv = self.norm(tokens)
        raw = self.out(self.attn(q, kv, kv, need_weights=False)[0][:, 0]).float()
        return F.normalize(raw, dim=1, eps=1e-6)

"""Env decoder: env features [B,16,h,w] -> four-channel panorama [B,4,128,256].

Most panorama directions have no pixel under them, so learned panorama queries attend to
pooled image tokens; a linear read-out of the queries gives a coarse map (upsampled with
longitude wrap) and normalisation-free wrap-around convolutions add detail (the light's
overall level must survive). The output is linear in ``lighting.envcode``'s [0, 1]
encoding (a sigmoid would saturate); ``decode_env`` and ``DelitModel.infer`` clamp.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from delit_cache.models.config import DelitConfig
from delit_cache.models.layers import PanoConv, ResBlock, pano_pad, pano_upsample
from delit_cache.models.light_head import LightHead

# The output is 0.5 + OUTPUT_GAIN * (coarse + detail): the sigmoid's value and slope at 0,
# without its saturation.
OUTPUT_GAIN = 0.25


class QueryLayer(nn.Module):
    """Pre-norm transformer layer: queries attend to image tokens, then to each other."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    @torch.no_grad()
    def zero_residuals(self) -> None:
        """Make the layer the identity (its three residual branches output zero): how layers
        added to trained heads start."""
        for linear in (self.cross.out_proj, self.self_attn.out_proj, self.mlp[-1]):
            linear.weight.zero_()
            linear.bias.zero_()

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(tokens)
        q = self.norm_q(queries)
        queries = queries + self.cross(q, kv, kv, need_weights=False)[0]
        q = self.norm_self(queries)
        queries = queries + self.self_attn(q, q, q, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


# Nearest x2 upsampling then a 3x3 kernel (taps w0, w1, w2 along one axis) equals a stride-2
# transposed convolution of the low-resolution map with a 4-tap kernel (w2, w1 + w2, w0 + w1,
# w0) along that axis: output row 2i + a gathers input rows i - 1 + a and i + a. _FOLD maps
# the three taps to the four.
_FOLD = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


class UpBlock(nn.Module):
    """x2 nearest upsampling, then a wrap-around 3x3 convolution and SiLU (no norm).

    Computed without building the upsampled map: one stride-2 transposed convolution with a
    4x4 kernel folded from the 3x3 weights, on the wrap-padded input; the same function as
    upsampling first, with the same weights, at 4/9 of the arithmetic."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = PanoConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.conv.conv.weight, self.conv.conv.bias  # [out, in, 3, 3]
        fold = _FOLD.to(weight)
        folded = torch.einsum("ka,oiab,lb->iokl", fold, weight, fold)  # [in, out, 4, 4]
        # padding=3 crops the padded input's border back off: output size exactly 2h x 2w
        return F.silu(F.conv_transpose2d(pano_pad(x), folded, bias, stride=2, padding=3))


def attention_backend(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """The plain (math) attention kernel when training on the CPU: PyTorch's CPU flash-attention
    backward takes milliseconds for these few hundred tokens (``benchmarks/bench_train.py``)."""
    if x.device.type == "cpu" and torch.is_grad_enabled():
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


class EnvDecoder(nn.Module):
    def __init__(self, cfg: DelitConfig):
        super().__init__()
        width, dim, grid = cfg.env_width, cfg.env_dim, cfg.env_token_grid
        rows, cols = cfg.env_query_grid
        out_h, out_w = cfg.env_size
        steps = (out_h // rows).bit_length() - 1
        if rows << steps != out_h or cols << steps != out_w:
            raise ValueError(f"env_size {cfg.env_size} must be env_query_grid x a power of two")
        self.query_grid = (rows, cols)
        self.encoder = nn.Sequential(
            nn.Conv2d(cfg.env_channels, width, 3, padding=1),
            ResBlock(width),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            ResBlock(width),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(grid),
        )
        self.to_tokens = nn.Linear(width, dim)
        self.token_pos = nn.Parameter(0.02 * torch.randn(grid * grid, dim))
        self.queries = nn.Parameter(0.02 * torch.randn(rows * cols, dim))
        self.global_in = nn.Linear(width, dim)  # pooled image summary added to every query
        self.layers = nn.ModuleList(QueryLayer(dim, cfg.env_heads) for _ in range(cfg.env_layers))
        self.coarse = nn.Linear(dim, 4)  # per-query read-out: the coarse panorama
        # the whole coarse panorama straight from the pooled image (a short, direct path)
        self.global_map = nn.Sequential(
            nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, 4 * rows * cols)
        )
        nn.init.zeros_(self.global_map[-1].weight)
        nn.init.zeros_(self.global_map[-1].bias)
        chans = [max(dim >> i, cfg.env_min_channels) for i in range(steps + 1)]
        self.up = nn.Sequential(*[UpBlock(chans[i], chans[i + 1]) for i in range(steps)])
        self.head = PanoConv(chans[-1], 4)  # residual detail on top of the coarse map
        nn.init.zeros_(self.head.conv.weight)
        nn.init.zeros_(self.head.conv.bias)
        self.light_head = LightHead(width, grid) if cfg.light_head else None

    def forward(self, env_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """``env_code`` ``[B,4,H,W]``; with a light head also ``light_dir`` ``[B,3]``."""
        pooled, code = self.decode(env_features)
        if self.light_head is None:
            return {"env_code": code}
        return {"env_code": code, "light_dir": self.light_head(pooled, code)}

    def light_inputs(self, env_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the light head reads: ``light_pooled`` (the pooled image features) and
        ``light_map`` (``LightHead.map_input`` of the decoded map)."""
        pooled, code = self.decode(env_features)
        return {"light_pooled": pooled, "light_map": LightHead.map_input(code)}

    def decode(self, env_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled image features ``[B,width,grid,grid]``, env encoding ``[B,4,H,W]``)."""
        pooled = self.encoder(env_features)  # [B, width, grid, grid]
        tokens = rearrange(pooled, "b c h w -> b (h w) c")
        mean_token = tokens.mean(dim=1, keepdim=True)
        summary = self.global_in(mean_token)
        tokens = self.to_tokens(tokens) + self.token_pos
        queries = self.queries.unsqueeze(0) + summary
        with attention_backend(tokens):
            for layer in self.layers:
                queries = layer(queries, tokens)
        rows, cols = self.query_grid
        pano = rearrange(queries, "b (h w) c -> b c h w", h=rows, w=cols)
        coarse = rearrange(self.coarse(queries), "b (h w) c -> b c h w", h=rows, w=cols)
        coarse = coarse + self.global_map(mean_token[:, 0]).view(-1, 4, rows, cols)
        detail = self.head(self.up(pano))
        coarse = pano_upsample(coarse, detail.shape[-2:])
        return pooled, 0.5 + OUTPUT_GAIN * (coarse + detail)

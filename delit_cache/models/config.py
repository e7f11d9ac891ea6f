"""The heads' configuration: one dataclass, one named default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from delit_cache.utils.fields import field_type_problem


@dataclass(frozen=True)
class DelitConfig:
    """Constructor arguments of ``DelitHeads``; stored in every heads checkpoint."""

    latent_channels: int = 16  # Wan 2.1 VAE latent channels (z_dim)
    feature_channels: int = 32  # width of the shared feature map the two projections read
    extractor_width: int = 128  # hidden width of the feature extractor's residual blocks
    extractor_blocks: int = 6  # residual blocks in the feature extractor
    global_context: bool = False  # extractor blocks scaled/shifted by the image's pooled features
    flat_width: int = 128  # hidden width of the flat projection
    flat_blocks: int = 1  # residual blocks in the flat projection (added ones start as identity)
    flat_matte: bool = False  # flat latent blended to a learned background by a predicted matte
    env_channels: int = 16  # channels the env projection hands to the env decoder
    env_width: int = 128  # env decoder: width of the image-side encoder (16 -> 128)
    env_token_grid: int = 8  # env decoder: image tokens pooled to a grid of this side
    env_query_grid: tuple[int, int] = (8, 16)  # env decoder: panorama queries (rows, cols)
    env_dim: int = 256  # env decoder: attention / panorama width (128 -> 256)
    env_layers: int = 2  # env decoder: cross- + self-attention layers over the panorama
    env_heads: int = 8  # env decoder: attention heads
    env_min_channels: int = 32  # env decoder: narrowest upsampling width (at full resolution)
    env_size: tuple[int, int] = (128, 256)  # output panorama (height, width)
    light_head: bool = False  # env decoder also reads out the dominant light's direction

    def __post_init__(self):
        problem = field_type_problem(DelitConfig, self.to_dict())
        if problem:
            raise ValueError(problem)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if not isinstance(value, bool) and any(v < 1 for v in values):
                raise ValueError(f"{f.name} must be >= 1, got {value}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DelitConfig:
        """Rebuild from ``to_dict`` output (lists back to tuples); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown DelitConfig fields: {unknown}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)


DEFAULT_CONFIG = DelitConfig()

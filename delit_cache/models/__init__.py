"""delit's networks: the trainable heads and the full model around the frozen VAE."""

from delit_cache.models.config import DEFAULT_CONFIG, DelitConfig
from delit_cache.models.delit_model import DelitModel, create_model_and_transforms
from delit_cache.models.heads import DelitHeads, create_heads
from delit_cache.models.transform import Placement, PortraitTransform

__all__ = [
    "DEFAULT_CONFIG",
    "DelitConfig",
    "DelitHeads",
    "DelitModel",
    "Placement",
    "PortraitTransform",
    "create_heads",
    "create_model_and_transforms",
]

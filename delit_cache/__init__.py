"""delit: one forward pass from a lit portrait to a flat-lit image and an HDR environment map."""

__version__ = "0.1.0"

from delit_cache.utils.errors import DelitError

__all__ = ["DelitError", "__version__"]

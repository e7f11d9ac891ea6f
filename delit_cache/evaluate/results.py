"""Reading numbers out of the result dicts of ``delit eval`` (``evaluate.evaluate``, its
``--json``), without importing torch: table scripts read saved JSONs."""

from __future__ import annotations


def result_value(block: dict | None, path: tuple[str, ...]) -> float | None:
    """The number at ``path`` (``("diffuse", "angular_deg")``) in a block of a result
    (``model``, ``baseline_mean_env``, ...); ``None`` where it is absent."""
    for key in path:
        if not isinstance(block, dict) or key not in block:
            return None
        block = block[key]
    return None if block is None else float(block)

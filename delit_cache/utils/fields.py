"""Type checks for config dataclasses read from YAML, where a list, a string or a bool can
stand where a number goes (PyYAML reads ``1e-3`` as a string and ``yes`` as a bool)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def _fits(hint: Any, value: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return type(value) is bool
    if hint is int:
        return type(value) is int
    if hint is float:
        return type(value) in (int, float)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            return isinstance(value, (list, tuple)) and all(_fits(args[0], v) for v in value)
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(args)
            and all(_fits(h, v) for h, v in zip(args, value, strict=True))
        )
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a type this checker does not know is left to the dataclass


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            plural = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
            return f"a list of {plural.get(args[0], 'values')}"
        return f"a list of {len(args)} values"
    if origin is dict or hint is dict:
        return "a mapping"
    return names.get(hint, str(hint))


def field_type_problem(cls: type, data: dict[str, Any]) -> str | None:
    """The first field of ``data`` whose value does not fit ``cls``'s annotation, as a
    one-line problem (``"lr must be a number, got [1, 2]"``), or None."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data and not _fits(hints[f.name], data[f.name]):
            got = data[f.name]
            numeric = isinstance(got, str) and _fits(hints[f.name], 0.5)
            hint = " (YAML reads 1e-3 as a string: write 1.0e-3)" if numeric else ""
            return f"{f.name} must be {_type_name(hints[f.name])}, got {got!r}{hint}"
    return None

"""Type and range checks of settings dataclasses, from their own annotations.

Settings come from TOML files and command-line flags, and TOML happily gives ``epochs = 1.5``,
``epochs = true`` (a bool is an int in Python), ``lr = inf`` or ``policy = 3``. Each settings class
calls :func:`check_fields` first thing in ``__post_init__``: every field's value must match its
annotation (``int``, ``float``, ``str``, ``bool``, ``X | None``, ``tuple[str, ...]``, ``dict[str, float]``)
and the field's :class:`Range`, if it has one. Floats must be finite. The message names the field,
so the config loader only has to add the file and section in front of it.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Mapping

from clues.errors import CluesError


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (either bound optional; ``*_open`` makes it strict)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1, high_open=True)  # [0, 1)
SHARE = Range(0, 1, low_open=True)  # (0, 1]


def show(value: Any) -> str:
    """A value as the user wrote it (TOML/JSON spelling: ``true``, ``"clues"``, ``inf``)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        value = list(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _describe(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        names = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" (or left out)" if type(None) in args else "")
    if typing.get_origin(hint) is tuple:
        return f"an array of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if typing.get_origin(hint) is dict:
        return f"a table of {_describe(args[1]).removeprefix('a ').removeprefix('an ')}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def matches(value: Any, hint) -> bool:
    """Does ``value`` have the type ``hint`` names? (A bool is no int here, an int is a float.)"""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, tuple) and all(matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    return True  # an annotation this checker does not know: the class checks it itself


def _floats(value):
    """The float values in ``value`` (itself, or the members of an array or table)."""
    members = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else (value,)
    return [v for v in members if isinstance(v, float)]


def check_fields(obj, ranges: Mapping[str, Range] | None = None, choices: Mapping[str, tuple] | None = None) -> None:
    """Raise :class:`CluesError` naming the first field of dataclass ``obj`` whose value is of the wrong
    type, not finite, outside its ``ranges`` entry or not one of its ``choices``."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        hint = hints[f.name]
        if not matches(value, hint):
            raise CluesError(f"{f.name} must be {_describe(hint)}, got {show(value)}")
        if any(not math.isfinite(v) for v in _floats(value)):
            raise CluesError(f"{f.name} must be finite, got {show(value)}")
        if value is None:
            continue
        if ranges and f.name in ranges and not ranges[f.name].holds(value):
            raise CluesError(f"{f.name} must be {ranges[f.name]}, got {show(value)}")
        if choices and f.name in choices and value not in choices[f.name]:
            raise CluesError(f"{f.name} must be one of {', '.join(map(str, choices[f.name]))}; got {show(value)}")

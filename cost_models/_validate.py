"""Small validation helpers shared by the cost_models value types.

Contract: every helper either returns a cleaned value or raises ``ValueError`` with a
message that says what was given, what is required, and how to fix it. No state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from types import MappingProxyType
from typing import Any


def positive(what: str, value: Any) -> float:
    """A finite number > 0, returned as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def non_negative(what: str, value: Any) -> float:
    """A finite number >= 0, returned as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return value


def non_negative_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    return value


def fraction(what: str, value: Any) -> float:
    """A number in (0, 1]."""
    v = positive(what, value)
    if v > 1:
        raise ValueError(f"{what} must be in (0, 1], got {value!r}")
    return v


def frozen_float_map(what: str, value: Any) -> Mapping[str, float]:
    """A read-only ``{str: positive float}`` copy of ``value``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping like {{'bf16': 3e14}}, got {value!r}")
    out: dict[str, float] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"{what} keys must be non-empty strings, got {k!r}")
        out[k] = positive(f"{what}[{k!r}]", v)
    return MappingProxyType(out)


def check_keys(
    what: str, obj: Any, required: AbstractSet[str], optional: AbstractSet[str] = frozenset()
) -> dict[str, Any]:
    """``obj`` must be a dict holding all ``required`` keys and no keys outside both sets."""
    if not isinstance(obj, dict):
        raise ValueError(f"{what} JSON must be an object, got {type(obj).__name__}: {obj!r}")
    missing = sorted(required - obj.keys())
    if missing:
        raise ValueError(f"{what} JSON is missing {missing}; required keys are {sorted(required)}")
    unknown = sorted(obj.keys() - required - optional)
    if unknown:
        allowed = sorted(required | optional)
        raise ValueError(f"{what} JSON has unknown keys {unknown}; allowed keys are {allowed}")
    return obj

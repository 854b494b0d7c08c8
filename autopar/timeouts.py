"""The collective timeout: how long one collective may wait for its peers.

Contract: ``DEFAULT_TIMEOUT_S`` (300 s) is the default of ``autopar.compile(timeout=)``,
``Context.create(timeout=)`` and every command's ``--timeout``; ``check_timeout(value,
flag)`` returns it as a float when it is a finite number of seconds > 0 and otherwise
raises ValueError in one paragraph. Imports nothing (the CLI reads it before torch).
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_TIMEOUT_S = 300.0


def check_timeout(value: Any, flag: str = "timeout") -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{flag} must be a number of seconds > 0, got {value!r}; it is how long one "
            f"collective may wait for its peers before every rank is stopped (e.g. "
            f"{flag}={int(DEFAULT_TIMEOUT_S)})"
        )
    return float(value)

"""Helpers shared by the CLI commands: checked option values, model specs, exit codes.

Contract:
- ``parse_mesh("dp=2,tp=4", devices)`` returns a ``MeshSpec`` (one ``dp`` axis over
  ``devices`` when the text is empty) and raises ValueError naming the expected form.
- ``count(flag, low, high)``, ``seconds(flag)``, ``rate(flag)``: argparse ``type=``
  functions that accept a whole number in [low, high] / a finite number of seconds > 0 /
  a finite number > 0 and otherwise say what was given, what is needed and an example.
- ``check_model(spec)``: a bundled model name, or ``file.py:function`` where the file
  exists, parses and defines ``function``: checked without running any of it, so a bad
  spec is refused before anything is built or spawned (ValueError).
- ``UserCodeError`` / ``user_code_error(err, spec)``: an exception raised inside the
  user's own model file, as one paragraph naming the function, the error and the line.
- ``EXIT_CODES``: the exit codes every command documents: 0 ok, 1 a failed check,
  2 bad usage, 3 a rank failed.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from autopar.mesh import MeshSpec
from autopar.models import UserCodeError, check_model, user_code_error

__all__ = ["EXIT_CODES", "UserCodeError", "check_model", "count", "parse_mesh", "rate",
           "seconds", "user_code_error"]  # fmt: skip

EXIT_CODES = "exit codes: 0 success, 1 a failed check, 2 bad usage, 3 a rank failed"
MAX_PROCS = 128


def parse_mesh(text: str | None, devices: int) -> MeshSpec:
    if not text:
        return MeshSpec.of(devices)
    axes: list[tuple[str, int]] = []
    for part in text.split(","):
        name, eq, size = part.partition("=")
        name, size = name.strip(), size.strip()
        if not eq or not name.isidentifier() or not size.isdigit() or int(size) < 1:
            raise ValueError(
                f"--mesh {text!r}: the part {part!r} is not axis=size; the mesh must be "
                "comma-separated axis names with sizes >= 1 whose product is the device "
                f"count ({devices}), e.g. --mesh dp={devices} or --mesh dp=2,tp=2"
            )
        if name in (n for n, _ in axes):
            raise ValueError(
                f"--mesh {text!r} names axis {name!r} twice; each axis once, e.g. dp=2,tp=2"
            )
        axes.append((name, int(size)))
    return MeshSpec(tuple(axes))


def count(flag: str, low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(
                f"{flag} must be a whole number {bound}, got {text!r}; e.g. {flag} {max(low, 2)}"
            )
        return value

    return parse


def _finite(flag: str, text: str, what: str, example: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{flag} must be {what} > 0, got {text!r}; e.g. {flag} {example}"
        )
    return value


def seconds(flag: str, example: str = "300") -> Callable[[str], float]:
    return lambda text: _finite(flag, text, "a number of seconds", example)


def rate(flag: str) -> Callable[[str], float]:
    return lambda text: _finite(flag, text, "a finite number", "0.1")

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
import ast
import math
import traceback
from collections.abc import Callable
from pathlib import Path

from autopar.mesh import MeshSpec

EXIT_CODES = "exit codes: 0 success, 1 a failed check, 2 bad usage, 3 a rank failed"
MAX_PROCS = 128


class UserCodeError(ValueError):
    """The user's model file raised while autopar built the model."""


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


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == name:
                    return True
    return False


def check_model(spec: str) -> None:
    """Refuse a model spec that cannot work, without importing or running anything."""
    from autopar import zoo

    if ":" not in spec:
        if spec not in zoo.BUNDLED and spec not in zoo.names():  # names() imports torch
            raise ValueError(
                f"unknown model {spec!r}; use a bundled model ({', '.join(zoo.names())}) or "
                "path/to/file.py:function returning (model, args) or (model, args, kwargs)"
            )
        return
    file, _, fn = spec.rpartition(":")
    path = Path(file)
    form = "path/to/file.py:function, where the function returns (model, args) or (model, args, kwargs)"
    if not path.is_file():
        raise ValueError(
            f"model file {file!r} does not exist (from {spec!r}; relative paths are taken "
            f"from {Path.cwd()}); give {form}"
        )
    if not fn.isidentifier():
        raise ValueError(f"model {spec!r} names no function after the colon; give {form}")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as err:
        line = getattr(err, "lineno", None)
        raise ValueError(
            f"model file {file!r} is not valid Python ({type(err).__name__}"
            f"{f' at line {line}' if line else ''}: {getattr(err, 'msg', err)}); give {form}"
        ) from None
    if not _defines(tree, fn):
        raise ValueError(f"{file} defines no function {fn!r}; define it or name another ({form})")


def user_code_error(err: BaseException, spec: str) -> UserCodeError | None:
    """``err`` as one paragraph when it was raised inside the model file ``spec`` names."""
    if ":" not in spec or isinstance(err, UserCodeError):
        return None
    file, _, fn = spec.rpartition(":")
    target = Path(file).resolve()
    frames = [
        f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == target
    ]
    if not frames:
        return None
    f = frames[-1]
    return UserCodeError(
        f"building the model with {spec} failed: {type(err).__name__}: {err} (raised at "
        f"{f.filename}:{f.lineno} in {f.name}). autopar calls {fn}() with no arguments and "
        "needs it to return (model, args) or (model, args, kwargs); fix the function and "
        "run again"
    )

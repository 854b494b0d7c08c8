"""Resolve a MODEL argument to (model, args, kwargs).

Contract: ``resolve(spec, device, batch_size, seq_len)`` accepts a bundled model name
(``mlp``, ``gpt2``, ``bert``, ``llama-7b``, ``llama-70b``, each also ``<name>-tiny``, and the
model-zoo sweep's ``hf-llama``, ``hf-t5``, ...: see ``autopar.zoo``) or
``path/to/file.py:function`` where the function returns ``(model, args)`` or
``(model, args, kwargs)``. The bundled models ship inside the package (``autopar.zoo``), so
they resolve from any working directory, after an editable or a regular install, and in a
program run by torchrun. A user's file is loaded by its path (relative to the working
directory). Unknown names raise ValueError listing what is accepted.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from autopar import zoo


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}: it is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve(
    spec: str, device: str = "cpu", batch_size: int | None = None, seq_len: int | None = None
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    if ":" not in spec:
        return zoo.build(spec, device=device, batch_size=batch_size, seq_len=seq_len)
    file, _, fn = spec.rpartition(":")
    path = Path(file)
    if not path.exists():
        raise ValueError(
            f"model file {file!r} does not exist (from {spec!r}; relative paths are taken from "
            f"{Path.cwd()}); give an existing path/to/file.py:function or a bundled model "
            f"({', '.join(zoo.names())})"
        )
    module = _load(path, f"autopar_user_{path.stem}")
    if not hasattr(module, fn):
        raise ValueError(f"{file} has no function {fn!r}; define it or name another one")
    out = getattr(module, fn)()
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise ValueError(
            f"{spec} returned {type(out).__name__}, but it must return (model, args) or "
            "(model, args, kwargs)"
        )
    return out[0], tuple(out[1]), dict(out[2]) if len(out) == 3 else {}

"""Resolve a MODEL argument to (model, args, kwargs).

Contract: ``resolve(spec, device, batch_size, seq_len)`` accepts a bundled example name
(``mlp``, ``gpt2``, ``bert``, ``llama-7b``, ``llama-70b``, each also ``<name>-tiny``) or
``path/to/file.py:function`` where the function returns ``(model, args)`` or
``(model, args, kwargs)``. Unknown names raise ValueError listing what is accepted.
The bundled examples live in the repository's ``examples/`` folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
BUNDLED = {
    "mlp": ("mlp", "full"), "mlp-tiny": ("mlp", "tiny"),
    "gpt2": ("gpt2", "small"), "gpt2-tiny": ("gpt2", "tiny"),
    "bert": ("bert", "base"), "bert-tiny": ("bert", "tiny"),
    "llama-7b": ("llama", "7b"), "llama-70b": ("llama", "70b"), "llama-tiny": ("llama", "tiny"),
}  # fmt: skip


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve(
    spec: str, device: str = "cpu", batch_size: int | None = None, seq_len: int | None = None
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    if spec in BUNDLED:
        file, size = BUNDLED[spec]
        path = EXAMPLES_DIR / f"{file}.py"
        if not path.exists():
            raise ValueError(f"bundled example {path} is missing; run autopar from a checkout")
        module = _load(path, f"autopar_example_{file}")
        return module.build(size, device=device, batch_size=batch_size, seq_len=seq_len)  # type: ignore[no-any-return]
    if ":" in spec:
        file, _, fn = spec.rpartition(":")
        path = Path(file)
        if not path.exists():
            raise ValueError(f"model file {file!r} does not exist (from {spec!r})")
        module = _load(path, f"autopar_user_{path.stem}")
        if not hasattr(module, fn):
            raise ValueError(f"{file} has no function {fn!r}")
        out = getattr(module, fn)()
        if not isinstance(out, tuple) or len(out) not in (2, 3):
            raise ValueError(f"{spec} must return (model, args) or (model, args, kwargs)")
        return out[0], tuple(out[1]), dict(out[2]) if len(out) == 3 else {}
    raise ValueError(
        f"unknown model {spec!r}; use one of {', '.join(BUNDLED)} or path/to/file.py:function"
    )

"""The bundled model builders, shipped inside the package (so they work after any install).

Contract: ``MODULES`` names the bundled builder modules (``autopar.zoo.mlp``, ``gpt2``,
``bert``, ``llama``); each has ``SIZES``, ``config(size)`` (the HF ones) and
``build(size, *, device, batch_size, seq_len, seed) -> (model, args, kwargs)``, where
``model(*args, **kwargs)`` is the loss or has ``.loss``; on ``device="meta"`` nothing is
allocated (the 7B and 70B LLaMA are meant to be built so). ``BUNDLED`` maps the names the
command line accepts to ``(module, size)``; ``build(name, ...)`` builds a bundled name or a
model-zoo sweep architecture (``autopar.zoo.hf``: ``hf-llama``, ``hf-t5``, ...), and
``names()`` lists every accepted name. Importing this package imports no model code.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType, ModuleType
from typing import Any

MODULES = ("mlp", "gpt2", "bert", "llama")
BUNDLED = MappingProxyType({
    "mlp": ("mlp", "full"), "mlp-tiny": ("mlp", "tiny"),
    "gpt2": ("gpt2", "small"), "gpt2-tiny": ("gpt2", "tiny"),
    "bert": ("bert", "base"), "bert-tiny": ("bert", "tiny"),
    "llama-7b": ("llama", "7b"), "llama-70b": ("llama", "70b"), "llama-tiny": ("llama", "tiny"),
})  # fmt: skip


def module(name: str) -> ModuleType:
    """The bundled builder module ``name`` (one of ``MODULES``)."""
    if name not in MODULES:
        raise ValueError(f"unknown bundled model module {name!r}; expected one of {MODULES}")
    return importlib.import_module(f"autopar.zoo.{name}")


def names() -> tuple[str, ...]:
    """Every model name ``build`` accepts: the bundled ones, then the sweep's."""
    from autopar.zoo import hf

    return (*BUNDLED, *hf.NAMES)


def build(
    name: str,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``(model, args, kwargs)`` for a bundled name or a sweep architecture."""
    if name in BUNDLED:
        file, size = BUNDLED[name]
        return module(file).build(  # type: ignore[no-any-return]
            size, device=device, batch_size=batch_size, seq_len=seq_len, seed=seed
        )
    from autopar.zoo import hf

    if name in hf.NAMES:
        return hf.build(name, device=device, batch_size=batch_size, seq_len=seq_len, seed=seed)
    raise ValueError(
        f"unknown model {name!r}; use a bundled model ({', '.join(names())}) or "
        "path/to/file.py:function returning (model, args) or (model, args, kwargs)"
    )

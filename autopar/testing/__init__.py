"""Test tools for code that runs on several ranks, shipped so users can test their own models.

- ``GlooPool(n)`` (``autopar.testing.pool``): run a function on N gloo ranks, all on this
  machine: ``GlooPool(2).run(fn, *args)`` calls ``fn(rank, world_size, *args)`` on every rank
  and returns each rank's result; one rank failing fails the run on all of them, and every
  run has a hard timeout. ``fn`` can live in any module, a pytest test module included.
- ``train_parity`` and ``check`` (``autopar.testing.parity``): check a compiled model against
  the single-process model: the loss at every step and every parameter after several
  optimizer steps, on the same global batch, plus the collectives issued against the plan's.
- ``pipeline_parity`` and ``pipeline_check`` (``autopar.testing.pipeline_parity``): the
  same for a pipeline-compiled model.

Importing this package imports only the pool (no torch until a rank starts).
"""

from __future__ import annotations

from typing import Any

from autopar.testing.pool import GlooPool

__all__ = ["GlooPool", "train_parity", "check", "pipeline_parity", "pipeline_check"]


def __getattr__(name: str) -> Any:
    if name in ("train_parity", "check"):
        from autopar.testing import parity

        return getattr(parity, name)
    if name in ("pipeline_parity", "pipeline_check"):
        # by its full name: ``from autopar.testing import pipeline_parity`` would call
        # this function again
        import importlib

        module = importlib.import_module("autopar.testing.pipeline_parity")
        return getattr(module, "check" if name == "pipeline_check" else name)
    raise AttributeError(name)

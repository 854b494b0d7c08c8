"""autopar: an auto-parallelizing graph compiler for PyTorch training.

Pipeline: capture -> strategies -> cost -> solve -> plan -> codegen -> runtime.
``autopar.compile(model, example_inputs, ...)`` is the entry point; importing this
package is cheap (the heavy modules load on first use).
"""

from __future__ import annotations

from typing import Any

__all__ = ["compile", "MeshSpec", "Plan", "save_checkpoint", "load_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "compile":
        from autopar.api import compile

        return compile
    if name == "MeshSpec":
        from autopar.mesh import MeshSpec

        return MeshSpec
    if name == "Plan":
        from autopar.plan import Plan

        return Plan
    if name in ("save_checkpoint", "load_checkpoint"):
        from autopar.runtime import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)

"""Code generation: a captured graph and its Plan -> the per-rank program as source.

Contract: ``program_source(captured, plan, precision="fp32", title=None)`` returns the
source of one Python module (see ``codegen.source``) that ``autopar.compile`` executes
and ``autopar emit`` writes to disk: the same text on both paths.
"""

from __future__ import annotations

from typing import Any

from autopar.capture import Captured
from autopar.plan import Plan


def output_names(captured: Captured, count: int) -> list[str]:
    """Names of the graph's output leaves (a ModelOutput's fields), else output_<i>."""
    info = getattr(captured.graph_module.graph._codegen, "pytree_info", None)
    spec: Any = getattr(info, "out_spec", None)
    keys = getattr(spec, "context", None)
    if (
        isinstance(keys, (list, tuple))
        and len(keys) == count
        and all(isinstance(k, str) and k.isidentifier() for k in keys)
    ):
        return list(keys)
    return [f"output_{i}" for i in range(count)]


def loss_index(captured: Captured, names: list[str]) -> int | None:
    """The output that is the training loss: a field named loss, else the first scalar."""
    if "loss" in names:
        return names.index("loss")
    out = next(n for n in captured.graph_module.graph.nodes if n.op == "output")
    leaves: list[Any] = []
    import torch.fx as fx

    fx.node.map_arg(out.args, lambda a: leaves.append(a) or a)  # type: ignore[func-returns-value]
    for i, a in enumerate(leaves):
        val = a.meta.get("val")
        if val is not None and val.dim() == 0 and val.is_floating_point():
            return i
    return None


def program_source(
    captured: Captured, plan: Plan, precision: str = "fp32", title: str | None = None
) -> str:
    from autopar.codegen.lower import lower
    from autopar.codegen.source import write_source

    ir = lower(captured, plan)
    names = output_names(captured, len(ir.outputs))
    heading = title or f"autopar program: strategy {plan.strategy} on mesh {plan.mesh}"
    return write_source(ir, heading, names, loss_index(captured, names), precision)

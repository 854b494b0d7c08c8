"""Which values autograd keeps for backward, found by running each op on meta tensors.

Contract: ``saved_values(graph)`` returns a ``Saved`` with
- ``values``: the set of ``(node, out_index)`` whose storage stays alive until backward
  (an op saved it, saved its own output, or saved a view of it);
- ``slots``: the set of ``(node, slot)`` input slots whose incoming tensor (or a view of
  it, through view ops) is saved — for a parameter edge this says whether FSDP's freed
  copy must be gathered again in backward.
Each op is run once per distinct signature (target, shapes, dtypes, which inputs need a
gradient) under ``torch.autograd.graph.saved_tensors_hooks`` on the meta device. An op
that cannot run on meta is assumed to save every input (the conservative answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from autopar.solve.graph import PlanGraph, PNode


@dataclass(frozen=True)
class Saved:
    values: frozenset[tuple[str, int]]
    slots: frozenset[tuple[str, int]]


def _probe(node: PNode, needs: tuple[bool, ...]) -> tuple[set[int], set[int]]:
    """(saved input slots, saved output indices) of one op."""
    assert node.fx_node is not None and node.op is not None
    tensors = []
    for meta, rg in zip(node.op.inputs, needs):
        t = torch.empty(meta.shape, dtype=meta.dtype, device="meta")
        tensors.append(t.requires_grad_().clone() if rg and meta.is_float else t)
    it = iter(tensors)
    args, kwargs = fx.node.map_arg((node.fx_node.args, node.fx_node.kwargs), lambda _: next(it))
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = node.fx_node.target(*args, **kwargs)  # type: ignore[operator]
    except Exception:
        return set(range(len(tensors))), set()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    ins_hit, outs_hit = set(), set()
    for t in saved:
        root = t._base if t._base is not None else t
        ins_hit |= {k for k, x in enumerate(tensors) if x is root or x is t}
        outs_hit |= {
            k for k, x in enumerate(outs) if isinstance(x, torch.Tensor) and (x is root or x is t)
        }
    return ins_hit, outs_hit


def saved_values(graph: PlanGraph) -> Saved:
    memo: dict[Any, tuple[set[int], set[int]]] = {}
    values: set[tuple[str, int]] = set()
    slots: set[tuple[str, int]] = set()
    order = [n for n in graph.nodes.values() if n.kind == "op"]
    for node in order:
        needs = tuple(graph.nodes[s].requires_grad for s, _ in node.inputs)
        if not node.requires_grad:
            continue
        view_args = str(node.fx_node.args) if node.family == "view" and node.fx_node else ""
        key = (node.target, node.op.inputs if node.op else (), needs, view_args)
        if key not in memo:
            memo[key] = _probe(node, needs)
        ins_hit, outs_hit = memo[key]
        values |= {(node.name, i) for i in outs_hit}
        for k in ins_hit:
            slots.add((node.name, k))
            values.add(node.inputs[k])
    # a view aliases its input: if its output is kept, so is its input's storage
    for node in reversed(order):
        if node.family == "view" and any(
            (node.name, i) in values for i in range(len(node.out_metas))
        ):
            for k, src in enumerate(node.inputs):
                values.add(src)
                slots.add((node.name, k))
    return Saved(frozenset(values), frozenset(slots))

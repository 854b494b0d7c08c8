"""Which values autograd keeps for backward, found by running each op on meta tensors.

Contract: ``saved_values(graph)`` returns a ``Saved`` with
- ``values``: the set of ``(node, out_index)`` whose storage stays alive until backward
  (an op saved it, saved its own output, or saved a view of it);
- ``slots``: the set of ``(node, slot)`` input slots whose incoming tensor (or a view of
  it, through view ops) is saved — for a parameter edge this says whether FSDP's freed
  copy must be gathered again in backward;
- ``internal``: per op, the bytes of intermediates it makes itself and saves (a copy
  inside a kernel), for the whole (unsplit) op;
- ``own`` / ``direct``: the outputs each op saves of itself and the input slots it saves,
  before views are followed back to their storage (``kept`` does that, for any such
  sets: ``solve.recompute`` re-derives ``values`` when layers are recomputed).
Each op is run once per distinct signature (target, shapes, dtypes, arguments, which
inputs need a gradient) under ``torch.autograd.graph.saved_tensors_hooks`` on fake CPU
tensors (the CPU kernels, not the meta ones, which can save other tensors). An op that
cannot run so is assumed to save every input (the conservative answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from autopar.solve.graph import PlanGraph, PNode


@dataclass(frozen=True)
class Saved:
    values: frozenset[tuple[str, int]]
    slots: frozenset[tuple[str, int]]
    # bytes an op saves of intermediates it makes itself (a copy inside a kernel), whole op
    internal: dict[str, float] = field(default_factory=dict)
    own: frozenset[tuple[str, int]] = frozenset()
    direct: frozenset[tuple[str, int]] = frozenset()


# ops whose meta-device kernel saves other tensors than the CPU/GPU kernels that run:
# fused attention keeps its query, key, value and output (plus a small logsumexp)
_KNOWN = {"scaled_dot_product_attention": ({0, 1, 2}, {0})}


def _probe(node: PNode, needs: tuple[bool, ...], mode: Any) -> tuple[set[int], set[int], float]:
    """(saved input slots, saved output indices, bytes of the op's own intermediates it
    saves) of one op, run on fake CPU tensors (the kernels that really run: a meta kernel
    may save other tensors than the CPU one)."""
    assert node.fx_node is not None and node.op is not None
    if node.target in _KNOWN:
        known_ins, known_outs = _KNOWN[node.target]
        return {k for k in known_ins if k < len(needs)}, set(known_outs), 0.0
    with mode:
        tensors = []
        for meta, rg in zip(node.op.inputs, needs):
            t = torch.empty(meta.shape, dtype=meta.dtype, device="cpu")
            tensors.append(t.requires_grad_().clone() if rg and meta.is_float else t)
    it = iter(tensors)
    args, kwargs = fx.node.map_arg((node.fx_node.args, node.fx_node.kwargs), lambda _: next(it))
    kwargs = {k: torch.device("cpu") if isinstance(v, torch.device) else v
              for k, v in kwargs.items()}  # fmt: skip
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    try:
        with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = node.fx_node.target(*args, **kwargs)  # type: ignore[operator]
    except Exception:
        return set(range(len(tensors))), set(), 0.0
    outs = out if isinstance(out, (tuple, list)) else (out,)
    ins_hit, outs_hit = set(), set()
    internal: dict[int, float] = {}
    for t in saved:
        root = t._base if t._base is not None else t
        i = {k for k, x in enumerate(tensors) if x is root or x is t}
        o = {k for k, x in enumerate(outs) if isinstance(x, torch.Tensor) and (x is root or x is t)}
        ins_hit |= i
        outs_hit |= o
        if not i and not o:
            internal[id(root)] = float(root.numel() * root.element_size())
    return ins_hit, outs_hit, sum(internal.values())


def aliases(node: PNode) -> bool:
    from autopar.cost import returns_input

    return node.op is not None and returns_input(node.op, node.family)


def saved_values(graph: PlanGraph) -> Saved:
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    memo: dict[Any, tuple[set[int], set[int], float]] = {}
    own: set[tuple[str, int]] = set()
    direct: set[tuple[str, int]] = set()
    internal: dict[str, float] = {}
    for node in (n for n in graph.nodes.values() if n.kind == "op"):
        needs = tuple(graph.nodes[s].requires_grad for s, _ in node.inputs)
        if not node.requires_grad:
            continue
        op_args = repr(node.op.args) + repr(node.op.kwargs) if node.op else ""
        key = (node.target, node.op.inputs if node.op else (), needs, op_args)
        if key not in memo:
            memo[key] = _probe(node, needs, mode)
        ins_hit, outs_hit, extra = memo[key]
        if extra:
            internal[node.name] = extra
        own |= {(node.name, i) for i in outs_hit}
        direct |= {(node.name, k) for k in ins_hit}
    values, slots = kept(graph, own, direct)
    return Saved(values, slots, internal, frozenset(own), frozenset(direct))


def kept(
    graph: PlanGraph, own: set[tuple[str, int]], direct: set[tuple[str, int]]
) -> tuple[frozenset[tuple[str, int]], frozenset[tuple[str, int]]]:
    """(values whose storage stays alive, slots whose tensor is saved) given the outputs
    kept by their op (``own``) and the input slots saved (``direct``): a view (or a
    same-dtype cast) aliases its input, so if its output is kept, so is its input's
    storage."""
    values = set(own) | {graph.nodes[n].inputs[k] for n, k in direct}
    slots = set(direct)
    for node in reversed([n for n in graph.nodes.values() if n.kind == "op"]):
        if aliases(node) and any(
            (node.name, i) in values for i in range(len(node.out_metas))
        ):
            for k, src in enumerate(node.inputs):
                values.add(src)
                slots.add((node.name, k))
    return frozenset(values), frozenset(slots)

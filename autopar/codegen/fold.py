"""Activation-gradient reductions folded into the parameters' gradient buckets.

Contract: ``fold_partial_grads(lw)`` (a ``codegen.lower._Lowering``, before parameter
modes are chosen) finds values that are replicated on a mesh axis, computed only from
parameters used where they are stored (through ops whose every value is replicated on
that axis and whose edges move nothing), and whose consumers all send back a gradient
that is a partial sum on that axis (a position embedding added to a batch split on a
data axis). The plan reduces such a gradient where it enters the value (a blocking
all-reduce in the middle of backward); backward is linear in the incoming gradient and
the ops upstream are the same on every rank, so the partial sum may instead flow back
unreduced and be reduced in the parameters' gradients, inside the buckets that reduce
the other gradients anyway (what DDP does). It does so where the cost model prices that
lower (one bucket's share of the bytes, no latency, against a collective of its own: a
parameter much larger than the value keeps the plan's reduction). Folding rewrites the
upstream nodes' gradient layouts to ``Partial`` on the axis (so their parameters get the
axis as a reduction axis) and records in ``lw.keep`` the values whose gradient stays
partial on which axes (their edges issue no backward step there). Returns notes for the
program's header.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import torch.fx as fx

from autopar.placement import Layout, Partial, Replicate, local_shape
from autopar.runtime.collectives import grad_layout
from autopar.solve.graph import input_slots

SUM = Partial("sum")


def _bytes(n: fx.Node, layout: Layout, sizes: tuple[int, ...]) -> int:
    val = n.meta["val"]
    shape = tuple(int(d) for d in val.shape)
    return math.prod(local_shape(shape, layout, sizes)) * val.dtype.itemsize


def _grad_users(lw: Any, v: fx.Node) -> list[fx.Node] | None:
    users = [u for u in v.users if u.op == "output" or lw.needs_grad.get(u.name, False)]
    if any(u.op != "call_function" or u.target is operator.getitem for u in users):
        return None
    return users


def _boundary_axes(lw: Any, a: fx.Node, src: Layout) -> frozenset[int] | None:
    """The axes on which every consumer of ``a`` reads it in place and sends back a
    partial-sum gradient where ``a`` is replicated (None: ``a`` cannot fold)."""
    users = _grad_users(lw, a)
    if not users:
        return None
    axes: frozenset[int] | None = None
    for u in users:
        up = lw.node_plan(u.name)
        for k, s in enumerate(input_slots(u)):
            if s is not a:
                continue
            if up.ins[k] != src:
                return None
            g = up.grads[k]
            here = frozenset(
                i for i, p in enumerate(g) if p == SUM and isinstance(src[i], Replicate)
            )
            if any(g[i] != grad_layout(src)[i] for i in range(len(g)) if i not in here):
                return None
            if axes is not None and here != axes:
                return None
            axes = here
    return axes or None


def _upstream(lw: Any, a: fx.Node, axes: frozenset[int]) -> tuple[set[str], set[str]] | None:
    """(nodes, parameters) the gradient of ``a`` flows back into, when they qualify."""
    nodes: set[str] = set()
    params: set[str] = set()
    stack = [a]
    while stack:
        v = stack.pop()
        if v.name in nodes:
            continue
        np_ = lw.node_plan(v.name)
        if (
            np_.kernel
            or len(np_.outs) != 1
            or any(not isinstance(np_.outs[0][i], Replicate) for i in axes)
        ):
            return None
        nodes.add(v.name)
        for k, w in enumerate(input_slots(v)):
            if not lw.needs_grad.get(w.name, False):
                continue
            if w.op == "get_attr" and str(w.target) in lw.params:
                lay = lw.node_plan(w.name).outs[0]
                params.add(str(w.target))
            elif w.op == "call_function" and w.target is not operator.getitem:
                lay = lw.layout_of(w)
                stack.append(w)
            else:
                return None
            if np_.ins[k] != lay or np_.grads[k] != grad_layout(lay):
                return None
            if any(not isinstance(np_.grads[k][i], Replicate) for i in axes):
                return None
    for name in nodes - {a.name}:
        users = _grad_users(lw, lw.node_by_name[name])
        if users is None or any(u.name not in nodes for u in users):
            return None
    for fqn in params:
        if any(u.name not in nodes for u, _ in lw._uses.get(fqn, [])):
            return None
    return nodes, params


def _cheaper(lw: Any, act: int, param: int, axes: frozenset[int]) -> bool:
    from cost_models import ClusterSpec, CostModel

    cm = CostModel(ClusterSpec.parse(lw.plan.cluster), lw.plan.mesh)
    keep = sum(cm.collective_time("all_reduce", act, i) for i in axes)
    fold = sum(cm.collective_time("all_reduce", param, i) - cm.collective_latency("all_reduce", i)
               for i in axes)  # fmt: skip
    return fold <= keep


def fold_partial_grads(lw: Any) -> list[str]:
    notes: list[str] = []
    lw.node_by_name = {n.name: n for n in lw.gm.graph.nodes}
    param_node = {str(n.target): n.name for n in lw.gm.graph.nodes if n.op == "get_attr"}
    for a in list(lw.gm.graph.nodes):
        if a.op != "call_function" or a.target is operator.getitem or a.name in lw.keep:
            continue
        if not lw.needs_grad.get(a.name, False) or len(lw.node_plan(a.name).outs) != 1:
            continue
        src = lw.node_plan(a.name).outs[0]
        axes = _boundary_axes(lw, a, src)
        if axes is None:
            continue
        found = _upstream(lw, a, axes)
        if found is None:
            continue
        nodes, params = found
        if any(n in lw.keep for n in nodes):
            continue
        pbytes = sum(_bytes(lw.node_by_name[param_node[f]], lw.node_plan(param_node[f]).outs[0],
                            lw.sizes) for f in params)  # fmt: skip
        if not _cheaper(lw, _bytes(a, src, lw.sizes), pbytes, axes):
            continue
        for name in nodes:
            np_ = lw.node_plan(name)
            grads = tuple(
                tuple(SUM if i in axes else p for i, p in enumerate(g))
                if lw.needs_grad.get(w.name, False) else g
                for g, w in zip(np_.grads, input_slots(lw.node_by_name[name]))
            )  # fmt: skip
            lw.by_name[name] = dataclasses.replace(np_, grads=grads)
            lw.keep[name] = axes
        where = ", ".join(lw.names[i] for i in sorted(axes))
        notes.append(f"{a.name}: its gradient is reduced over {where} with "
                     f"{', '.join(sorted(params))}'s in the gradient buckets")  # fmt: skip
    return notes

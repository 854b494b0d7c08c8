"""Joint strategies of one node over every mesh axis.

Contract: ``node_strategies(op, sizes, rule)`` takes the per-axis strategies of ``rule``
for each mesh axis and keeps the combinations in which every sharded dim divides by the
product of the axis sizes sharding it. Each ``Strategy`` also records the layout of each
input's gradient as this node produces it in backward:
- an input that arrives ``Shard(d)`` gets a ``Shard(d)`` gradient;
- an input that arrives ``Partial`` gets a ``Replicate`` gradient;
- an input that arrives ``Replicate`` gets a ``Partial`` gradient on an axis where any
  other input or output of the node is not replicated (each rank computed one piece of
  the work that used it), else ``Replicate``.
"""

from __future__ import annotations

import itertools

from autopar.placement import Layout, Partial, Placement, R, Replicate, Shard
from autopar.strategies.rules_linear import Rule
from autopar.strategies.types import AxisStrategy, OpView, Strategy, TensorMeta


def _divides(meta: TensorMeta, layout: Layout, sizes: tuple[int, ...]) -> bool:
    factor: dict[int, int] = {}
    for p, n in zip(layout, sizes):
        if isinstance(p, Shard):
            if p.dim >= meta.ndim:
                return False
            factor[p.dim] = factor.get(p.dim, 1) * n
    return all(meta.shape[d] % f == 0 and meta.shape[d] >= f for d, f in factor.items())


def grad_placement(p: Placement, axis_active: bool) -> Placement:
    if isinstance(p, Shard):
        return p
    if isinstance(p, Partial):
        return R
    return Partial() if axis_active else R


def _active(s: AxisStrategy) -> bool:
    return any(not isinstance(p, Replicate) for p in (*s.ins, *s.outs) if p is not None)


def combine(
    op: OpView, sizes: tuple[int, ...], per_axis: list[list[AxisStrategy]]
) -> list[Strategy]:
    found: dict[tuple[object, ...], Strategy] = {}
    k = len(op.inputs)
    for combo in itertools.product(*per_axis):
        kernel_axes = [s.kernel for s in combo if s.kernel]
        if len(kernel_axes) > 1 and "vocab_embedding" in kernel_axes:
            continue  # vocab-parallel lookup over one axis only
        ins = tuple(tuple(s.ins[i] or R for s in combo) for i in range(k))
        outs = tuple(tuple(s.outs[j] for s in combo) for j in range(len(op.outputs)))
        if not all(_divides(m, lay, sizes) for m, lay in zip(op.inputs, ins)):
            continue
        if not all(_divides(m, lay, sizes) for m, lay in zip(op.outputs, outs)):
            continue
        active = [_active(s) for s in combo]
        grads = tuple(tuple(grad_placement(p, a) for p, a in zip(lay, active)) for lay in ins)
        div = 1
        for s, n in zip(combo, sizes):
            if s.split:
                div *= n
        key = (ins, outs)
        if key not in found:
            kernels = tuple(s.kernel for s in combo)
            found[key] = Strategy(ins, outs, grads, div, kernels)
    return list(found.values())


def _trivial(s: AxisStrategy) -> bool:
    return all(p is None or isinstance(p, Replicate) for p in (*s.ins, *s.outs))


def node_strategies(op: OpView, sizes: tuple[int, ...], rule: Rule,
                    memo: dict[object, list[Strategy]] | None = None) -> list[Strategy]:  # fmt: skip
    """The node's strategies; ``memo`` (one graph's, kept by the caller) holds them per
    op, its non-tensor arguments and tensor metadata, so a repeated layer's ops are
    enumerated once (a fresh list per node: a preset replaces a node's list)."""
    if memo is None:
        return _enumerate(op, sizes, rule)
    key = (op.target, repr(op.args), repr(op.kwargs), op.inputs, op.outputs, sizes, rule)
    if key not in memo:
        memo[key] = _enumerate(op, sizes, rule)
    return list(memo[key])


def _enumerate(op: OpView, sizes: tuple[int, ...], rule: Rule) -> list[Strategy]:
    per_axis = [rule(op, n) for n in sizes]
    # an axis of size 1 splits nothing: only its replicated strategy is worth a variable
    per_axis = [
        [s for s in opts if _trivial(s)] or opts if n == 1 else opts
        for opts, n in zip(per_axis, sizes)
    ]
    return combine(op, sizes, per_axis)


def free_strategies(
    meta: TensorMeta, sizes: tuple[int, ...], allow_shard: bool, param: bool = False
) -> list[Strategy]:
    """Layouts for a graph input or parameter: replicated, or sharded on any dims. A
    sharded parameter layout comes twice: re-gathered in backward (FSDP, ``regather``),
    then kept gathered through backward (ZeRO-2)."""
    options: list[list[Placement]] = []
    for n in sizes:
        axis_opts: list[Placement] = [R]
        if allow_shard and n > 1:
            axis_opts += [Shard(d) for d in range(meta.ndim)]
        options.append(axis_opts)
    found = []
    for layout in itertools.product(*options):
        if _divides(meta, layout, sizes):
            found.append(Strategy((), (tuple(layout),), (), 1, ()))
    if param:  # re-gathering first: among equally fast plans the solver keeps less memory
        sharded = [s for s in found if any(isinstance(p, Shard) for p in s.outs[0])]
        found = (
            [s for s in found if s not in sharded]
            + [Strategy((), s.outs, (), 1, (), regather=True) for s in sharded]
            + sharded
        )
    return found

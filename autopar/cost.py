"""Prices of strategies and reshards, from the ``cost_models`` package.

Contract:
- ``transition(src, dst, meta, sizes)`` lists the collectives that move a tensor from
  layout ``src`` to ``dst``, axis by axis: S->R all-gather, P->R all-reduce, P->S
  reduce-scatter, S(i)->S(j) all-to-all, R->S and R->P are local (no communication).
- ``edge_seconds`` prices a consumer slot: the forward transition of the value plus, if
  the value needs a gradient, the backward transition of its gradient (the consumer's
  gradient layout back to the producer's layout with ``Partial`` read as replicated).
- ``node_seconds`` prices a strategy's compute: a roofline of the op's FLOPs and bytes
  divided by the ways the strategy splits it; backward costs twice the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopar.placement import Layout, Partial, Placement, R, Replicate, Shard
from autopar.strategies.types import OpView, Strategy, TensorMeta
from cost_models import CostModel

BACKWARD_FACTOR = 2.0


@dataclass(frozen=True)
class Collective:
    kind: str
    axis: int
    nbytes: int

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "axis": self.axis, "bytes": self.nbytes}


def _kind(s: Placement, d: Placement) -> str | None:
    if s == d:
        return None
    if isinstance(d, Replicate):
        return "all_gather" if isinstance(s, Shard) else "all_reduce"
    if isinstance(d, Shard):
        if isinstance(s, Replicate):
            return None
        return "reduce_scatter" if isinstance(s, Partial) else "all_to_all"
    # d is Partial
    if isinstance(s, Replicate):
        return None
    return "all_gather" if isinstance(s, Shard) else "all_reduce"


def _other_factor(layout_a: Layout, layout_b: Layout, axis: int, sizes: tuple[int, ...]) -> int:
    """Sharding on the other axes that already applies while ``axis`` is moved."""
    f = 1
    for a, n in enumerate(sizes):
        if a == axis:
            continue
        p = layout_b[a] if a < axis else layout_a[a]
        if isinstance(p, Shard):
            f *= n
    return f


def transition(
    src: Layout, dst: Layout, meta: TensorMeta, sizes: tuple[int, ...]
) -> list[Collective]:
    found = []
    for axis, (s, d) in enumerate(zip(src, dst)):
        kind = _kind(s, d)
        if kind is not None:
            nbytes = meta.nbytes // _other_factor(src, dst, axis, sizes)
            found.append(Collective(kind, axis, nbytes))
    return found


def grad_of(layout: Layout) -> Layout:
    """Layout a producer's gradient must arrive in (its own, with Partial replicated)."""
    return tuple(R if isinstance(p, Partial) else p for p in layout)


def edge_collectives(
    src: Layout,
    dst: Layout,
    grad: Layout,
    meta: TensorMeta,
    needs_grad: bool,
    sizes: tuple[int, ...],
) -> tuple[list[Collective], list[Collective]]:
    fwd = transition(src, dst, meta, sizes)
    bwd = transition(grad, grad_of(src), meta, sizes) if needs_grad else []
    return fwd, bwd


def collectives_seconds(cm: CostModel, collectives: list[Collective]) -> float:
    return sum(cm.collective_time(c.kind, c.nbytes, c.axis) for c in collectives)


def op_work(op: OpView, family: str) -> tuple[float, float]:
    """(FLOPs, bytes moved) of one forward execution of the whole op."""
    if family == "view":
        return 0.0, 0.0
    out = op.outputs[0] if op.outputs else None
    nbytes = float(sum(m.nbytes for m in op.inputs) + sum(m.nbytes for m in op.outputs))
    if family == "matmul" and out is not None:
        a = op.inputs[1] if op.target is not None and "addmm" in str(op.target) else op.inputs[0]
        if "baddbmm" in str(op.target):
            a = op.inputs[1]
        return 2.0 * out.numel * a.shape[-1], nbytes
    if family == "scaled_dot_product_attention":
        q, k = op.inputs[0], op.inputs[1]
        return 4.0 * q.numel * k.shape[-2], nbytes
    return float(out.numel if out is not None else 0), nbytes


def node_seconds(
    cm: CostModel, op: OpView, family: str, strategy: Strategy, needs_grad: bool
) -> float:
    flops, nbytes = op_work(op, family)
    if flops == 0 and nbytes == 0:
        return 0.0
    scale = (1.0 + BACKWARD_FACTOR) if needs_grad else 1.0
    dtype = op.outputs[0].dtype if op.outputs else "fp32"
    t = cm.compute_time(
        flops * scale / strategy.compute_div, nbytes * scale / strategy.compute_div, dtype
    )
    return t + collectives_seconds(cm, kernel_collectives(strategy))


def kernel_collectives(strategy: Strategy) -> list[Collective]:
    """Collectives issued inside a custom kernel: the sharded cross-entropy all-reduces
    its loss sum and its count of counted targets over each axis that splits the batch."""
    if strategy.kernel != "sharded_cross_entropy":
        return []
    axes = [a for a, k in enumerate(strategy.kernels) if k]
    return [Collective("all_reduce", a, 4) for _ in ("sum", "count") for a in axes]

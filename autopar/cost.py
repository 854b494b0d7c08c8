"""Prices of strategies and reshards, from the ``cost_models`` package.

Contract:
- ``transition(src, dst, meta, sizes)`` lists the collectives that move a tensor from
  layout ``src`` to ``dst``, axis by axis: S->R all-gather, P->R all-reduce, P->S
  reduce-scatter, S(i)->S(j) all-to-all, R->S and R->P are local (no communication).
  ``collective_seconds`` prices one: alpha-beta, plus a copy of the full tensor when it
  is gathered or scattered on a dim other than 0, or is an all-to-all (``relayout``).
- ``edge_seconds`` prices a consumer slot: the forward transition of the value plus, if
  the value needs a gradient, the backward transition of its gradient (the consumer's
  gradient layout back to the producer's layout with ``Partial`` read as replicated).
  With ``regather`` (an FSDP parameter whose gathered copy autograd keeps for backward
  is freed after forward) the forward gather is issued again in backward.
- ``compute_seconds`` prices a strategy's compute: a roofline of the op's FLOPs, bytes
  and special-function evaluations (``SPECIAL``: exp, tanh, erf, log per element, which
  bound element-wise ops on CPUs) divided by the ways the strategy splits it, attention
  at the device's attention efficiency, forward plus backward, where backward is
  priced per op (``backward_work``): a matmul's backward computes one product per operand
  that needs a gradient (2x forward when both do, 1x for a weight-only gradient),
  attention's backward is 2.5x its forward, other ops move about their forward bytes once.
  A cast to the dtype the tensor already has (``aten.to``/``type_as``) returns its input
  in eager PyTorch and costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopar.placement import Layout, Partial, Placement, R, Replicate, Shard
from autopar.strategies.types import OpView, Strategy, TensorMeta
from cost_models import CostModel

MATMUL_OPERANDS = {"addmm": (1, 2), "baddbmm": (1, 2)}  # else slots (0, 1)
ATTENTION_BACKWARD = 2.5
# Special-function evaluations per element (of the output; of the input for a loss):
# op -> (forward, backward). Backward formulas that reuse the forward output (tanh,
# sigmoid, softmax) evaluate none; log-softmax and cross-entropy recompute exp(x).
_EXP, _ERF = (("exp", 1.0),), (("erf", 1.0),)
SPECIAL: dict[str, tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]] = {
    "tanh": ((("tanh", 1.0),), ()),
    "exp": (_EXP, ()),
    "sigmoid": (_EXP, ()),
    "silu": (_EXP, _EXP),
    "gelu": (_ERF, (("erf", 1.0), ("exp", 1.0))),
    "erf": (_ERF, _EXP),
    "softmax": (_EXP, ()),
    "_softmax": (_EXP, ()),
    "log_softmax": (_EXP, _EXP),
    "_log_softmax": (_EXP, _EXP),
    "cross_entropy_loss": (_EXP, _EXP),
    "log": ((("log", 1.0),), ()),
}  # fmt: skip


@dataclass(frozen=True)
class Collective:
    kind: str
    axis: int
    nbytes: int
    # the runtime copies the tensor once more around the call: a gather or scatter on a
    # dim other than 0 (collectives concatenate along dim 0), or gloo's all-to-all
    relayout: bool = False

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "axis": self.axis, "bytes": self.nbytes}
        if self.relayout:
            out["relayout"] = True
        return out


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
            dims = [p.dim for p in (s, d) if isinstance(p, Shard) and kind != "all_reduce"]
            relayout = kind == "all_to_all" or any(dim != 0 for dim in dims)
            found.append(Collective(kind, axis, nbytes, relayout))
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
    regather: bool = False,
) -> tuple[list[Collective], list[Collective]]:
    fwd = transition(src, dst, meta, sizes)
    bwd = transition(grad, grad_of(src), meta, sizes) if needs_grad else []
    if regather and fwd:
        bwd = fwd + bwd  # gather again before the op's backward, then reduce its gradient
    return fwd, bwd


def collective_seconds(cm: CostModel, c: Collective) -> float:
    """One collective: its alpha-beta time, plus one read and write of the full tensor
    when the runtime relayouts it (``Collective.relayout``)."""
    copy = cm.compute_time(0.0, 2.0 * c.nbytes) if c.relayout else 0.0
    return cm.collective_time(c.kind, c.nbytes, c.axis) + copy


def collectives_seconds(cm: CostModel, collectives: list[Collective]) -> float:
    return sum(collective_seconds(cm, c) for c in collectives)


def _same_dtype_cast(op: OpView) -> bool:
    name = str(op.target)
    return (
        name.startswith(("aten.to.", "aten.type_as."))
        and bool(op.inputs and op.outputs)
        and op.inputs[0].dtype == op.outputs[0].dtype
    )


def op_work(op: OpView, family: str) -> tuple[float, float]:
    """(FLOPs, bytes moved) of one forward execution of the whole op."""
    if family == "view" or _same_dtype_cast(op):
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


def _op_name(op: OpView) -> str:
    return getattr(getattr(op.target, "overloadpacket", None), "__name__", str(op.target))


def special_work(op: OpView, needs_grad: bool) -> dict[str, float]:
    """Special-function evaluations of one training step of the whole op (``SPECIAL``)."""
    rule = SPECIAL.get(_op_name(op))
    if rule is None or not op.outputs:
        return {}
    meta = op.inputs[0] if _op_name(op) == "cross_entropy_loss" and op.inputs else op.outputs[0]
    out: dict[str, float] = {}
    for fn, per in rule[0] + (rule[1] if needs_grad else ()):
        out[fn] = out.get(fn, 0.0) + per * meta.numel
    return out


def backward_work(
    op: OpView, family: str, input_grads: tuple[bool, ...] | None
) -> tuple[float, float]:
    """(FLOPs, bytes) of one backward execution of the whole op, as multiples of forward."""
    flops, nbytes = op_work(op, family)
    grads = input_grads if input_grads is not None else tuple(True for _ in op.inputs)
    if not any(grads):
        return 0.0, 0.0
    if family == "matmul":
        name = getattr(getattr(op.target, "overloadpacket", None), "__name__", str(op.target))
        a, b = MATMUL_OPERANDS.get(name, (0, 1))
        n = sum(1 for k in (a, b) if k < len(grads) and grads[k])
        return flops * n, nbytes * max(n, 1)
    if family == "scaled_dot_product_attention":
        return flops * ATTENTION_BACKWARD, nbytes * 2
    return flops, nbytes


def compute_seconds(
    cm: CostModel,
    op: OpView,
    family: str,
    strategy: Strategy,
    needs_grad: bool,
    input_grads: tuple[bool, ...] | None = None,
) -> float:
    """Forward (+ backward when the node needs a gradient) compute on one device."""
    flops, nbytes = op_work(op, family)
    if flops == 0 and nbytes == 0:
        return 0.0
    if needs_grad:
        bf, bb = backward_work(op, family, input_grads)
        flops, nbytes = flops + bf, nbytes + bb
    dtype = op.outputs[0].dtype if op.outputs else "fp32"
    div = strategy.compute_div
    special = {fn: n / div for fn, n in special_work(op, needs_grad).items()}
    attention = family == "scaled_dot_product_attention"
    return cm.compute_time(flops / div, nbytes / div, dtype, special, attention)


def model_flops(
    op: OpView, family: str, needs_grad: bool, input_grads: tuple[bool, ...] | None
) -> float:
    """FLOPs of one training step of the whole (unsplit) op: forward + backward."""
    flops, _ = op_work(op, family)
    return flops + (backward_work(op, family, input_grads)[0] if needs_grad else 0.0)


def kernel_collectives(strategy: Strategy) -> list[Collective]:
    """Collectives issued inside a custom kernel: the sharded cross-entropy all-reduces
    its loss sum and its count of counted targets over each axis that splits the batch."""
    if strategy.kernel != "sharded_cross_entropy":
        return []
    axes = [a for a, k in enumerate(strategy.kernels) if k]
    return [Collective("all_reduce", a, 4) for _ in ("sum", "count") for a in axes]

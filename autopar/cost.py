"""Prices of strategies and reshards, from the ``cost_models`` package.

Contract:
- ``transition(src, dst, meta, sizes)`` lists the collectives that move a tensor from
  layout ``src`` to ``dst``: exactly the communicating steps the runtime runs
  (``autopar.steps.walk_axes``, any pair of layouts): S->R all-gather, P->R all-reduce,
  P->S reduce-scatter, S(i)->S(j) all-to-all, R->S and R->P local; a dim split by a
  later axis too is first gathered on that axis.
  ``collective_seconds`` prices one: alpha-beta, plus a copy of the full tensor when it
  is gathered or scattered on a dim other than 0, or is an all-to-all (``relayout``);
  one sent with others (a gradient bucket, a layer's FSDP collective) pays only its
  ``latency_share`` of the latency.
- ``edge_seconds`` prices a consumer slot: the forward transition of the value plus, if
  the value needs a gradient, the backward transition of its gradient (the consumer's
  gradient layout back to the producer's layout with ``Partial`` read as replicated).
  With ``regather`` (an FSDP parameter whose gathered copy autograd keeps for backward
  is freed after forward) the forward gather is issued again in backward. ``gathered``
  is what a forward move carries when it differs from the value (a parameter gathered
  in bf16 from its fp32 master under bf16-mixed); the gradient moves at ``meta``'s dtype.
- ``compute_seconds`` prices a strategy's compute: a roofline of the op's FLOPs, bytes
  and special-function evaluations (``SPECIAL``: exp, tanh, erf, log per element, which
  bound element-wise ops on CPUs) divided by the ways the strategy splits it, attention
  at the device's attention efficiency, forward plus backward, where backward is
  priced per op (``backward_work``): a matmul's or a convolution's backward computes one
  product per operand that needs a gradient (2x forward when both do, 1x for a
  weight-only gradient),
  attention's backward is 2.5x its forward, other ops move about their forward bytes once.
  A cast to the dtype the tensor already has (``aten.to``/``type_as``) returns its input
  in eager PyTorch and costs nothing. Any dtype is priced (``cost_models.dtypes``: bytes
  by itemsize; complex at its real part's FLOP rate), never refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopar.placement import Layout, Partial, R, Shard
from autopar.steps import COLLECTIVES as STEP_COLLECTIVES
from autopar.steps import walk_axes
from autopar.strategies.rules_linear import conv_flops, einsum_flops
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
    # sent together with others in one collective (a gradient bucket, one layer's FSDP
    # gather or reduce-scatter): it pays this share of its latency (the planner charges
    # each member 1/group size in the ILP, and the whole latency once per group when it
    # expands the plan); 1.0 = a collective of its own
    latency_share: float = 1.0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "axis": self.axis, "bytes": self.nbytes}
        if self.relayout:
            out["relayout"] = True
        return out


def transition(
    src: Layout, dst: Layout, meta: TensorMeta, sizes: tuple[int, ...]
) -> list[Collective]:
    """One ``Collective`` per communicating step the runtime runs for this move
    (``autopar.steps.walk_axes``), on the bytes of the tensor over that axis' group at
    that step (the full tensor divided by the other axes that split it then)."""
    found = []
    for step, before in walk_axes(src, dst):
        kind, axis = step[0], step[1]
        if kind not in STEP_COLLECTIVES:
            continue
        other = 1
        for a, p in enumerate(before):
            if a != axis and isinstance(p, Shard):
                other *= sizes[a]
        relayout = kind == "all_to_all" or (kind[:10] != "all_reduce" and step[2] != 0)
        kind = "all_reduce" if kind == "all_reduce_avg" else kind
        found.append(Collective(kind, axis, meta.nbytes // other, relayout))
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
    gathered: TensorMeta | None = None,
) -> tuple[list[Collective], list[Collective]]:
    fwd = transition(src, dst, gathered or meta, sizes)
    bwd = transition(grad, grad_of(src), meta, sizes) if needs_grad and meta.is_float else []
    if regather and fwd:
        bwd = fwd + bwd  # gather again before the op's backward, then reduce its gradient
    return fwd, bwd


def collective_seconds(cm: CostModel, c: Collective) -> float:
    """One collective: its alpha-beta time, plus one read and write of the full tensor
    when the runtime relayouts it (``Collective.relayout``)."""
    copy = cm.compute_time(0.0, 2.0 * c.nbytes) if c.relayout else 0.0
    alone = cm.collective_time(c.kind, c.nbytes, c.axis) + copy
    if c.latency_share < 1.0 and c.nbytes:
        return max(0.0, alone - (1.0 - c.latency_share) * cm.collective_latency(c.kind, c.axis))
    return alone


def collectives_seconds(cm: CostModel, collectives: list[Collective]) -> float:
    return sum(collective_seconds(cm, c) for c in collectives)


def _same_dtype_cast(op: OpView) -> bool:
    name = str(op.target)
    return (
        name.startswith(("aten.to.", "aten.type_as."))
        and bool(op.inputs and op.outputs)
        and op.inputs[0].dtype == op.outputs[0].dtype
    )


def returns_input(op: OpView, family: str) -> bool:
    """The op hands back its input's storage (a view, a cast to the dtype it already has,
    an alias): it costs nothing and holds no memory of its own."""
    name = str(op.target)
    return family == "view" or _same_dtype_cast(op) or name.startswith(
        ("aten.alias.", "aten.detach.", "aten.lift_fresh_copy.")
    )


def op_work(op: OpView, family: str) -> tuple[float, float]:
    """(FLOPs, bytes moved) of one forward execution of the whole op."""
    if returns_input(op, family):
        return 0.0, 0.0
    out = op.outputs[0] if op.outputs else None
    nbytes = float(sum(m.nbytes for m in op.inputs) + sum(m.nbytes for m in op.outputs))
    if family == "matmul" and _op_name(op) == "einsum":
        return einsum_flops(op), nbytes
    if family == "matmul" and out is not None:
        a = op.inputs[1] if op.target is not None and "addmm" in str(op.target) else op.inputs[0]
        if "baddbmm" in str(op.target):
            a = op.inputs[1]
        return 2.0 * out.numel * a.shape[-1], nbytes
    if family == "scaled_dot_product_attention":
        q, k = op.inputs[0], op.inputs[1]
        return 4.0 * q.numel * k.shape[-2], nbytes
    if family == "conv" and out is not None:
        return conv_flops(op, _conv_transposed(op)), nbytes
    return float(out.numel if out is not None else 0), nbytes


def _conv_transposed(op: OpView) -> bool:
    name = _op_name(op)
    if name.startswith("conv_transpose"):
        return True
    return name in ("convolution", "_convolution") and bool(op.arg(6, "transposed", False))


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
    if family in ("matmul", "conv"):
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
    its loss sum and its count of counted targets together (one 2-element all-reduce)
    over each axis that splits the batch."""
    if strategy.kernel != "sharded_cross_entropy":
        return []
    axes = [a for a, k in enumerate(strategy.kernels) if k]
    return [Collective("all_reduce", a, 8) for a in axes]

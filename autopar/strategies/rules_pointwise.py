"""Sharding rules for element-wise ops (with broadcasting) and reductions.

Contract:
- Element-wise: any output dim that divides may be sharded; each input follows on its
  aligned dim (inputs broadcast along that dim arrive replicated). Linear ops also pass
  ``Partial`` through: add/sub of two partial tensors, mul/div of one partial tensor by
  replicated ones, and unary casts and copies.
  ``div`` with a ``rounding_mode`` rounds, so it passes no ``Partial``.
- Reductions (sum, mean): a kept dim may be sharded; a reduced dim may be sharded and
  the output becomes ``Partial`` (``avg`` for mean).
- Ops along one dim (softmax, cumsum, diff, argmax): any other dim may be sharded.
"""

from __future__ import annotations

from autopar.placement import P, Partial, Placement, R, Shard
from autopar.strategies.types import AxisStrategy, OpView

# ops that are linear in their (float) tensor inputs: how Partial passes through
ADDITIVE = {"add", "sub"}
SCALING = {"mul", "div"}
UNARY_LINEAR = {
    "neg", "clone", "alias", "contiguous", "to", "_to_copy", "detach", "lift_fresh_copy",
    "type_as", "view_as",
}  # fmt: skip


def pointwise_rule(op: OpView, n: int, name: str) -> list[AxisStrategy]:
    out = op.out
    k = len(op.inputs)
    found = [AxisStrategy(tuple([R] * k), (R,), split=False)]
    found += [AxisStrategy(ins, (Shard(d),), split=True) for d, ins in _aligned_shards(op, n)]
    if not out.is_float or not all(m.is_float for m in op.inputs):
        return found
    if name in ADDITIVE and k == 2 and all(m.shape == out.shape for m in op.inputs):
        found.append(AxisStrategy((P, P), (P,), split=False))
    elif name in SCALING and op.arg(2, "rounding_mode", None) is not None:
        pass  # div(..., rounding_mode=...) rounds: not linear
    elif name in SCALING or (name in UNARY_LINEAR and k == 1):
        slots = [0] if name == "div" else range(k)
        for i in slots:
            if op.inputs[i].shape != out.shape:
                continue
            ins = [P if j == i else R for j in range(k)]
            found.append(AxisStrategy(tuple(ins), (P,), split=False))
    return found


def _reduced_dims(op: OpView) -> tuple[list[int], bool]:
    x = op.inputs[0]
    dims = op.arg(1, "dim", None)
    keepdim = bool(op.arg(2, "keepdim", False))
    if dims is None or dims == []:
        return list(range(x.ndim)), keepdim
    if isinstance(dims, int):
        dims = [dims]
    return sorted(d % max(x.ndim, 1) for d in dims), keepdim


def reduction_rule(op: OpView, n: int, name: str) -> list[AxisStrategy]:
    x = op.inputs[0]
    reduced, keepdim = _reduced_dims(op)
    partial = Partial("avg") if name == "mean" else P
    found = [AxisStrategy((R,), (R,), split=False)]
    if op.out.is_float:
        found.append(AxisStrategy((partial,), (partial,), split=False))
    for d, s in enumerate(x.shape):
        if s % n or s < n:
            continue
        if d in reduced:
            if op.out.is_float:
                found.append(AxisStrategy((Shard(d),), (partial,), split=True))
        else:
            od = d if keepdim else d - sum(1 for r in reduced if r < d)
            found.append(AxisStrategy((Shard(d),), (Shard(od),), split=True))
    return found


def dim_exclusive_rule(
    op: OpView, n: int, dim_pos: int, dim_name: str, default: int | None = -1,
    reduces: bool = False,
) -> list[AxisStrategy]:  # fmt: skip
    """Ops that work along one dim (softmax, cumsum, diff, argmax): shard any other dim.
    Extra tensor inputs of the same rank (diff's prepend/append) shard with the input;
    with ``reduces`` (argmax) the dim is dropped from the output unless ``keepdim``, and
    no dim (``None``: over the flattened tensor) leaves nothing to shard."""
    x = op.inputs[0]
    k = len(op.inputs)
    found = [AxisStrategy(tuple([R] * k), tuple(R for _ in op.outputs), split=False)]
    dim = op.arg(dim_pos, dim_name, default)
    if dim is None or x.ndim == 0:
        return found
    dim %= x.ndim
    drop = reduces and not op.arg(dim_pos + 1, "keepdim", False)
    for d, s in enumerate(x.shape):
        if d == dim or s % n or s < n:
            continue
        ins = tuple(Shard(d) if m.ndim == x.ndim and m.shape[d] == s else R for m in op.inputs)
        od = d - 1 if drop and d > dim else d
        found.append(AxisStrategy(ins, tuple(Shard(od) for _ in op.outputs), split=True))
    return found


def norm_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """layer_norm / rms_norm(x, normalized_shape, weight?, bias?): shard leading dims."""
    x = op.inputs[0]
    norm_ndim = len(op.arg(1, "normalized_shape"))
    k = len(op.inputs)
    found = [AxisStrategy(tuple([R] * k), (R,), split=False)]
    for d in range(x.ndim - norm_ndim):
        if x.shape[d] % n or x.shape[d] < n:
            continue
        found.append(AxisStrategy((Shard(d),) + (R,) * (k - 1), (Shard(d),), split=True))
    return found


def broadcast_tensors_rule(op: OpView, n: int) -> list[AxisStrategy]:
    k = len(op.inputs)
    found = [AxisStrategy(tuple([R] * k), tuple(R for _ in op.outputs), split=False)]
    for d, ins in _aligned_shards(op, n):
        found.append(AxisStrategy(ins, tuple(Shard(d) for _ in op.outputs), split=True))
    return found


def _aligned_shards(op: OpView, n: int) -> list[tuple[int, tuple[Placement | None, ...]]]:
    """For each output dim that divides: the inputs' placements, aligned from the right
    (an input broadcast along that dim arrives replicated)."""
    out = op.out
    found = []
    for d, s in enumerate(out.shape):
        if s % n or s < n:
            continue
        ins: list[Placement | None] = []
        for meta in op.inputs:
            da = d - (out.ndim - meta.ndim)
            ins.append(Shard(da) if da >= 0 and meta.shape[da] == s else R)
        found.append((d, tuple(ins)))
    return found

"""Sharding rules for views and data movement: view/reshape, transpose/permute,
unsqueeze/squeeze, expand, slice/select, split/unbind, cat/stack.

Contract: each rule maps a sharded input dim to the output dim that holds the same
contiguous chunk of elements, and offers nothing where no such dim exists (a split or
slice along a sharded dim, or a reshape that would interleave shards). Shape arguments
are global; the code generator rewrites them to local sizes from the planned layout.
"""

from __future__ import annotations

from autopar.placement import P, Placement, R, Shard
from autopar.strategies.types import AxisStrategy, OpView


def _ok(size: int, n: int) -> bool:
    return size >= n and size % n == 0


def _base(op: OpView) -> list[AxisStrategy]:
    k = len(op.inputs)
    found = [AxisStrategy(tuple([R] * k), tuple(R for _ in op.outputs), split=False)]
    if op.inputs and all(m.is_float for m in op.inputs) and op.out.is_float:
        found.append(AxisStrategy(tuple([P] * k), tuple(P for _ in op.outputs), split=False))
    return found


def _mapped(op: OpView, n: int, dim_map: dict[int, int]) -> list[AxisStrategy]:
    """Single-input, single-output op whose input dim d lands on output dim dim_map[d]."""
    found = _base(op)
    x, out = op.inputs[0], op.out
    for d, od in dim_map.items():
        if _ok(x.shape[d], n) and _ok(out.shape[od], n):
            ins: tuple[Placement | None, ...] = (Shard(d),) + (R,) * (len(op.inputs) - 1)
            found.append(AxisStrategy(ins, (Shard(od),), split=True))
    return found


def reshape_dim_map(a: tuple[int, ...], b: tuple[int, ...]) -> dict[int, int]:
    """Input dims of shape ``a`` that stay contiguous chunks in shape ``b``."""

    def before(shape: tuple[int, ...]) -> list[int]:
        out, p = [], 1
        for s in shape:
            out.append(p)
            p *= s
        return out

    ba, bb = before(a), before(b)
    boundaries = set(ba) & set(bb)
    found: dict[int, int] = {}
    for d, s in enumerate(a):
        if s <= 1 or ba[d] not in boundaries:
            continue
        if any(a[e] > 1 for e in range(d) if ba[e] == ba[d]):
            continue  # a non-trivial dim precedes d inside its group
        for j, t in enumerate(b):
            if bb[j] == ba[d] and t > 1:
                found[d] = j
                break
    return found


def view_rule(op: OpView, n: int) -> list[AxisStrategy]:
    return _mapped(op, n, reshape_dim_map(op.inputs[0].shape, op.out.shape))


def transpose_rule(op: OpView, n: int) -> list[AxisStrategy]:
    nd = op.inputs[0].ndim
    if nd < 2:
        return _mapped(op, n, {d: d for d in range(nd)})
    d0 = op.arg(1, "dim0", 0) % nd
    d1 = op.arg(2, "dim1", 1) % nd
    perm = list(range(nd))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _mapped(op, n, {perm[i]: i for i in range(nd)})


def permute_rule(op: OpView, n: int) -> list[AxisStrategy]:
    nd = op.inputs[0].ndim
    dims = [d % nd for d in op.arg(1, "dims")]
    return _mapped(op, n, {dims[i]: i for i in range(nd)})


def unsqueeze_rule(op: OpView, n: int) -> list[AxisStrategy]:
    nd = op.out.ndim
    at = op.arg(1, "dim") % nd
    return _mapped(op, n, {d: (d if d < at else d + 1) for d in range(nd - 1)})


def squeeze_rule(op: OpView, n: int) -> list[AxisStrategy]:
    a, b = op.inputs[0].shape, op.out.shape
    keep = [d for d, s in enumerate(a) if s != 1]
    if len(keep) == len(b):
        return _mapped(op, n, {d: i for i, d in enumerate(keep)})
    return _mapped(op, n, reshape_dim_map(a, b))


def expand_rule(op: OpView, n: int) -> list[AxisStrategy]:
    x, out = op.inputs[0], op.out
    found = _base(op)
    for d, s in enumerate(out.shape):
        if not _ok(s, n):
            continue
        da = d - (out.ndim - x.ndim)
        p: Placement = Shard(da) if da >= 0 and x.shape[da] == s else R
        found.append(AxisStrategy((p,), (Shard(d),), split=True))
    return found


def _excluding(op: OpView, n: int, dim: int, shift: bool) -> list[AxisStrategy]:
    """Shard any dim but ``dim``; with ``shift`` the output loses ``dim``."""
    x = op.inputs[0]
    found = _base(op)
    for d, s in enumerate(x.shape):
        if d == dim or not _ok(s, n):
            continue
        od = d - 1 if shift and d > dim else d
        ins = tuple(Shard(d) for _ in op.inputs)
        found.append(AxisStrategy(ins, tuple(Shard(od) for _ in op.outputs), split=True))
    return found


def slice_rule(op: OpView, n: int) -> list[AxisStrategy]:
    return _excluding(op, n, op.arg(1, "dim", 0) % op.inputs[0].ndim, shift=False)


def select_rule(op: OpView, n: int) -> list[AxisStrategy]:
    return _excluding(op, n, op.arg(1, "dim") % op.inputs[0].ndim, shift=True)


def split_rule(op: OpView, n: int) -> list[AxisStrategy]:
    return _excluding(op, n, op.arg(2, "dim", 0) % op.inputs[0].ndim, shift=False)


def unbind_rule(op: OpView, n: int) -> list[AxisStrategy]:
    return _excluding(op, n, op.arg(1, "dim", 0) % op.inputs[0].ndim, shift=True)


def cat_rule(op: OpView, n: int) -> list[AxisStrategy]:
    out = op.out
    dim = op.arg(1, "dim", 0) % out.ndim
    if any(m.ndim != out.ndim for m in op.inputs):  # legacy empty-tensor cat
        return _base(op)[:1]
    return _excluding(op, n, dim, shift=False)


def stack_rule(op: OpView, n: int) -> list[AxisStrategy]:
    out = op.out
    at = op.arg(1, "dim", 0) % out.ndim
    found = _base(op)
    for d, s in enumerate(op.inputs[0].shape):
        if _ok(s, n):
            od = d if d < at else d + 1
            found.append(AxisStrategy(tuple(Shard(d) for _ in op.inputs), (Shard(od),), True))
    return found


RULES = {
    "view": view_rule,
    "_unsafe_view": view_rule,
    "reshape": view_rule,
    "flatten": view_rule,
    "transpose": transpose_rule,
    "t": transpose_rule,
    "permute": permute_rule,
    "unsqueeze": unsqueeze_rule,
    "squeeze": squeeze_rule,
    "expand": expand_rule,
    "slice": slice_rule,
    "narrow": slice_rule,
    "select": select_rule,
    "split": split_rule,
    "split_with_sizes": split_rule,
    "unbind": unbind_rule,
    "cat": cat_rule,
    "stack": stack_rule,
}

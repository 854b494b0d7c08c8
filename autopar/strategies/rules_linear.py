"""Sharding rules for the matmul family, written as einsum strings.

Contract: ``einsum_rule(spec)`` turns ``"mk,kn->mn"`` into a rule. On one mesh axis of
size n a letter that appears in the output may be sharded (every operand holding it
is sharded on that dim, the output too); a contracted letter may be sharded (the output
is ``Partial``); or nothing is sharded. Operands marked additive (a bias, ``+n``) are
added to the product: they follow the output's placement, and become ``Partial`` when
the output is ``Partial`` so that the bias is counted once. A letter is only sharded
when its size divides by n.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from autopar.placement import P, Placement, R, Shard
from autopar.strategies.types import AxisStrategy, OpView

Rule = Callable[[OpView, int], list[AxisStrategy]]
_LETTERS = "abcdefghijpqrstuvwxyz"


def einsum_strategies(spec: str, op: OpView, n: int, slots: tuple[int, ...]) -> list[AxisStrategy]:
    """Strategies for ``spec`` whose operands are the tensor input ``slots`` in order.

    An operand written with a leading ``+`` is additive. Slots not named get ``R``.
    """
    lhs, out = spec.split("->")
    operands = lhs.split(",")
    additive = [o.startswith("+") for o in operands]
    operands = [o.lstrip("+") for o in operands]
    size: dict[str, int] = {}
    for letters, slot in zip(operands, slots):
        for letter, s in zip(letters, op.inputs[slot].shape):
            size[letter] = s
    num_slots = len(op.inputs)

    def make(per_operand: Sequence[Placement], out_p: Placement) -> AxisStrategy:
        ins: list[Placement | None] = [R] * num_slots
        for p, slot in zip(per_operand, slots):
            ins[slot] = p
        return AxisStrategy(tuple(ins), (out_p,), split=True)

    found = [AxisStrategy(tuple([R] * num_slots), (R,), split=False)]
    for letter, s in size.items():
        if s % n or s < n:
            continue
        per: list[Placement]
        if letter in out:
            per = [Shard(o.index(letter)) if letter in o else R for o in operands]
            found.append(make(per, Shard(out.index(letter))))
        else:
            per = [
                Shard(o.index(letter)) if letter in o else (P if add else R)
                for o, add in zip(operands, additive)
            ]
            found.append(make(per, P))
    return found


def _batch(k: int) -> str:
    return _LETTERS[:k]


def linear_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """aten.linear(x, w, b?): x[..., k] @ w[n, k]^T + b[n]."""
    b = _batch(op.inputs[0].ndim - 1)
    spec = f"{b}K,NK" + (",+N" if len(op.inputs) > 2 else "") + f"->{b}N"
    return einsum_strategies(spec, op, n, tuple(range(len(op.inputs))))


def addmm_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """aten.addmm(bias, a, b): the bias broadcasts over rows."""
    bias = "+N" if op.inputs[0].ndim == 1 else "+MN"
    return einsum_strategies(f"{bias},MK,KN->MN", op, n, (0, 1, 2))


def matmul_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """aten.matmul for inputs of rank >= 2 with equal batch dims (broadcast → replicate)."""
    a, b = op.inputs[0], op.inputs[1]
    if a.ndim < 2 or b.ndim < 2 or a.shape[:-2] != b.shape[:-2]:
        return [AxisStrategy((R, R), (R,), split=False)]
    bt = _batch(a.ndim - 2)
    return einsum_strategies(f"{bt}MK,{bt}KN->{bt}MN", op, n, (0, 1))


RULES: dict[str, Rule] = {
    "mm": lambda op, n: einsum_strategies("MK,KN->MN", op, n, (0, 1)),
    "bmm": lambda op, n: einsum_strategies("BMK,BKN->BMN", op, n, (0, 1)),
    "addmm": addmm_rule,
    "linear": linear_rule,
    "matmul": matmul_rule,
    "baddbmm": lambda op, n: einsum_strategies("+BMN,BMK,BKN->BMN", op, n, (0, 1, 2)),
}

"""Sharding rules for the matmul and convolution families, written as einsum strings.

Contract: ``einsum_strategies(spec, op, n, slots)`` turns ``"mk,kn->mn"`` into the
strategies of one mesh axis of size n: a letter that appears in the output may be
sharded (every operand holding it is sharded on that dim, the output too); a contracted
letter may be sharded (the output is ``Partial``); or nothing is sharded. Operands
marked additive (a bias, ``+n``) are added to the product: they follow the output's
placement, and become ``Partial`` when the output is ``Partial`` so that the bias is
counted once; a bias that broadcasts (addmm's [N] or [1, N], baddbmm's [M, N]) is
aligned from the right and stays whole along its size-1 dims. A letter is only sharded
when its size divides by n. An operand's letters name its leading dims; dims past them
(a convolution's spatial dims) are never sharded.

- ``matmul`` broadcasts: a batch dim of one operand that the other lacks (``h @ W.t()``
  with ``h`` of shape [B, T, K] and ``W`` 2-D) is shardable like any output letter; a
  size-1 batch dim broadcast against a larger one stays whole; 1-D operands follow
  ``torch.matmul`` (prepended / appended dim removed from the output).
- convolutions (conv1d/2d/3d, conv_transpose*, convolution): ``"BI,OI,+O->BO"`` on
  (batch, channels): batch split, output-channel split (weight dim 0 and bias sharded,
  input replicated) and input-channel split (``Partial`` output); a grouped convolution
  offers the batch split only (its local ``groups`` would change).
- ``einsum(equation, operands)``: the equation itself, with ``...`` expanded; an operand
  that repeats a letter (a diagonal) or whose sizes disagree is replicated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from autopar.placement import P, Placement, R, Shard
from autopar.strategies.types import AxisStrategy, OpView, TensorMeta

Rule = Callable[[OpView, int], list[AxisStrategy]]
_LETTERS = "abcdefghijpqrstuvwxyz"
_SPARE = "ABCDEFGHIJLOPQRSTUVWXYZ"  # broadcast size-1 batch dims of matmul: never sharded
_BIAS_SPARE = "uvw"  # broadcast size-1 dims of an addmm/baddbmm bias


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


def _bias(out: str, bias: TensorMeta, out_shape: tuple[int, ...]) -> str:
    """Letters of an additive operand that broadcasts to the output ``out``: aligned from
    the right; a size-1 dim facing a larger one gets a spare letter (never sharded)."""
    letters = out[len(out) - bias.ndim :]
    tail = out_shape[len(out_shape) - bias.ndim :]
    return "".join(
        c if s == t else _BIAS_SPARE[i]
        for i, (c, s, t) in enumerate(zip(letters, bias.shape, tail))
    )


def addmm_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """aten.addmm(bias, a, b): the bias broadcasts to [M, N]."""
    bias = _bias("MN", op.inputs[0], op.out.shape)
    return einsum_strategies(f"+{bias},MK,KN->MN", op, n, (0, 1, 2))


def baddbmm_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """aten.baddbmm(bias, a, b): the bias broadcasts to [B, M, N]."""
    bias = _bias("BMN", op.inputs[0], op.out.shape)
    return einsum_strategies(f"+{bias},BMK,BKN->BMN", op, n, (0, 1, 2))


def _broadcast_batch(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[str, str, str]:
    """Letters of two batch shapes broadcast against each other, aligned from the right:
    a dim of size 1 facing a larger one gets a spare letter of its own (size 1, never
    sharded); the output holds the letters of the dims that survive."""
    nd = max(len(a), len(b))
    pa, pb = (1,) * (nd - len(a)) + a, (1,) * (nd - len(b)) + b
    la, lb, lo = [], [], []
    for i, (sa, sb) in enumerate(zip(pa, pb)):
        shared = _LETTERS[i]
        la.append(_SPARE[i] if sa == 1 and sb != 1 else shared)
        lb.append(_SPARE[len(_SPARE) - 1 - i] if sb == 1 and sa != 1 else shared)
        lo.append(shared)
    return "".join(la[nd - len(a) :]), "".join(lb[nd - len(b) :]), "".join(lo)


def matmul_spec(a: tuple[int, ...], b: tuple[int, ...]) -> str:
    """The einsum spec of ``torch.matmul`` for operand shapes ``a`` and ``b``."""
    if len(a) == 1 and len(b) == 1:
        return "K,K->"
    if len(a) == 1:
        _, bb, bo = _broadcast_batch((), b[:-2])
        return f"K,{bb}KN->{bo}N"
    if len(b) == 1:
        ba, _, bo = _broadcast_batch(a[:-2], ())
        return f"{ba}MK,K->{bo}M"
    ba, bb, bo = _broadcast_batch(a[:-2], b[:-2])
    return f"{ba}MK,{bb}KN->{bo}MN"


def matmul_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """aten.matmul with broadcasting, e.g. a tied output embedding ``h @ wte.t()``."""
    a, b = op.inputs[0], op.inputs[1]
    if a.ndim == 0 or b.ndim == 0:
        return [AxisStrategy((R, R), (R,), split=False)]
    return einsum_strategies(matmul_spec(a.shape, b.shape), op, n, (0, 1))


def conv_rule(op: OpView, n: int, groups_pos: int, transposed: bool | int) -> list[AxisStrategy]:
    """A convolution (input, weight, bias?, ...): ``transposed`` is a bool, or the
    position of the op's ``transposed`` argument (aten.convolution)."""
    x, w = op.inputs[0], op.inputs[1]
    if not isinstance(transposed, bool):
        transposed = bool(op.arg(transposed, "transposed", False))
    groups = op.arg(groups_pos, "groups", 1)
    b = "B" if x.ndim == w.ndim else ""  # an unbatched input has no batch dim
    if groups == 1:
        spec = f"{b}I,{'IO' if transposed else 'OI'},+O->{b}O"
    else:
        spec = f"{b},,+->{b}"
    if len(op.inputs) < 3:  # no bias
        spec = spec.replace(",+O", "").replace(",+", "")
    return einsum_strategies(spec, op, n, tuple(range(len(op.inputs))))


def conv_flops(op: OpView, transposed: bool) -> float:
    """FLOPs of one forward convolution: 2 per multiply-add; each output element of a
    convolution (each input element of a transposed one) meets ``weight.numel / weight.
    shape[0]`` weights."""
    x, w, out = op.inputs[0], op.inputs[1], op.out
    per = w.numel / max(w.shape[0], 1)
    return 2.0 * (x.numel if transposed else out.numel) * per


def einsum_spec(equation: str, shapes: Sequence[tuple[int, ...]]) -> str | None:
    """``equation`` with ``...`` expanded and the output made explicit; ``None`` when it
    cannot be sharded letter by letter (a repeated letter, sizes that disagree)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    operands = lhs.split(",")
    if len(operands) != len(shapes):
        return None
    used = set(eq) - set(".,->")
    spare = [c for c in _SPARE + _LETTERS if c not in used]
    ell_shapes = [
        s[o.index("...") : len(s) - (len(o) - o.index("...") - 3)] if "..." in o else ()
        for o, s in zip(operands, shapes)
    ]
    nd = max((len(e) for e in ell_shapes), default=0)
    if len(spare) < 2 * nd:
        return None
    out_ell = spare[:nd]
    expanded = []
    for o, e in zip(operands, ell_shapes):
        pad = nd - len(e)
        letters = "".join(
            out_ell[pad + i] if s != 1 else spare[nd + pad + i] for i, s in enumerate(e)
        )
        expanded.append(o.replace("...", letters))
    if not arrow:
        once = sorted(c for c in used if lhs.count(c) == 1)
        rhs = "..." * (nd > 0) + "".join(once)
    rhs = rhs.replace("...", "".join(out_ell))
    size: dict[str, int] = {}
    for o, s in zip(expanded, shapes):
        if len(o) != len(s) or len(set(o)) != len(o):
            return None
        for c, d in zip(o, s):
            if size.setdefault(c, d) != d:
                return None
    return ",".join(expanded) + "->" + rhs


def einsum_flops(op: OpView) -> float:
    """FLOPs of one einsum: 2 per multiply-add over every letter's range (its operands
    contracted pairwise); the output's size when the equation cannot be read."""
    spec = einsum_spec(str(op.arg(0, "equation")), [m.shape for m in op.inputs])
    if spec is None:
        return float(op.out.numel)
    size: dict[str, int] = {}
    for letters, m in zip(spec.split("->")[0].split(","), op.inputs):
        size.update(zip(letters, m.shape))
    total = 1
    for s in size.values():
        total *= s
    return 2.0 * total * max(len(op.inputs) - 1, 1)


def einsum_rule(op: OpView, n: int) -> list[AxisStrategy]:
    """aten.einsum(equation, [operands]): the equation is the rule."""
    shapes = [m.shape for m in op.inputs]
    spec = einsum_spec(str(op.arg(0, "equation")), shapes)
    if spec is None:
        return [AxisStrategy(tuple([R] * len(shapes)), (R,), split=False)]
    return einsum_strategies(spec, op, n, tuple(range(len(shapes))))


RULES: dict[str, Rule] = {
    "mm": lambda op, n: einsum_strategies("MK,KN->MN", op, n, (0, 1)),
    "bmm": lambda op, n: einsum_strategies("BMK,BKN->BMN", op, n, (0, 1)),
    "addmm": addmm_rule,
    "linear": linear_rule,
    "matmul": matmul_rule,
    "baddbmm": baddbmm_rule,
    "mv": lambda op, n: einsum_strategies("MK,K->M", op, n, (0, 1)),
    "dot": lambda op, n: einsum_strategies("K,K->", op, n, (0, 1)),
    "einsum": einsum_rule,
}

# op -> (position of ``groups``, transposed: a bool or the position of the flag)
_CONV: dict[str, tuple[int, bool | int]] = {
    "conv1d": (6, False),
    "conv2d": (6, False),
    "conv3d": (6, False),
    "conv_transpose1d": (6, True),
    "conv_transpose2d": (6, True),
    "conv_transpose3d": (6, True),
    "convolution": (8, 6),
    "_convolution": (8, 6),
}
CONV_RULES: dict[str, Rule] = {
    name: partial(conv_rule, groups_pos=g, transposed=t) for name, (g, t) in _CONV.items()
}

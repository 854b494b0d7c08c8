"""The one registry of op sharding rules: op family -> rule.

Contract: ``lookup(target, op=None)`` returns ``(family, rule)`` where ``rule(op, n)``
lists the ``AxisStrategy``s of a node on one mesh axis of size n. An op with no rule gets
the replicate-only rule, family ``"unknown"``, and the caller warns once naming it
(``unknown_name``). So does an op, given as ``op``, that touches a tensor of a dtype the
rules do not reason about (``unusual_dtypes``: complex, float8, sub-byte, quantized):
such tensors are never split, reduced or moved, whatever the op.
Ops listed under ``replicate`` have a rule: they are known to need whole tensors.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import partial
from typing import Any

from autopar.placement import Shard
from autopar.strategies import rules_linear, rules_nn, rules_pointwise, rules_view
from autopar.strategies.rules_linear import Rule
from autopar.strategies.types import AxisStrategy, OpView

# dtypes the rules reason about: real floats, integers and bool
USUAL_DTYPES = frozenset(
    "bool uint8 int8 int16 int32 int64 float16 bfloat16 float32 float64".split()
)

POINTWISE = """
add sub mul div neg abs exp log log1p sqrt rsqrt pow tanh sigmoid relu gelu silu erf sin cos
clone alias contiguous to _to_copy detach lift_fresh_copy type_as dropout where masked_fill
eq ne lt le gt ge logical_and logical_or logical_not bitwise_and bitwise_or bitwise_not
__and__ __or__ minimum maximum clamp clamp_min clamp_max reciprocal square zeros_like ones_like
full_like empty_like sign floor ceil round trunc fmod remainder bitwise_xor logical_xor
expm1 sinh cosh atan asin acos softplus hardtanh leaky_relu elu mish hardswish hardsigmoid
""".split()

DIM_EXCLUSIVE = {  # op -> (position, name, default) of the dim it works along
    "softmax": (1, "dim", -1),
    "_softmax": (1, "dim", -1),
    "log_softmax": (1, "dim", -1),
    "_log_softmax": (1, "dim", -1),
    "cumsum": (1, "dim", -1),
    "cumprod": (1, "dim", -1),
    "diff": (2, "dim", -1),  # diff(input, n=1, dim=-1, prepend, append)
    "argmax": (1, "dim", None),  # no dim: over the flattened tensor
    "argmin": (1, "dim", None),
}
REDUCES_DIM = {"argmax", "argmin"}  # the dim leaves the output unless keepdim

REPLICATE = """
arange full zeros ones empty scalar_tensor new_ones new_zeros new_full new_empty rand randn
randint index index_select gather scatter scatter_add index_put nonzero sort topk masked_select
repeat tril triu flip roll one_hot bincount _unique2 unique_dim unique_consecutive
nll_loss_forward nll_loss2d_forward
""".split()


def _pad_rule(op: OpView, n: int) -> list[AxisStrategy]:
    x = op.inputs[0]
    padded = len(op.arg(1, "pad")) // 2
    found = rules_nn.replicate_rule(op, n)
    for d in range(x.ndim - padded):
        if op.out.shape[d] % n == 0 and op.out.shape[d] >= n:
            found.append(AxisStrategy((Shard(d),), (Shard(d),), split=True))
    return found


def _build() -> dict[str, tuple[str, Rule]]:
    table: dict[str, tuple[str, Rule]] = {}
    for name, rule in rules_linear.RULES.items():
        table[name] = ("matmul", rule)
    for name, rule in rules_linear.CONV_RULES.items():
        table[name] = ("conv", rule)
    for name, rule in rules_view.RULES.items():
        table[name] = ("view", rule)
    for name, rule in rules_nn.RULES.items():
        table[name] = ("loss" if "loss" in name else name, rule)
    for name in POINTWISE:
        table[name] = ("pointwise", partial(rules_pointwise.pointwise_rule, name=name))
    for name in ("sum", "mean"):
        table[name] = ("reduction", partial(rules_pointwise.reduction_rule, name=name))
    for name, (pos, arg, default) in DIM_EXCLUSIVE.items():
        rule = partial(
            rules_pointwise.dim_exclusive_rule, dim_pos=pos, dim_name=arg, default=default,
            reduces=name in REDUCES_DIM,
        )  # fmt: skip
        table[name] = ("dim-exclusive", rule)
    table["broadcast_tensors"] = ("pointwise", rules_pointwise.broadcast_tensors_rule)
    for name in ("layer_norm", "rms_norm"):
        table[name] = ("norm", rules_pointwise.norm_rule)
    for name in ("pad", "constant_pad_nd"):
        table[name] = ("pad", _pad_rule)
    for name in REPLICATE:
        table[name] = ("replicate", rules_nn.replicate_rule)
    return table


def op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(packet.__name__)
    return str(getattr(target, "__name__", target))


class Registry:
    """Rule lookup; build once per planning run (no module-level mutable state)."""

    def __init__(self) -> None:
        self._table = _build()

    def lookup(self, target: Any, op: OpView | None = None) -> tuple[str, Rule]:
        name = op_name(target)
        if op is not None and unusual_dtypes(op):
            return "unknown", rules_nn.replicate_rule
        if name in self._table:
            return self._table[name]
        return "unknown", rules_nn.replicate_rule

    def unknown_name(self, target: Any, op: OpView | None = None) -> str:
        """How a replicated op is named in warnings: ``fft_fft``, or ``abs on complex64``
        when it has a rule that does not apply to its dtypes."""
        name = op_name(target)
        odd = unusual_dtypes(op) if op is not None else []
        return f"{name} on {', '.join(odd)}" if odd else name

    def families(self) -> dict[str, str]:
        return {name: fam for name, (fam, _) in self._table.items()}


def unusual_dtypes(op: OpView) -> list[str]:
    """Names of the dtypes among ``op``'s tensors that the rules do not reason about."""
    names = {str(m.dtype).removeprefix("torch.") for m in (*op.inputs, *op.outputs)}
    return sorted(names - USUAL_DTYPES)


RuleFn = Callable[[OpView, int], list[AxisStrategy]]

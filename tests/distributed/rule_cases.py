"""The op cases the rule-conformance test runs: every op name in the rule registry, on
sampled shapes (broadcasting, sizes that do not divide by 2, every dim, 0-d tensors).

Contract: ``cases()`` returns ``Case``s; ``case.build()`` returns ``(args, kwargs)`` with
real tensors (fp64 floats), the same on every rank (seeded from the case id). ``values``
is False for ops whose output values are unspecified (``empty``): only shapes are
compared. Random ops are run under the same seed as the reference, so a replicated
strategy reproduces it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

aten = torch.ops.aten
F64 = torch.float64


@dataclass(frozen=True)
class Case:
    id: str
    target: Any  # an OpOverload
    make: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]
    values: bool = True
    frozen: tuple[int, ...] = ()  # input slots that take no gradient (a class weight)

    @property
    def seed(self) -> int:
        return zlib.crc32(self.id.encode())

    def build(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        torch.manual_seed(self.seed)
        return self.make()


def x(*shape: int) -> torch.Tensor:
    return torch.randn(shape, dtype=F64)


def pos(*shape: int) -> torch.Tensor:  # positive, away from 0
    return torch.rand(shape, dtype=F64) + 0.5


def unit(*shape: int) -> torch.Tensor:  # inside (-0.9, 0.9)
    return (torch.rand(shape, dtype=F64) - 0.5) * 1.8


def i(high: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, high, shape)


def i3(*shape: int) -> torch.Tensor:
    return i(3, *shape)


def i7(*shape: int) -> torch.Tensor:
    return i(7, *shape)


def b(*shape: int) -> torch.Tensor:
    return torch.rand(shape) > 0.5


def mask(*shape: int) -> torch.Tensor:  # an attention mask: every query sees its first key
    m = b(*shape)
    m[..., 0] = True
    return m


def _mk(fn: Callable[[], Any]) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    """``fn`` returns args (a tuple), or (args, kwargs)."""

    def make() -> tuple[tuple[Any, ...], dict[str, Any]]:
        out = fn()
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            return tuple(out[0]), out[1]
        return tuple(out), {}

    return make


Entry = tuple[Any, ...]  # (op overload name, args maker[, frozen slots])

UNARY_SHAPES = [(4, 6), (3, 5, 2), (6,), ()]
UNARY = {  # op -> input maker
    **{n: x for n in "neg abs exp tanh sigmoid relu gelu silu erf sin cos clone alias".split()},
    **{n: x for n in "contiguous detach lift_fresh_copy square sign floor ceil round".split()},
    **{n: x for n in "trunc expm1 sinh cosh atan softplus hardtanh leaky_relu elu mish".split()},
    **{n: x for n in "hardswish hardsigmoid zeros_like ones_like".split()},
    **{n: pos for n in "log log1p sqrt rsqrt reciprocal".split()},
    **{n: unit for n in "asin acos".split()},
}
BINARY_SHAPES = [((4, 6), (4, 6)), ((4, 6), (6,)), ((4, 1), (1, 6)), ((2, 3, 4), (3, 1))]
BINARY_SHAPES += [((4, 6), ()), ((3, 5), (3, 5))]


BINARY = {  # op overload -> (left maker, right maker)
    "add.Tensor": (x, x), "sub.Tensor": (x, x), "mul.Tensor": (x, x), "div.Tensor": (x, pos),
    "pow.Tensor_Tensor": (pos, x), "minimum.default": (x, x), "maximum.default": (x, x),
    "fmod.Tensor": (x, pos), "remainder.Tensor": (x, pos), "eq.Tensor": (i3, i3),
    "ne.Tensor": (i3, i3), "lt.Tensor": (x, x), "le.Tensor": (x, x), "gt.Tensor": (x, x),
    "ge.Tensor": (x, x), "logical_and.default": (b, b), "logical_or.default": (b, b),
    "logical_xor.default": (b, b), "bitwise_and.Tensor": (i7, i7),
    "bitwise_or.Tensor": (i7, i7), "bitwise_xor.Tensor": (i7, i7),
    "__and__.Tensor": (b, b), "__or__.Tensor": (b, b), "type_as.default": (x, x),
}  # fmt: skip


def _op(name: str) -> Any:
    packet, _, overload = name.partition(".")
    return getattr(getattr(aten, packet), overload or "default")


def _elementwise() -> list[Entry]:
    found: list[Entry] = []
    for name, maker in UNARY.items():
        for shape in UNARY_SHAPES:
            found.append((f"{name}.default", lambda m=maker, s=shape: (m(*s),)))
    for name, (left, right) in BINARY.items():
        for sa, sb in BINARY_SHAPES:
            found.append((name, lambda f=left, g=right, sa=sa, sb=sb: (f(*sa), g(*sb))))
    s = (4, 6)
    found += [
        ("add.Tensor", lambda: ((x(*s), x(*s)), {"alpha": 2.0})),
        ("mul.Tensor", lambda: (x(*s), 2.5)),
        ("div.Tensor_mode", lambda: ((x(*s), pos(*s)), {"rounding_mode": "floor"})),
        ("pow.Tensor_Scalar", lambda: (x(*s), 2)),
        ("where.self", lambda: (b(*s), x(*s), x(6))),
        ("where.self", lambda: (b(4, 1), x(*s), x(*s))),
        ("masked_fill.Scalar", lambda: (x(*s), b(*s), 0.5)),
        ("masked_fill.Scalar", lambda: (x(2, 3, 4), b(3, 1), -1.0)),
        ("clamp.default", lambda: (x(*s), -0.5, 0.5)),
        ("clamp_min.default", lambda: (x(*s), 0.1)),
        ("clamp_max.default", lambda: (x(3, 5), 0.1)),
        ("to.dtype", lambda: (x(*s), torch.float32)),
        ("_to_copy.default", lambda: ((x(2, 3, 4),), {"dtype": torch.float32})),
        ("dropout.default", lambda: (x(*s), 0.5, False)),
        ("full_like.default", lambda: (x(*s), 2.0)),
        ("empty_like.default", lambda: (x(*s),)),
        ("logical_not.default", lambda: (b(*s),)),
        ("bitwise_not.default", lambda: (i(7, *s),)),
        ("round.decimals", lambda: ((x(*s),), {"decimals": 1})),
        ("broadcast_tensors.default", lambda: ([x(4, 1), x(1, 6)],)),
        ("broadcast_tensors.default", lambda: ([x(2, 3, 4), x(4), x(3, 1)],)),
    ]
    return found


def _reductions() -> list[Entry]:
    return [
        ("sum.default", lambda: (x(4, 6),)),
        ("sum.dim_IntList", lambda: (x(4, 6), [1])),
        ("sum.dim_IntList", lambda: (x(4, 3, 6), [0, 2], True)),
        ("sum.dim_IntList", lambda: (x(3, 4), [-1])),
        ("sum.dim_IntList", lambda: (b(4, 6), [0])),
        ("mean.default", lambda: (x(4, 6),)),
        ("mean.dim", lambda: (x(4, 6, 2), [-1])),
        ("mean.dim", lambda: (x(4, 6), [0], True)),
        ("_softmax.default", lambda: (x(4, 6), -1, False)),
        ("softmax.int", lambda: (x(2, 4, 6), 1)),
        ("_log_softmax.default", lambda: (x(4, 6), 1, False)),
        ("log_softmax.int", lambda: (x(4, 3, 6), 0)),
        ("cumsum.default", lambda: (x(4, 6), 1)),
        ("cumprod.default", lambda: (x(2, 4, 6), 0)),
        ("diff.default", lambda: (x(4, 6, 2), 1, 1)),
        ("diff.default", lambda: (x(4, 6, 2), 1, 0)),
        ("diff.default", lambda: (x(4, 6, 2), 1, 2, x(4, 6, 1))),
        ("argmax.default", lambda: (x(4, 6),)),
        ("argmax.default", lambda: (x(2, 3, 4, 6), 1)),
        ("argmax.default", lambda: (x(4, 6, 2), 1, True)),
        ("argmin.default", lambda: (x(2, 6, 4), 0)),
        ("layer_norm.default", lambda: (x(4, 6, 8), [8], x(8), x(8), 1e-5)),
        ("layer_norm.default", lambda: (x(4, 6, 8), [6, 8], x(6, 8), x(6, 8), 1e-5)),
        ("layer_norm.default", lambda: (x(3, 8), [8])),
        ("rms_norm.default", lambda: (x(4, 6, 8), [8], x(8), 1e-6)),
        ("constant_pad_nd.default", lambda: (x(4, 6), [1, 2])),
        ("constant_pad_nd.default", lambda: (x(4, 6, 2), [1, 1, 2, 0], 0.5)),
        ("pad.default", lambda: (x(2, 4, 6), [1, 1], "reflect")),
    ]


def _views() -> list[Entry]:
    return [
        ("view.default", lambda: (x(4, 6), [2, 2, 6])),
        ("view.default", lambda: (x(4, 6), [24])),
        ("view.default", lambda: (x(2, 3, 4), [6, 4])),
        ("_unsafe_view.default", lambda: (x(4, 16), [4, 4, 4])),
        ("reshape.default", lambda: (x(4, 2, 6), [4, 12])),
        ("flatten.using_ints", lambda: (x(2, 4, 6), 1, 2)),
        ("transpose.int", lambda: (x(4, 6), 0, 1)),
        ("transpose.int", lambda: (x(2, 4, 6), 1, -1)),
        ("t.default", lambda: (x(4, 6),)),
        ("t.default", lambda: (x(6),)),
        ("permute.default", lambda: (x(2, 4, 6), [2, 0, 1])),
        ("unsqueeze.default", lambda: (x(4, 6), 1)),
        ("unsqueeze.default", lambda: (x(4, 6), -1)),
        ("squeeze.dim", lambda: (x(4, 1, 6), 1)),
        ("squeeze.default", lambda: (x(1, 4, 1, 6),)),
        ("squeeze.dims", lambda: (x(4, 1, 6, 1), [1, 3])),
        ("expand.default", lambda: (x(4, 1), [4, 6])),
        ("expand.default", lambda: (x(6), [4, 6])),
        ("expand.default", lambda: (x(1, 6), [2, 4, -1])),
        ("slice.Tensor", lambda: (x(4, 6), 1, 0, 4)),
        ("slice.Tensor", lambda: (x(4, 6), 0, 1, 3)),
        ("slice.Tensor", lambda: (x(4, 6, 2), 1, 0, 6, 2)),
        ("narrow.default", lambda: (x(4, 6), 1, 1, 3)),
        ("select.int", lambda: (x(4, 6), 0, 1)),
        ("select.int", lambda: (x(4, 6, 2), 1, 2)),
        ("split.Tensor", lambda: (x(4, 6), 2, 1)),
        ("split.Tensor", lambda: (x(5, 4), 3, 0)),
        ("split_with_sizes.default", lambda: (x(4, 6), [2, 4], 1)),
        ("unbind.int", lambda: (x(3, 4, 6), 0)),
        ("unbind.int", lambda: (x(4, 3, 6), 1)),
        ("cat.default", lambda: ([x(4, 6), x(4, 2)], 1)),
        ("cat.default", lambda: ([x(4, 6), x(2, 6)],)),
        ("cat.default", lambda: ([x(2, 4, 6), x(2, 4, 6), x(2, 4, 6)], -1)),
        ("stack.default", lambda: ([x(4, 6), x(4, 6)],)),
        ("stack.default", lambda: ([x(4, 6), x(4, 6)], 2)),
    ]


def _linear() -> list[Entry]:
    return [
        ("mm.default", lambda: (x(4, 6), x(6, 8))),
        ("mm.default", lambda: (x(3, 6), x(6, 5))),
        ("bmm.default", lambda: (x(2, 4, 6), x(2, 6, 8))),
        ("addmm.default", lambda: (x(8), x(4, 6), x(6, 8))),
        ("addmm.default", lambda: (x(4, 8), x(4, 6), x(6, 8))),
        ("addmm.default", lambda: ((x(1, 8), x(4, 6), x(6, 8)), {"beta": 0.5, "alpha": 2.0})),
        ("baddbmm.default", lambda: (x(2, 4, 8), x(2, 4, 6), x(2, 6, 8))),
        ("baddbmm.default", lambda: (x(4, 8), x(2, 4, 6), x(2, 6, 8))),
        ("linear.default", lambda: (x(2, 4, 6), x(8, 6), x(8))),
        ("linear.default", lambda: (x(4, 6), x(8, 6))),
        ("linear.default", lambda: (x(6), x(8, 6), x(8))),
        ("linear.default", lambda: (x(3, 5), x(7, 5), x(7))),
        ("matmul.default", lambda: (x(2, 4, 6), x(6, 10))),  # h @ wte.weight.t()
        ("matmul.default", lambda: (x(2, 3, 4, 6), x(6, 8))),
        ("matmul.default", lambda: (x(4, 6), x(2, 6, 8))),
        ("matmul.default", lambda: (x(2, 4, 4, 6), x(2, 4, 6, 8))),
        ("matmul.default", lambda: (x(2, 1, 4, 6), x(4, 6, 8))),
        ("matmul.default", lambda: (x(6), x(2, 6, 8))),
        ("matmul.default", lambda: (x(2, 4, 6), x(6))),
        ("matmul.default", lambda: (x(6), x(6))),
        ("mv.default", lambda: (x(4, 6), x(6))),
        ("dot.default", lambda: (x(6), x(6))),
        ("einsum.default", lambda: ("bij,bjk->bik", [x(2, 4, 6), x(2, 6, 8)])),
        ("einsum.default", lambda: ("...ij,jk->...ik", [x(2, 3, 4, 6), x(6, 8)])),
        ("einsum.default", lambda: ("...ij,...jk", [x(1, 4, 6), x(2, 6, 8)])),
        ("einsum.default", lambda: ("bhqd,bhkd->bhqk", [x(2, 2, 4, 6), x(2, 2, 6, 6)])),
        ("einsum.default", lambda: ("ij->", [x(4, 6)])),
        ("einsum.default", lambda: ("ii->i", [x(4, 4)])),
        ("einsum.default", lambda: ("i,j->ij", [x(4), x(6)])),
    ]


def _conv() -> list[Entry]:
    return [
        ("conv2d.default", lambda: (x(2, 4, 5, 5), x(6, 4, 3, 3), x(6), [1, 1], [1, 1])),
        ("conv2d.default", lambda: (x(2, 4, 5, 5), x(6, 4, 3, 3))),
        ("conv2d.default", lambda: (x(2, 4, 5, 5), x(6, 2, 3, 3), x(6), [1], [0], [1], 2)),
        ("conv2d.default", lambda: (x(3, 3, 6, 6), x(4, 3, 2, 2), x(4), [2, 2])),
        ("conv2d.padding", lambda: (x(2, 4, 5, 5), x(6, 4, 3, 3), x(6), [1, 1], "same")),
        ("conv1d.default", lambda: (x(4, 2, 7), x(4, 2, 3), x(4))),
        ("conv1d.default", lambda: (x(2, 7), x(4, 2, 3), x(4))),
        ("conv3d.default", lambda: (x(2, 2, 3, 3, 3), x(4, 2, 2, 2, 2), x(4))),
        ("conv_transpose1d.default", lambda: (x(2, 4, 5), x(4, 6, 3), x(6), [2])),
        ("conv_transpose2d.input", lambda: (x(2, 4, 3, 3), x(4, 6, 3, 3), x(6), [2, 2])),
        ("conv_transpose3d.input", lambda: (x(2, 2, 2, 2, 2), x(2, 4, 2, 2, 2))),
        (
            "convolution.default",
            lambda: (x(2, 4, 5, 5), x(6, 4, 3, 3), x(6), [1, 1], [1, 1], [1, 1], False, [0, 0], 1),
        ),
        (
            "convolution.default",
            lambda: (x(2, 4, 3, 3), x(4, 6, 2, 2), x(6), [2, 2], [0, 0], [1, 1], True, [0, 0], 1),
        ),
        (
            "_convolution.default",
            lambda: (x(2, 4, 5), x(6, 4, 3), None, [1], [0], [1], False, [0], 1) + _CONV_FLAGS,
        ),
    ]


_CONV_FLAGS = (False, False, False, False)  # benchmark, deterministic, cudnn, tf32


def _nn() -> list[Entry]:
    ids = [[1, 3, -100, 2], [0, -100, -100, 9]]
    return [
        ("embedding.default", lambda: (x(10, 6), i(10, 4, 5))),
        ("embedding.default", lambda: (x(9, 6), i(9, 3))),
        ("embedding.default", lambda: (x(10, 5), i(10, 4), 0)),
        (
            "scaled_dot_product_attention.default",
            lambda: (x(2, 4, 6, 8), x(2, 4, 6, 8), x(2, 4, 6, 8)),
        ),
        (
            "scaled_dot_product_attention.default",
            lambda: ((x(2, 4, 6, 8), x(2, 4, 6, 8), x(2, 4, 6, 8)), {"is_causal": True}),
        ),
        (
            "scaled_dot_product_attention.default",
            lambda: (x(2, 4, 6, 8), x(2, 4, 4, 8), x(2, 4, 4, 8), mask(6, 4)),
        ),
        (
            "scaled_dot_product_attention.default",
            lambda: (x(2, 4, 6, 8), x(2, 4, 6, 8), x(2, 4, 6, 8), x(2, 1, 6, 6)),
        ),
        (
            "scaled_dot_product_attention.default",
            lambda: ((x(2, 4, 6, 8), x(2, 2, 6, 8), x(2, 2, 6, 8)), {"enable_gqa": True}),
        ),
        (
            "scaled_dot_product_attention.default",
            lambda: (x(3, 3, 5, 4), x(3, 3, 5, 4), x(3, 3, 5, 4)),
        ),
        ("cross_entropy_loss.default", lambda: (x(4, 10), i(10, 4))),
        ("cross_entropy_loss.default", lambda: (x(4, 10), i(10, 4), None, 2)),
        ("cross_entropy_loss.default", lambda: (x(4, 10), i(10, 4), None, 0)),
        ("cross_entropy_loss.default", lambda: (x(2, 10, 4), torch.tensor(ids))),
        ("cross_entropy_loss.default", lambda: (x(4, 10), x(4, 10).softmax(-1))),
        ("cross_entropy_loss.default", lambda: (x(4, 10), i(10, 4), None, 1, -100, 0.1)),
        ("cross_entropy_loss.default", lambda: (x(4, 10), i(10, 4), pos(10)), (2,)),
        ("mse_loss.default", lambda: (x(4, 6), x(4, 6))),
        ("mse_loss.default", lambda: (x(4, 6), x(4, 6), 0)),
        ("mse_loss.default", lambda: (x(3, 6), x(3, 6), 2)),
        ("l1_loss.default", lambda: (x(4, 6), x(4, 6))),
        ("smooth_l1_loss.default", lambda: (x(4, 6), x(4, 6), 1, 0.5)),
        ("huber_loss.default", lambda: (x(4, 6), x(4, 6), 2, 0.5)),
    ]


def _replicated() -> list[Entry]:
    logp = lambda *s: x(*s).log_softmax(1)  # noqa: E731
    return [
        ("arange.default", lambda: ((6,), {"dtype": F64})),
        ("arange.start_step", lambda: (0, 10, 3)),
        ("full.default", lambda: ([2, 3], 1.5)),
        ("zeros.default", lambda: ([2, 3],)),
        ("ones.default", lambda: ([2, 3],)),
        ("scalar_tensor.default", lambda: (2.0,)),
        ("rand.default", lambda: ([4, 6],)),
        ("randn.default", lambda: ([4, 6],)),
        ("randint.default", lambda: (10, [4, 6])),
        ("new_ones.default", lambda: (x(4, 6), [2, 3])),
        ("new_zeros.default", lambda: (x(4, 6), [2, 3])),
        ("new_full.default", lambda: (x(4, 6), [2, 3], 3.0)),
        ("index.Tensor", lambda: (x(4, 6), [i(4, 5)])),
        ("index.Tensor", lambda: (x(4, 6), [None, i(6, 2, 3)])),
        ("index_select.default", lambda: (x(4, 6), 1, i(6, 5))),
        ("gather.default", lambda: (x(4, 6), 1, i(6, 4, 3))),
        (
            "scatter.src",
            lambda: (x(4, 6), 1, torch.tensor([[0, 1], [2, 3], [4, 5], [1, 0]]), x(4, 2)),
        ),
        ("scatter_add.default", lambda: (x(4, 6), 1, i(6, 4, 3), x(4, 3))),
        ("index_put.default", lambda: (x(4, 6), [torch.tensor([0, 2])], x(2, 6))),
        ("index_put.default", lambda: (x(4, 6), [i(4, 3)], x(3, 6), True)),
        ("nonzero.default", lambda: (b(4, 6),)),
        ("sort.default", lambda: (x(4, 6), 1)),
        ("topk.default", lambda: (x(4, 6), 2)),
        ("masked_select.default", lambda: (x(4, 6), b(4, 6))),
        ("repeat.default", lambda: (x(4, 6), [2, 1])),
        ("tril.default", lambda: (x(4, 6),)),
        ("triu.default", lambda: (x(4, 6), 1)),
        ("flip.default", lambda: (x(4, 6), [0])),
        ("roll.default", lambda: (x(4, 6), [1], [0])),
        ("one_hot.default", lambda: (i(10, 4), 10)),
        ("bincount.default", lambda: (i(7, 10),)),
        ("_unique2.default", lambda: (i(5, 10), True, True, True)),
        ("unique_dim.default", lambda: (i(3, 6, 2), 0)),
        ("unique_consecutive.default", lambda: (i(3, 10),)),
        ("nll_loss_forward.default", lambda: (logp(4, 10), i(10, 4), None, 1, -100)),
        ("nll_loss2d_forward.default", lambda: (logp(2, 10, 3, 3), i(10, 2, 3, 3), None, 1, -100)),
    ]


_UNSPECIFIED = {"empty.memory_format", "new_empty.default", "empty_like.default"}


def cases() -> list[Case]:
    groups: list[list[Entry]] = [
        _elementwise(), _reductions(), _views(), _linear(), _conv(), _nn(), _replicated(),
    ]  # fmt: skip
    groups.append(
        [
            ("empty.memory_format", lambda: ([2, 3],)),
            ("new_empty.default", lambda: (x(4, 6), [2, 3])),
        ]
    )
    found: list[Case] = []
    seen: dict[str, int] = {}
    for group in groups:
        for name, fn, *frozen in group:
            k = seen[name] = seen.get(name, -1) + 1
            values = name not in _UNSPECIFIED
            found.append(Case(f"{name}[{k}]", _op(name), _mk(fn), values, *frozen))
    return found

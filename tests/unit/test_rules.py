"""Sharding rules, the rule registry and the joint-strategy enumerator."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

from autopar.capture import capture
from autopar.mesh import MeshSpec
from autopar.placement import P, Partial, R, Replicate, Shard
from autopar.solve.graph import build_graph
from autopar.solve.planner import make_plan
from autopar.strategies.enumerate import node_strategies
from autopar.strategies.registry import Registry
from autopar.strategies.rules_view import reshape_dim_map
from autopar.strategies.types import Arg, OpView, TensorMeta

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

F32 = torch.float32
aten = torch.ops.aten


def _mm_view(m: int, k: int, n: int) -> OpView:
    a, b = TensorMeta((m, k), F32), TensorMeta((k, n), F32)
    out = TensorMeta((m, n), F32)
    return OpView(aten.mm.default, (Arg(0, a), Arg(1, b)), {}, (a, b), (out,))


def _strategies(op: OpView, sizes: tuple[int, ...]):
    family, rule = Registry().lookup(op.target)
    return family, node_strategies(op, sizes, rule)


def test_mm_offers_the_four_megatron_strategies():
    family, strategies = _strategies(_mm_view(4, 6, 8), (2,))
    assert family == "matmul"
    found = {(s.ins, s.outs) for s in strategies}
    s0, s1 = Shard(0), Shard(1)
    expected = {
        (((s0,), (R,)), ((s0,),)),  # S(0) x R -> S(0): rows
        (((R,), (s1,)), ((s1,),)),  # R x S(1) -> S(1): columns
        (((s1,), (s0,)), ((P,),)),  # S(1) x S(0) -> P: contraction
        (((R,), (R,)), ((R,),)),  # replicated
    }
    # m, k and n all divide by 2, so these four and nothing else
    assert found == expected
    by_key = {(s.ins, s.outs): s for s in strategies}
    assert by_key[(((R,), (R,)), ((R,),))].compute_div == 1
    for key in expected - {(((R,), (R,)), ((R,),))}:
        assert by_key[key].compute_div == 2


def test_size_three_dim_is_never_sharded_on_two_way_axis():
    _, strategies = _strategies(_mm_view(3, 6, 8), (2,))
    for s in strategies:
        assert s.ins[0][0] != Shard(0), s  # m = 3
        assert s.outs[0][0] != Shard(0), s
    # k = 6 and n = 8 still shard
    assert any(s.outs[0] == (Shard(1),) for s in strategies)
    assert any(s.outs[0] == (P,) for s in strategies)
    _, strategies = _strategies(_mm_view(4, 3, 3), (2,))
    assert {(s.ins, s.outs) for s in strategies} == {
        (((R,), (R,)), ((R,),)),
        (((Shard(0),), (R,)), ((Shard(0),),)),
    }


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))).square().mean()


def _check_divides(shape, layout, sizes):
    factor: dict[int, int] = {}
    for p, n in zip(layout, sizes, strict=True):
        if isinstance(p, Shard):
            assert p.dim < len(shape), (shape, layout)
            factor[p.dim] = factor.get(p.dim, 1) * n
    for d, f in factor.items():
        assert shape[d] % f == 0 and shape[d] >= f, (shape, layout, sizes)


def test_planning_with_odd_dims_works():
    captured = capture(_Odd(), (torch.randn(3, 3),))
    mesh = MeshSpec.of({"x": 2})
    graph = build_graph(captured, mesh)
    plan = make_plan(captured, mesh, "auto")
    assert plan.predicted.solve_status in ("optimal", "trivial")
    for node in plan.nodes:
        g = graph.nodes[node.name]
        in_metas = g.op.inputs if g.op is not None else ()
        for meta, lay in zip(in_metas, node.ins, strict=True):
            _check_divides(meta.shape, lay, mesh.sizes)
        for meta, lay in zip(g.out_metas, node.outs, strict=True):
            _check_divides(meta.shape, lay, mesh.sizes)
    # every dim of size 3 stays whole
    x_node = next(n for n in plan.nodes if n.kind == "input")
    assert x_node.outs[0] == (R,)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((4, 6), (24,), {0: 0}),  # dim 1 lands mid-row of the flat vector
        ((2, 3, 4), (6, 4), {0: 0, 2: 1}),  # dims 0 and 1 merge; dim 1 is interior
        ((6, 4), (4, 6), {0: 0}),  # the leading chunk stays leading; dim 1 does not survive
        ((4, 16, 64), (4, 16, 4, 16), {0: 0, 1: 1, 2: 2}),  # head split: 64 -> 4 x 16
        ((4, 16, 4, 16), (4, 16, 64), {0: 0, 1: 1, 2: 2}),  # and back
        ((1, 4), (4,), {1: 0}),  # a size-1 dim is never mapped
        ((8,), (2, 4), {0: 0}),
    ],
)
def test_reshape_dim_map(a, b, expected):
    assert reshape_dim_map(a, b) == expected


def test_reshape_dim_map_chunks_are_contiguous():
    """Brute force: for every mapped d -> j and every n dividing both sizes, rank r's
    elements under Shard(d) of ``a`` are exactly rank r's under Shard(j) of ``b``."""
    shapes = [
        ((4, 6), (24,)),
        ((2, 3, 4), (6, 4)),
        ((6, 4), (4, 6)),
        ((4, 16, 8), (4, 16, 2, 4)),
        ((2, 6, 4), (2, 4, 6)),
        ((3, 4, 2), (12, 2)),
    ]
    for a, b in shapes:
        flat = torch.arange(int(torch.tensor(a).prod()))
        for d, j in reshape_dim_map(a, b).items():
            for n in (2, 3, 4):
                if a[d] % n or b[j] % n:
                    continue
                xa, xb = flat.reshape(a), flat.reshape(b)
                for r in range(n):
                    pa = xa.chunk(n, dim=d)[r].flatten().sort().values
                    pb = xb.chunk(n, dim=j)[r].flatten().sort().values
                    assert torch.equal(pa, pb), (a, b, d, j, n, r)


class _Bessel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(self.lin(x)).sum()


def test_unknown_op_is_replicate_only_and_warned():
    registry = Registry()
    assert "special_bessel_j0" not in registry.families()
    family, rule = registry.lookup(aten.special_bessel_j0.default)
    assert family == "unknown"
    meta = TensorMeta((4, 8), F32)
    op = OpView(aten.special_bessel_j0.default, (Arg(0, meta),), {}, (meta,), (meta,))
    for s in node_strategies(op, (2, 2), rule):
        assert all(isinstance(p, Replicate) for lay in (*s.ins, *s.outs) for p in lay)
        assert s.compute_div == 1

    captured = capture(_Bessel(), (torch.randn(4, 8),))
    mesh = MeshSpec.of({"x": 2})
    graph = build_graph(captured, mesh)
    assert graph.unknown_ops == ["special_bessel_j0"]
    bessel = [n for n in graph.nodes.values() if n.target == "special_bessel_j0"]
    assert len(bessel) == 1
    assert all(
        isinstance(p, Replicate)
        for s in bessel[0].strategies
        for lay in (*s.ins, *s.outs)
        for p in lay
    )
    with pytest.warns(UserWarning, match="special_bessel_j0"):
        plan = make_plan(captured, mesh, "auto")
    assert plan.unknown_ops == ("special_bessel_j0",)
    assert "special_bessel_j0" in plan.summary()


@functools.cache
def _gpt2_graph(axes: tuple[tuple[str, int], ...]):
    from autopar.zoo import gpt2

    model, args, kwargs = gpt2.build("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_graph(capture(model, args, kwargs), MeshSpec(axes))


def _metas(node):
    ins = node.op.inputs if node.op is not None else ()
    return ins, node.out_metas


def test_every_gpt2_strategy_divides_on_two_axes():
    graph = _gpt2_graph((("a", 2), ("b", 2)))
    sizes = graph.mesh.sizes
    seen_double = False
    for node in graph.nodes.values():
        assert node.strategies, node.name
        ins, outs = _metas(node)
        for s in node.strategies:
            assert len(s.ins) == len(ins) and len(s.outs) == len(outs)
            for meta, lay in (*zip(ins, s.ins), *zip(outs, s.outs)):
                assert len(lay) == 2
                _check_divides(meta.shape, lay, sizes)
                if isinstance(lay[0], Shard) and lay[0] == lay[1]:
                    seen_double = True  # one dim split 4 ways
    assert seen_double
    # the op graph has sharded options at all (not everything replicated)
    linear = [n for n in graph.nodes.values() if n.family == "matmul"]
    assert linear and all(len(n.strategies) > 4 for n in linear)


@pytest.mark.parametrize("axes", [(("x", 2),), (("a", 2), ("b", 2))])
def test_gradient_layout_law(axes):
    """enumerate.py: Shard(d) -> Shard(d); Partial -> Replicate; Replicate -> Partial on an
    axis where the node does work on a piece (any non-replicated placement), else R."""
    graph = _gpt2_graph(axes)
    checked = 0
    for node in graph.nodes.values():
        if node.kind != "op":
            continue
        for s in node.strategies:
            assert len(s.grads) == len(s.ins)
            for a in range(len(axes)):
                on_axis = [lay[a] for lay in (*s.ins, *s.outs)]
                active = any(not isinstance(p, Replicate) for p in on_axis)
                for lay, grad in zip(s.ins, s.grads, strict=True):
                    p, g = lay[a], grad[a]
                    if isinstance(p, Shard):
                        assert g == p
                    elif isinstance(p, Partial):
                        assert g == R
                    else:
                        assert g == (Partial() if active else R), (node.name, s)
                    checked += 1
            if len(axes) == 1 and s.compute_div > 1:
                # split compute: every replicated input's gradient is a partial sum
                assert all(g == (P,) for lay, g in zip(s.ins, s.grads) if lay == (R,))
    assert checked > 500


def _view(target, *shapes, args=None, kwargs=None, out=None):
    """An OpView of ``target`` on fp32 tensors of ``shapes`` (args default to the slots)."""
    metas = tuple(TensorMeta(s, F32) for s in shapes)
    slots = tuple(Arg(i, m) for i, m in enumerate(metas))
    real = target(*(torch.zeros(s) for s in shapes), *(args or ()), **(kwargs or {}))
    outs = (TensorMeta(tuple(real.shape), F32),) if out is None else out
    return OpView(target, slots + tuple(args or ()), dict(kwargs or {}), metas, outs)


def _offered(op, sizes=(2,)):
    return {(s.ins, s.outs) for s in _strategies(op, sizes)[1]}


def test_tied_embedding_matmul_offers_batch_n_and_k_splits():
    """h @ wte.weight.t(): h [B, T, H] against a 2-D weight [H, V], as a linear is."""
    op = _view(aten.matmul.default, (2, 4, 6), (6, 10))
    s0, s1, s2 = Shard(0), Shard(1), Shard(2)
    assert _offered(op) == {
        (((R,), (R,)), ((R,),)),
        (((s0,), (R,)), ((s0,),)),  # batch
        (((s1,), (R,)), ((s1,),)),  # sequence (rows)
        (((s2,), (s0,)), ((P,),)),  # hidden (contracted): partial logits
        (((R,), (s1,)), ((s2,),)),  # vocabulary
    }
    # the weight first: [K] @ [B, K, N] and [B, M, K] @ [K]
    assert (((R,), (s0,)), ((s0,),)) in _offered(_view(aten.matmul.default, (6,), (2, 6, 8)))
    assert (((s2,), (s0,)), ((P,),)) in _offered(_view(aten.matmul.default, (2, 4, 6), (6,)))


def test_matmul_broadcast_batch_of_size_one_stays_whole():
    op = _view(aten.matmul.default, (2, 1, 4, 6), (4, 6, 8))  # -> [2, 4, 4, 8]
    offered = _offered(op)
    assert (((R,), (Shard(0),)), ((Shard(1),),)) in offered  # b's batch dim: a broadcasts
    assert (((Shard(0),), (R,)), ((Shard(0),),)) in offered
    assert all(ins[0] != (Shard(1),) for ins, _ in offered)  # a's size-1 dim never splits


def test_convolution_offers_batch_and_channel_splits():
    op = _view(aten.conv2d.default, (2, 4, 5, 5), (6, 4, 3, 3), (6,), args=([1, 1], [1, 1]))
    family, strategies = _strategies(op, (2,))
    assert family == "conv"
    s0, s1 = Shard(0), Shard(1)
    assert {(s.ins, s.outs) for s in strategies} == {
        (((R,), (R,), (R,)), ((R,),)),
        (((s0,), (R,), (R,)), ((s0,),)),  # batch
        (((R,), (s0,), (s0,)), ((s1,),)),  # output channels: weight rows and bias
        (((s1,), (s1,), (P,)), ((P,),)),  # input channels: partial sums, bias counted once
    }
    # grouped: the batch only; transposed: the weight's dim 1 holds the output channels
    grouped = _view(aten.conv2d.default, (2, 4, 5, 5), (6, 2, 3, 3), args=(None, [1], [0], [1], 2))
    assert _offered(grouped) == {(((R,), (R,)), ((R,),)), (((s0,), (R,)), ((s0,),))}
    tr = _view(aten.conv_transpose2d.input, (2, 4, 3, 3), (4, 6, 3, 3), (6,), args=([2, 2],))
    assert (((R,), (s1,), (s0,)), ((s1,),)) in _offered(tr)
    assert (((s1,), (s0,), (P,)), ((P,),)) in _offered(tr)
    unbatched = _view(aten.conv1d.default, (2, 7), (4, 2, 3), (4,))
    assert (((R,), (s0,), (s0,)), ((s0,),)) in _offered(unbatched)


def test_conv_and_einsum_flops():
    from autopar.cost import op_work

    op = _view(aten.conv2d.default, (2, 4, 5, 5), (6, 4, 3, 3), (6,), args=([1, 1], [1, 1]))
    assert op_work(op, "conv")[0] == 2.0 * (2 * 6 * 5 * 5) * (4 * 3 * 3)
    a, b = TensorMeta((2, 4, 6), F32), TensorMeta((2, 6, 8), F32)
    ein = OpView(aten.einsum.default, ("bij,bjk->bik", [Arg(0, a), Arg(1, b)]), {}, (a, b),
                 (TensorMeta((2, 4, 8), F32),))  # fmt: skip
    assert op_work(ein, "matmul")[0] == 2.0 * 2 * 4 * 6 * 8


def test_einsum_spec():
    from autopar.strategies.rules_linear import einsum_spec

    assert einsum_spec("bij,bjk->bik", [(2, 4, 6), (2, 6, 8)]) == "bij,bjk->bik"
    assert einsum_spec("...ij,jk->...ik", [(2, 3, 4, 6), (6, 8)]) == "ABij,jk->ABik"
    assert einsum_spec("...ij,...jk", [(1, 4, 6), (2, 6, 8)]) == "Bij,Ajk->Aik"  # broadcast
    assert einsum_spec("ij,jk", [(4, 6), (6, 8)]) == "ij,jk->ik"  # implicit output
    assert einsum_spec("ii->i", [(4, 4)]) is None  # a diagonal
    assert einsum_spec("ij,jk->ik", [(4, 6), (5, 8)]) is None  # sizes disagree


def test_rules_fixed_by_the_conformance_test():
    s0, s1, s2 = Shard(0), Shard(1), Shard(2)
    # argmax drops its dim: input dim 2 is output dim 1
    argmax = _view(aten.argmax.default, (2, 3, 4, 6), args=(1,))
    assert ((s2,), ((s1,),)) in {(s.ins[0], s.outs) for s in _strategies(argmax, (2,))[1]}
    assert _offered(_view(aten.argmax.default, (4, 6))) == {(((R,),), ((R,),))}  # flattened
    # diff(x, n, dim, prepend): the dim is argument 2; prepend shards with the input
    x, pre = TensorMeta((4, 6, 2), F32), TensorMeta((4, 6, 1), F32)
    diff = OpView(aten.diff.default, (Arg(0, x), 1, 2, Arg(1, pre)), {}, (x, pre), (x,))
    assert _offered(diff) == {
        (((R,), (R,)), ((R,),)), (((s0,), (s0,)), ((s0,),)), (((s1,), (s1,)), ((s1,),))
    }  # fmt: skip
    # div with a rounding mode passes no Partial
    div = _view(aten.div.Tensor_mode, (4, 6), (4, 6), kwargs={"rounding_mode": "floor"})
    assert all(s.outs != ((P,),) for s in _strategies(div, (2,))[1])
    # cross-entropy on class probabilities: a mean over the local rows, no kernel
    ce = _view(aten.cross_entropy_loss.default, (4, 10), (4, 10))
    assert (((s0,), (s0,)), ((Partial("avg"),),)) in _offered(ce)
    assert all(s.kernel is None for s in _strategies(ce, (2,))[1])
    # baddbmm with a bias [M, N] broadcast over the batch: whole along the batch
    bad = _view(aten.baddbmm.default, (4, 8), (2, 4, 6), (2, 6, 8))
    assert (((R,), (s0,), (s0,)), ((s0,),)) in _offered(bad)
    assert (((s0,), (s1,), (R,)), ((s1,),)) in _offered(bad)


class _TiedHead(nn.Module):
    def __init__(self, vocab: int = 1024, hidden: int = 64) -> None:
        super().__init__()
        self.wte, self.mix = nn.Embedding(vocab, hidden), nn.Linear(hidden, hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.tanh(self.mix(self.wte(ids))) @ self.wte.weight.t()
        return logits.square().mean()


def test_auto_plan_splits_a_tied_logits_matmul():
    """The issue's case: ``h @ wte.weight.t()`` was left replicated on every device."""
    captured = capture(_TiedHead(), (torch.randint(0, 1024, (16, 64)),))
    plan = make_plan(captured, MeshSpec.of({"x": 8}), "auto")
    (logits,) = [n for n in plan.nodes if n.name.startswith("matmul")]
    assert logits.outs[0] != (R,), logits

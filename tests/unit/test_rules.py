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
    from examples import gpt2

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

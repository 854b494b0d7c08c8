"""Ops no rule can split are replicated with a warning, never a crash: ops on complex (and
other unusual) dtypes, and, under ``strategy="tp"``, ops with no rule that use a
parameter (the parameter then stays replicated)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from autopar.capture import capture
from autopar.cost import compute_seconds
from autopar.mesh import MeshSpec
from autopar.placement import R, Replicate, Shard
from autopar.solve.graph import build_graph
from autopar.solve.planner import make_plan
from autopar.strategies.enumerate import node_strategies
from autopar.strategies.registry import Registry
from autopar.strategies.types import Arg, OpView, TensorMeta
from cost_models import CostModel, dtype_bytes, dtype_key

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
aten = torch.ops.aten


class Spectral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(self.lin(x)).abs().sum()


def test_complex_dtypes_are_priced_by_itemsize():
    assert (dtype_key(torch.complex64), dtype_bytes(torch.complex64)) == ("fp32", 8)
    assert (dtype_key(torch.complex128), dtype_bytes(torch.complex128)) == ("fp64", 16)
    assert (dtype_key(torch.uint4), dtype_bytes(torch.uint4)) == (None, 1)  # memory only
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_key("complex-ish")  # a misspelt name is still refused


def test_an_op_on_complex64_is_replicated_even_when_it_has_a_rule():
    registry = Registry()
    z, r = TensorMeta((4, 8), torch.complex64), TensorMeta((4, 8), torch.float32)
    op = OpView(aten.abs.default, (Arg(0, z),), {}, (z,), (r,))
    family, rule = registry.lookup(op.target, op)
    assert family == "unknown"
    assert registry.unknown_name(op.target, op) == "abs on complex64"
    strategies = node_strategies(op, (2,), rule)
    assert [(s.ins, s.outs) for s in strategies] == [(((R,),), ((R,),))]
    assert registry.lookup(op.target)[0] == "pointwise"  # by name alone it has a rule
    cm = CostModel.default_for(MeshSpec.of({"x": 2}))
    assert compute_seconds(cm, op, family, strategies[0], needs_grad=True) > 0


def test_fft_in_a_model_plans_with_a_warning():
    captured = capture(Spectral(), (torch.randn(4, 8),))
    mesh = MeshSpec.of({"x": 2})
    graph = build_graph(captured, mesh)
    assert graph.unknown_ops == ["abs on complex64", "fft_fft on complex64"]
    for strategy in ("auto", "dp", "tp"):
        with pytest.warns(UserWarning, match="fft_fft on complex64"):
            plan = make_plan(captured, mesh, strategy)
        for node in plan.nodes:
            if node.name.startswith(("fft", "abs")):
                assert all(lay == (R,) for lay in (*node.ins, *node.outs)), node


class OddUse(nn.Module):
    """``w`` feeds an op with no sharding rule; ``lin`` is an ordinary linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8))
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.special.bessel_j0(self.w).sum() + self.lin(x)).sum()


def test_tp_replicates_a_parameter_no_op_can_take_sharded():
    captured = capture(OddUse(), (torch.randn(4, 8),))
    mesh = MeshSpec.of({"tp": 2})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        plan = make_plan(captured, mesh, "tp")
    text = "\n".join(str(w.message) for w in seen)
    assert "special_bessel_j0" in text  # the op: no sharding rule
    assert "keeps these parameters replicated: w (no node using it can take it sharded: " in text
    assert "'special_bessel_j0' (special_bessel_j0)" in text
    assert plan.params["w"] == (R,)
    assert isinstance(plan.params["lin.weight"][0], Shard)  # the rest is still tensor parallel


class SharedWeight(nn.Module):
    """``w`` is used by a matmul, which can take it sharded, and by an op with no rule."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w).sum() + torch.special.bessel_j0(self.w).sum()


def test_tp_keeps_a_shared_parameter_sharded_and_the_odd_op_gathers_it():
    captured = capture(SharedWeight(), (torch.randn(4, 8),))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        plan = make_plan(captured, MeshSpec.of({"tp": 2}), "tp")
    text = "\n".join(str(w.message) for w in seen)
    assert "no sharding rule for special_bessel_j0" in text
    assert (
        "these nodes gather a parameter: 'special_bessel_j0' (special_bessel_j0) gathers w" in text
    )
    assert isinstance(plan.params["w"][0], Shard)
    (bessel,) = [n for n in plan.nodes if n.name.startswith("special_bessel_j0")]
    assert bessel.ins == ((R,),)


class Patches(nn.Module):
    """A ViT-style patch embedding (conv2d) and a head with odd dims."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Linear(8, 3)
        self.odd = nn.Parameter(torch.randn(3, 5))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h = self.patch(img).flatten(2).transpose(1, 2)
        return self.head(h).sum() + self.odd.sum()


def test_tp_plans_a_convolution_and_keeps_undividable_parameters_whole():
    captured = capture(Patches(), (torch.randn(2, 3, 8, 8),))
    with pytest.warns(UserWarning, match=r"odd \(no dim of its shape \[3, 5\]"):
        plan = make_plan(captured, MeshSpec.of({"tp": 2}), "tp")
    assert isinstance(plan.params["patch.weight"][0], Shard)  # the conv is split
    assert plan.params["odd"] == (R,)
    assert all(isinstance(p, (Shard, Replicate)) for p in plan.params["head.weight"])

"""Generated programs issue no collective DDP/FSDP2 would not: the loss' targets are
counted in their whole-batch twin (its sum overlaps backward), a replicated path's
activation-gradient all-reduce joins the gradient buckets when the cost model prices that
lower."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from autopar.capture import capture
from autopar.codegen import program_source
from autopar.mesh import MeshSpec
from autopar.solve.planner import make_plan
from autopar.testing.parity import build_tiny

MESH = MeshSpec.of(2)


def _source(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], preset: str
) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture(model, args, kwargs)
        return program_source(captured, make_plan(captured, MESH, preset))


def _collectives(src: str) -> dict[str, dict[str, int]]:
    line = next(x for x in src.splitlines() if x.startswith("COLLECTIVES = "))
    return eval(line.split(" = ", 1)[1])  # noqa: S307 - our own generated literal


def test_gpt2_dp_is_as_lean_as_ddp() -> None:
    src = _source(*build_tiny("gpt2"), "dp")
    assert "whole_target=" in src and "pending=ctx.pending" in src
    # forward: the loss' sum only; backward: nothing but the gradient buckets
    assert _collectives(src) == {"forward": {"all_reduce": 1}, "backward": {}}, src
    wpe = next(x for x in src.splitlines() if "wpe.weight': rt.Param(" in x)
    assert "reduce=('dp',)" in wpe, wpe


class PosAdd(torch.nn.Module):
    def __init__(self, table: int) -> None:
        super().__init__()
        self.pos = torch.nn.Embedding(table, 32)
        self.lin = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos(torch.arange(x.shape[1], device=x.device))
        return self.lin(x + pos).pow(2).mean()


@pytest.mark.parametrize(("table", "folded"), [(8, True), (1 << 14, False)])
def test_fold_only_where_cheaper(table: int, folded: bool) -> None:
    torch.manual_seed(0)
    src = _source(PosAdd(table), (torch.randn(4, 8, 32),), {}, "dp")
    back = _collectives(src)["backward"]
    pos = next(x for x in src.splitlines() if "'pos.weight': rt.Param(" in x)
    if folded:  # a small table: its gradient rides in the bucket
        assert back == {} and "reduce=('dp',)" in pos, src
    else:  # a table far larger than the value: the plan's all-reduce of the value stays
        assert back == {"all_reduce": 1} and "reduce=" not in pos, src

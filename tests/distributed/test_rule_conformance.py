"""Rule conformance on 2 gloo ranks: every strategy that every rule offers is run and
compared with the unsharded op, forward and backward (as DTensor checks its own rules).

Two sources of nodes, every strategy of each checked by ``conformance.check_op`` (see its
contract: inputs laid out with DTensor as the oracle, the op or its custom kernel run on
the local tensors, outputs and input gradients compared in their declared layouts):
- ``rule_cases``: every op name in the registry on sampled shapes (broadcasting, sizes
  that do not divide by 2, every dim), as OpViews built the way ``solve.graph`` builds
  them, strategies from the registry on a 1-axis mesh of size 2;
- captured models (a GPT block with a tied output embedding, a convolution stem, an
  FFT on complex64): the planner's own graph, each op node on its real values.
The helper modules sit next to this file and are loaded by path (tests are not on
``sys.path``; the ranks load this module by its file too).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from autopar.placement import Partial, Replicate, Shard
from autopar.strategies.enumerate import node_strategies
from autopar.strategies.registry import Registry, op_name


def _sibling(name: str) -> Any:
    """The module ``<name>.py`` next to this file, loaded once by path."""
    key = f"autopar_tests_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


rule_cases = _sibling("rule_cases")
conformance = _sibling("conformance")
N = conformance.N


def run_cases(rank: int, world: int, ids: list[str]) -> dict[str, Any]:
    """Rank task: check the named cases of ``rule_cases``."""
    mesh, registry, wanted = conformance.mesh_1d(), Registry(), set(ids)
    failures: list[str] = []
    strategies = 0
    for case in rule_cases.cases():
        if case.id not in wanted:
            continue
        args, kwargs = case.build()
        op = conformance.op_view(case.target, args, kwargs)
        found = node_strategies(op, (N,), registry.lookup(case.target, op)[1])
        failures += conformance.check_op(
            case.id, case.target, args, kwargs, found, mesh, case.seed, case.values, case.frozen
        )
        strategies += len(found)
    return {"failures": failures, "strategies": strategies}


class TiedLM(nn.Module):
    """A GPT block whose logits reuse the embedding table: ``h @ wte.weight.t()``."""

    def __init__(self, vocab: int = 12, hidden: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.wte, self.wpe = nn.Embedding(vocab, hidden), nn.Embedding(6, hidden)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.up, self.down = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        h = self.wte(ids) + self.wpe(torch.arange(t))
        q, k, v = self.qkv(self.ln1(h)).split(h.shape[-1], dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, -1))
        h = h + self.down(nn.functional.gelu(self.up(self.ln2(h))))
        logits = h @ self.wte.weight.t()
        return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())


class ConvNet(nn.Module):
    """A convolution stem (a ViT patch embedding and a grouped conv) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(4, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.head = nn.Linear(8, 4)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.dw(self.patch(img))).flatten(2).mean(-1)
        return self.head(h).square().mean()


class Spectral(nn.Module):
    """An op on complex64 (``torch.fft.fft``): replicated, never split."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(self.lin(x)).abs().sum()


MODELS: dict[str, Any] = {
    "tied_lm": (TiedLM, lambda: (torch.randint(0, 12, (4, 6)), torch.randint(0, 12, (4, 6)))),
    "conv": (ConvNet, lambda: (torch.randn(2, 4, 8, 8, dtype=torch.float64),)),
    "spectral": (Spectral, lambda: (torch.randn(4, 8),)),
}


def run_captured(rank: int, world: int, name: str) -> dict[str, Any]:
    """Rank task: capture a model, build the planner's graph on a 1-axis mesh of size 2,
    and check every strategy of every op node on the node's real values."""
    import warnings

    from torch.fx import Interpreter

    from autopar.capture import capture
    from autopar.mesh import MeshSpec
    from autopar.solve.graph import build_graph

    torch.manual_seed(0)
    cls, inputs = MODELS[name]
    model = cls().double() if name == "conv" else cls()
    args = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture(model, args)
        graph = build_graph(captured, MeshSpec.of({"x": N}))
    interp = Interpreter(captured.graph_module, garbage_collect_values=False)
    interp.run(*args)
    env = interp.env
    mesh, failures, ops = conformance.mesh_1d(), [], {}
    for k, node in enumerate(graph.nodes.values()):
        if node.kind != "op" or node.fx_node is None:
            continue
        fx_node = node.fx_node
        nargs = torch.fx.node.map_arg(fx_node.args, lambda a: env[a])
        nkwargs = torch.fx.node.map_arg(fx_node.kwargs, lambda a: env[a])
        label = f"{name}:{node.name}({node.target})"
        failures += conformance.check_op(
            label, fx_node.target, nargs, nkwargs, node.strategies, mesh, k
        )
        ops[node.name] = [(s.ins, s.outs) for s in node.strategies]
    return {"failures": failures, "ops": ops, "unknown": graph.unknown_ops}


def _family(case: Any, registry: Registry) -> str:
    return registry.lookup(case.target)[0]


def _by_family() -> dict[str, list[str]]:
    registry = Registry()
    found: dict[str, list[str]] = {}
    for case in rule_cases.cases():
        found.setdefault(_family(case, registry), []).append(case.id)
    return found


FAMILIES = sorted(_by_family())


def _assert_none(out: list[dict[str, Any]], what: str) -> None:
    failures = sorted(set(out[0]["failures"]) | set(out[1]["failures"]))
    head = f"{len(failures)} checks of {what} failed (each rank's, merged):"
    assert not failures, "\n".join([head, *failures])


def test_every_registry_op_has_a_case() -> None:
    """Every op name in the registry (so every rule function) is exercised."""
    registry = Registry()
    covered = {op_name(c.target) for c in rule_cases.cases()}
    missing = sorted(set(registry._table) - covered)
    assert not missing, f"registry ops without a conformance case: {missing}"
    rules = {id(getattr(r, "func", r)) for _, r in registry._table.values()}
    seen = {
        id(getattr(r, "func", r))
        for c in rule_cases.cases()
        for r in [registry.lookup(c.target)[1]]
    }
    assert rules <= seen
    for name in registry._table:  # every name is a real aten op, so the rule can ever apply
        assert hasattr(torch.ops.aten, name), f"registry names {name!r}, which is no aten op"


@pytest.mark.parametrize("family", FAMILIES)
def test_rule_conformance(pool2: Any, family: str) -> None:
    ids = _by_family()[family]
    out = pool2.run(run_cases, ids, timeout_s=300)
    assert out[0]["strategies"] >= len(ids)
    _assert_none(out, f"{family!r} rules")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_captured_model_conformance(pool2: Any, model: str) -> None:
    """The OpViews the planner builds from a captured model, each node on its real values."""
    out = pool2.run(run_captured, model, timeout_s=300)
    _assert_none(out, f"the nodes of {model!r}")
    ops = out[0]["ops"]
    if model == "tied_lm":  # the logits matmul offers batch, N and K (Partial) splits
        (logits,) = [v for k, v in ops.items() if k.startswith("matmul")]
        outs = {o[0][0] for _, o in logits}
        assert {Shard(0), Shard(1), Shard(2), Partial()} <= outs, outs
    if model == "conv":
        convs = [v for k, v in ops.items() if k.startswith("conv2d")]
        assert {Shard(0), Shard(1), Partial()} <= {o[0][0] for _, o in convs[0]}
        assert {o[0][0] for _, o in convs[1]} == {Replicate(), Shard(0)}  # grouped: batch only
    if model == "spectral":
        assert out[0]["unknown"] == ["abs on complex64", "fft_fft on complex64"]
        assert sum(len(v) for v in ops.values()) > len(ops)  # the linear still splits

"""Every reshard the planner can ask for runs, on real gloo ranks, and issues what it is priced.

The triples: every layout the rules give an output, a parameter or a graph input (the
sources), against every (layout, gradient layout) pair the rules read an input in (the
destinations with their gradients, from the grad law of ``strategies.enumerate``).
They are collected from ``node_strategies`` on every op case of the rule-conformance
test (``rule_cases``: every op in the registry on sampled shapes) plus
``free_strategies``, on a 1-axis mesh of size 2 and a 2x2 mesh, as *patterns* (the
placement kind per axis, dims named by first appearance, so ``S(2)S(2)`` and
``S(0)S(0)`` are one pattern); each pattern is then tested on a 3-D tensor with every
dim. For each (source, destination, gradient) on 2 ranks (1 axis) or 4 ranks (2x2):
- a random tensor is laid out as the source, DTensor being the oracle
  (``distribute_tensor``; a ``Partial`` axis gets rank-local parts that sum, or
  average, to it, checked with ``DTensor.full_tensor``);
- the generated program's reshard runs: ``collectives.plan_steps`` -> ``reshard`` (it
  never returns None: ``autopar.steps.walk_axes`` finds a path between any two
  layouts); the result must be the destination's DTensor layout of the same tensor
  (where the destination is partial: once summed, or averaged, over those axes; all
  such results are reduced together at the end, one all-reduce per axis and kind);
- backward with a random upstream gradient laid out as the gradient layout (1/n of it
  on a ``P(avg)`` axis of the destination, as a consumer returns it): the input's
  gradient must be the same gradient in ``grad_layout(src)`` (1/n of it on a ``P(avg)``
  axis of the source);
- the collectives issued (``CommCounter``), forward and backward, must be the kinds and
  numbers ``cost.edge_collectives`` prices for the edge (byte counts and relayout flags
  aside; FSDP's re-gather is FSDP2's, not a reshard's, and is not priced here).
A rank-free test walks every pair of layouts on a 3-axis mesh: the walk ends in the
destination and never moves a dim that a later axis splits at that moment.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import torch

from autopar.placement import Layout, Partial, Placement, R, Shard, layout_str

AVG = Partial("avg")
SHAPE = (4, 8, 12)  # every dim splits over 2x2, nested splits included; dims told apart
KINDS = (R, Partial(), AVG)


# ---- the triples the planner can produce (parent side) --------------------------------


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


def _pattern(*layouts: Layout) -> tuple[str, ...]:
    """Placement kinds of the layouts, dims renamed by first appearance (jointly)."""
    names: dict[int, int] = {}
    out = []
    for lay in layouts:
        for p in lay:
            if isinstance(p, Shard):
                out.append(f"S#{names.setdefault(p.dim, len(names))}")
            else:
                out.append(str(p))
    return tuple(out)


@cache
def _op_views() -> tuple[tuple[Any, Any], ...]:
    """(target, OpView) of every op case of the rule-conformance test."""
    rule_cases, conformance = _sibling("rule_cases"), _sibling("conformance")
    found = []
    for case in rule_cases.cases():
        args, kwargs = case.build()
        found.append((case.target, conformance.op_view(case.target, args, kwargs)))
    return tuple(found)


def planner_patterns(sizes: tuple[int, ...]) -> tuple[set[Any], set[Any]]:
    """(source patterns, (destination, gradient) patterns) the rules offer on ``sizes``."""
    from autopar.strategies.enumerate import free_strategies, node_strategies
    from autopar.strategies.registry import Registry
    from autopar.strategies.types import TensorMeta

    registry = Registry()
    sources: set[Any] = {_pattern(tuple(R for _ in sizes))}  # graph inputs arrive whole
    for param in (False, True):
        meta = TensorMeta(SHAPE, torch.float32)
        for s in free_strategies(meta, sizes, allow_shard=True, param=param):
            sources.add(_pattern(s.outs[0]))
    pairs: set[Any] = set()
    for target, op in _op_views():
        for s in node_strategies(op, sizes, registry.lookup(target, op)[1]):
            sources.update(_pattern(o) for o in s.outs if o is not None)
            pairs.update(_pattern(i, g) for i, g in zip(s.ins, s.grads))
    return sources, pairs


def _grad_options(p: Placement) -> list[Placement]:
    """The grad law of ``strategies.enumerate.grad_placement``."""
    if isinstance(p, Shard):
        return [p]
    return [R] if isinstance(p, Partial) else [R, Partial()]


def triples(sizes: tuple[int, ...]) -> list[Any]:
    """(source, destination, gradient) as text, with the kinds and numbers of collectives
    ``cost.edge_collectives`` prices forward and backward."""
    from autopar.cost import edge_collectives
    from autopar.strategies.types import TensorMeta

    sources, pairs = planner_patterns(sizes)
    per_axis = [*KINDS, *(Shard(d) for d in range(len(SHAPE)))]
    layouts = list(itertools.product(per_axis, repeat=len(sizes)))
    srcs = [s for s in layouts if _pattern(s) in sources]
    dsts = [
        (d, g)
        for d in layouts
        for g in itertools.product(*(_grad_options(p) for p in d))
        if _pattern(d, g) in pairs
    ]
    # every pattern the rules offer is tested (no rule layout is missed on a 3-D tensor)
    assert {_pattern(s) for s in srcs} == sources, sources - {_pattern(s) for s in srcs}
    assert {_pattern(d, g) for d, g in dsts} == pairs, pairs - {_pattern(*p) for p in dsts}
    meta = TensorMeta(SHAPE, torch.float64)
    out = []
    for s in srcs:
        for d, g in dsts:
            fwd, bwd = edge_collectives(s, d, g, meta, True, sizes)
            counts = [dict(Counter(c.kind for c in cols)) for cols in (fwd, bwd)]
            out.append((layout_str(s), layout_str(d), layout_str(g), *counts))
    return out


# ---- one rank's side ---------------------------------------------------------------------


def _placements(layout: Layout) -> tuple[Any, ...]:
    from autopar.placement import to_dtensor_placements

    return to_dtensor_placements(layout)


def _factor(layout: Layout, sizes: tuple[int, ...]) -> float:
    """1/n per ``P(avg)`` axis: how the gradient of an average reaches each rank."""
    f = 1.0
    for p, n in zip(layout, sizes):
        if p == AVG:
            f /= n
    return f


def _lay_out(full: torch.Tensor, layout: Layout, mesh: Any, seed: int) -> torch.Tensor:
    """This rank's piece of ``full`` in ``layout``: DTensor's slicing of the non-partial
    axes; on each partial axis parts that reduce (sum or mean) to it."""
    from torch.distributed.tensor import distribute_tensor

    whole = tuple(R if isinstance(p, Partial) else p for p in layout)
    local = distribute_tensor(full, mesh, _placements(whole), src_data_rank=None).to_local()
    g = torch.Generator().manual_seed(seed)
    for a, p in enumerate(layout):
        n = mesh.size(a)
        if isinstance(p, Partial):
            if p == Partial():
                local = local / n
            parts = [torch.randn(local.shape, generator=g, dtype=local.dtype) for _ in range(n)]
            mean = sum(parts) / n
            local = local + parts[mesh.get_local_rank(a)] - mean
    return local.contiguous()


def _whole(local: torch.Tensor, layout: Layout, mesh: Any) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    dt = DTensor.from_local(local, mesh, _placements(layout), run_check=False)
    return dt.full_tensor()


def _expected(full: torch.Tensor, layout: Layout, mesh: Any) -> torch.Tensor:
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, mesh, _placements(layout), src_data_rank=None).to_local()


def _close(got: torch.Tensor, want: torch.Tensor) -> str | None:
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = float((got - want).abs().max()) if got.numel() else 0.0
    return None if err <= 1e-9 else f"max error {err:.3g}"


class _Oracle:
    """One random tensor and one random gradient, laid out once per layout (DTensor)."""

    def __init__(self, mesh: Any) -> None:
        g = torch.Generator().manual_seed(0)
        self.mesh, self.sizes = mesh, tuple(int(n) for n in mesh.shape)
        self.x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        self.g = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        self._pieces: dict[tuple[str, Layout], torch.Tensor] = {}
        self._expected: dict[tuple[str, Layout], torch.Tensor] = {}

    def piece(self, which: str, layout: Layout) -> torch.Tensor:
        """This rank's local tensor of ``x`` or ``g`` laid out ``layout``; the first time a
        partial layout is made, DTensor must read it back as the whole tensor."""
        key = (which, layout)
        if key not in self._pieces:
            full = self.x if which == "x" else self.g
            local = _lay_out(full, layout, self.mesh, len(self._pieces))
            if any(isinstance(p, Partial) for p in layout):
                bad = _close(_whole(local, layout, self.mesh), full)
                assert bad is None, f"the laid-out {layout_str(layout)} is wrong: {bad}"
            self._pieces[key] = local
        return self._pieces[key]

    def expected(self, which: str, layout: Layout) -> torch.Tensor:
        """DTensor's local tensor of ``x`` or ``g`` in a layout without partial axes."""
        key = (which, layout)
        if key not in self._expected:
            self._expected[key] = _expected(self.x if which == "x" else self.g, layout, self.mesh)
        return self._expected[key]


def _check(case: Any, oracle: _Oracle, axes: Any, partial: dict[Any, list[Any]]) -> list[str]:
    """Run one case; a destination with partial axes is read back later, all such results
    at once (``_read_partials``): it is queued in ``partial`` by its partial axes."""
    from autopar.runtime.collectives import grad_layout, plan_steps, reshard
    from autopar.runtime.comm_count import CommCounter
    from autopar.runtime.layouts import parse_layout

    src, dst, grad = (parse_layout(t) for t in case[:3])
    sizes = oracle.sizes
    x = oracle.piece("x", src).clone().requires_grad_()
    upstream = oracle.piece("g", grad) * _factor(dst, sizes)
    problems = []
    fwd, bwd = plan_steps(src, dst, grad, axes.names)
    with CommCounter() as counted_fwd:
        y = reshard(x, axes, fwd, bwd) if fwd or bwd else x
    with CommCounter() as counted_bwd:
        y.backward(upstream)
    y = y.detach()
    whole = tuple(R if isinstance(p, Partial) else p for p in dst)
    if whole != dst:
        key = tuple((a, p.op) for a, p in enumerate(dst) if isinstance(p, Partial))
        partial.setdefault(key, []).append((_label(case), y, oracle.expected("x", whole)))
    else:
        bad = _close(y, oracle.expected("x", dst))
        if bad:
            problems.append(f"forward value: {bad}")
    assert x.grad is not None
    bad = _close(x.grad, oracle.expected("g", grad_layout(src)) * _factor(src, sizes))
    if bad:
        problems.append(f"gradient value: {bad}")
    for phase, counted, priced, steps in (
        ("forward", counted_fwd, case[3], fwd), ("backward", counted_bwd, case[4], bwd)
    ):  # fmt: skip
        if dict(counted.counts) != priced:
            problems.append(f"{phase} issued {dict(counted.counts)}, priced {priced} ({steps})")
    return problems


def _read_partials(partial: dict[Any, list[Any]], axes: Any) -> list[str]:
    """Reduce the queued partial results over their partial axes (sum, or mean), all
    results with the same partial axes in one call per axis, and compare each with the
    destination's layout read whole on those axes."""
    import torch.distributed as dist

    failures = []
    for key in sorted(partial):
        items = partial[key]
        flat = torch.cat([y.reshape(-1) for _, y, _ in items])
        for a, op in key:
            name = axes.names[a]
            dist.all_reduce(flat, group=axes.group[name])
            if op == "avg":
                flat /= axes.size[name]
        start = 0
        for label, y, want in items:
            got = flat[start : start + y.numel()].view(y.shape)
            start += y.numel()
            bad = _close(got, want)
            if bad:
                failures.append(f"{label}: forward value: {bad}")
    return failures


def _label(case: Any) -> str:
    return f"{case[0]} -> {case[1]} (grad {case[2]})"


def run_triples(rank: int, world: int, sizes: tuple[int, ...], cases: list[Any]) -> dict[str, Any]:
    """Rank task: every (source, destination, gradient, priced forward collectives, priced
    backward collectives) of ``cases`` on a mesh of ``sizes``."""
    from torch.distributed.device_mesh import init_device_mesh

    from autopar.runtime.collectives import Axes

    names = tuple(f"m{a}" for a in range(len(sizes)))
    mesh = init_device_mesh("cpu", sizes, mesh_dim_names=names)
    axes, oracle = Axes(mesh), _Oracle(mesh)
    failures: list[str] = []
    partial: dict[Any, list[Any]] = {}
    for case in cases:
        try:
            failures += [f"{_label(case)}: {p}" for p in _check(case, oracle, axes, partial)]
        except Exception as e:  # the same on every rank: layouts decide every branch
            failures.append(f"{_label(case)}: {type(e).__name__}: {e}")
    return {"failures": failures + _read_partials(partial, axes), "count": len(cases)}


# ---- tests -------------------------------------------------------------------------------


def _run(pool: Any, sizes: tuple[int, ...], minimum: int) -> None:
    cases = triples(sizes)
    assert len(cases) >= minimum, f"only {len(cases)} triples collected on {sizes}"
    out = pool.run(run_triples, sizes, cases, timeout_s=240)
    failures = sorted({f for r in out for f in r["failures"]})
    assert not failures, f"{len(failures)} of {len(cases)} triples fail:\n" + "\n".join(
        failures[:60]
    )


def test_every_planned_reshard_on_one_axis(pool2: Any) -> None:
    _run(pool2, (2,), minimum=40)


def test_every_planned_reshard_on_two_axes(pool4: Any) -> None:
    _run(pool4, (2, 2), minimum=1000)


def _after(step: tuple[Any, ...], p: Placement) -> Placement:
    """The placement of the moved axis after one step (layouts only)."""
    kind = step[0]
    if kind in ("all_gather", "all_reduce", "all_reduce_avg"):
        return R
    if kind in ("reduce_scatter", "chunk"):
        return Shard(step[2])
    if kind == "all_to_all":
        return Shard(step[3])
    return Partial() if kind == "keep" else p  # scale: the values change, not the layout


def _same(have: Any, want: Any) -> bool:
    """Layouts equal, a whole value standing for its own average (``R`` for ``P(avg)``)."""
    return all(h == w or (h == R and w == AVG) for h, w in zip(have, want))


def test_walk_covers_every_pair_on_three_axes() -> None:
    """Without ranks: between every two layouts of a 2-D tensor on a 3-axis mesh, the
    walk ends in the destination (``R`` standing for ``P(avg)``) and never moves a dim
    that a later axis splits at that moment (the one rule a local step must obey; the
    steps' values are what the gloo tests above check)."""
    from autopar.steps import walk_axes

    per_axis = [*KINDS, Shard(0), Shard(1)]  # two dims: split by one, two or three axes
    layouts = list(itertools.product(per_axis, repeat=3))
    for src in layouts:
        for dst in layouts:
            cur = list(src)
            for step, before in walk_axes(src, dst):
                assert _same(cur, before), (src, dst, step)
                a = step[1]
                dims = set(step[2:]) if step[0] in ("all_gather", "chunk", "reduce_scatter",
                                                    "all_to_all") else set()  # fmt: skip
                later = [p for p in before[a + 1 :] if isinstance(p, Shard) and p.dim in dims]
                assert not later, (src, dst, step, before)
                cur[a] = _after(step, cur[a])
            assert _same(cur, dst), (src, dst, cur)

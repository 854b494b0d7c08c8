"""Planner: captured graph + mesh + cost model -> Plan.

Contract: ``make_plan(captured, mesh, strategy, cost_model)`` builds the planning graph,
applies the preset, merges repeated layers, prices every strategy and every edge with
``autopar.cost``, solves the ILP (``solve.ilp``, whose docstring states the math) and
expands the canonical choice back to every node. Predicted step time is compute plus
communication, without overlap.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter

from autopar.capture import Captured
from autopar.cost import Collective, edge_collectives, kernel_collectives, node_seconds
from autopar.mesh import MeshSpec
from autopar.placement import Layout
from autopar.plan import CollectivePlan, NodePlan, Plan, Predicted, ReshardPlan
from autopar.solve.graph import PlanGraph, build_graph
from autopar.solve.ilp import EdgeTerm, Problem, solve
from autopar.solve.layers import canonical_map
from autopar.solve.presets import restrict
from cost_models import CostModel


def _groups(keys: list[object]) -> list[int]:
    ids: dict[object, int] = {}
    return [ids.setdefault(k, len(ids)) for k in keys]


class _CollectivePrices:
    """Memoised ``CostModel.collective_time``: a plan prices a few hundred distinct
    (kind, bytes, axis) triples many thousands of times."""

    def __init__(self, cm: CostModel) -> None:
        self.cm = cm
        self.memo: dict[tuple[str, int, int], float] = {}

    def __call__(self, *collectives: list[Collective]) -> float:
        total = 0.0
        for group in collectives:
            for c in group:
                key = (c.kind, c.nbytes, c.axis)
                if key not in self.memo:
                    self.memo[key] = self.cm.collective_time(*key)
                total += self.memo[key]
        return total


def build_problem(graph: PlanGraph, cm: CostModel, canon: dict[str, str]) -> Problem:
    sizes = graph.mesh.sizes
    mult = Counter(canon.values())
    costs: dict[str, list[float]] = {}
    for name, node in graph.nodes.items():
        if canon[name] != name:
            continue
        if node.kind == "op" and node.op is not None:
            costs[name] = [
                mult[name] * node_seconds(cm, node.op, node.family, s, node.requires_grad)
                for s in node.strategies
            ]
        else:
            costs[name] = [0.0] * len(node.strategies)
    edge_mult: Counter[tuple[str, int, str, int]] = Counter()
    for e in graph.edges:
        edge_mult[(canon[e.src], e.out_index, canon[e.dst], e.slot)] += 1
    edges = []
    price = _CollectivePrices(cm)
    for (u, idx, v, slot), m in edge_mult.items():
        src, dst = graph.nodes[u], graph.nodes[v]
        meta = src.out_metas[idx]
        u_keys = [s.outs[idx] for s in src.strategies]
        v_keys = [(s.ins[slot], s.grads[slot]) for s in dst.strategies]
        ug, vg = _groups(list(u_keys)), _groups(list(v_keys))
        u_lay = {g: k for g, k in zip(ug, u_keys)}
        v_lay = {g: k for g, k in zip(vg, v_keys)}
        cost = [
            [
                m * price(*edge_collectives(u_lay[a], v_lay[b][0], v_lay[b][1], meta,
                                            src.requires_grad, sizes))
                for b in range(len(v_lay))
            ]
            for a in range(len(u_lay))
        ]  # fmt: skip
        edges.append(EdgeTerm(u, v, ug, vg, cost))
    return Problem(costs, edges, ties=follower_ties(graph, canon))


FOLLOWER_FAMILIES = ("view", "pointwise")


def follower_ties(graph: PlanGraph, canon: dict[str, str]) -> dict[str, tuple[str, list[int]]]:
    """Fold single-input views and element-wise ops into their producer: when each of the
    producer's output layouts admits exactly one strategy of the follower, the follower's
    choice is a function of the producer's and needs no variables of its own."""
    ties: dict[str, tuple[str, list[int]]] = {}
    for name, node in graph.nodes.items():
        if canon[name] != name or node.kind != "op" or node.family not in FOLLOWER_FAMILIES:
            continue
        if len(node.inputs) != 1 or len(node.strategies) < 2:
            continue
        src, idx = node.inputs[0]
        u = canon[src]
        if u == name or len(graph.nodes[u].strategies) < 2:
            continue
        f = []
        for s in graph.nodes[u].strategies:
            match = [j for j, t in enumerate(node.strategies) if t.ins[0] == s.outs[idx]]
            if len(match) != 1:
                break
            f.append(match[0])
        else:
            ties[name] = (u, f)
    return ties


def make_plan(
    captured: Captured,
    mesh: MeshSpec,
    strategy: str = "auto",
    cost_model: CostModel | None = None,
    time_limit: float = 60.0,
) -> Plan:
    cm = cost_model or CostModel.default_for(mesh)
    graph = build_graph(captured, mesh)
    if graph.unknown_ops:
        warnings.warn(
            f"autopar has no sharding rule for {', '.join(graph.unknown_ops)}; these ops run "
            "replicated (correct, possibly slower)",
            stacklevel=2,
        )
    restrict(graph, strategy)
    canon = canonical_map(graph)
    problem = build_problem(graph, cm, canon)
    start = time.perf_counter()
    solution = solve(problem, time_limit=time_limit)
    solve_s = time.perf_counter() - start
    return _expand(graph, cm, canon, solution.choice, strategy, solution, solve_s)


def _expand(graph, cm, canon, choice, strategy, solution, solve_s) -> Plan:  # type: ignore[no-untyped-def]
    sizes = graph.mesh.sizes
    names = graph.mesh.names
    chosen = {n: graph.nodes[n].strategies[choice[canon[n]]] for n in graph.nodes}
    nodes = []
    compute = 0.0
    for name, node in graph.nodes.items():
        s = chosen[name]
        t = (
            node_seconds(cm, node.op, node.family, s, node.requires_grad)
            if node.kind == "op"
            else 0.0
        )
        compute += t
        module = node.target if node.kind in ("param", "buffer") else node.module
        inside = tuple(
            CollectivePlan(c.kind, names[c.axis], c.nbytes, "forward")
            for c in kernel_collectives(s)
        )
        nodes.append(
            NodePlan(
                name, node.target, node.kind, module, s.ins, s.outs, s.grads, s.kernel, t, inside
            )
        )
    reshards = []
    price = _CollectivePrices(cm)
    comm = 0.0
    for e in graph.edges:
        src, s_dst = graph.nodes[e.src], chosen[e.dst]
        src_layout: Layout = chosen[e.src].outs[e.out_index]
        dst_layout, grad_layout = s_dst.ins[e.slot], s_dst.grads[e.slot]
        fwd, bwd = edge_collectives(src_layout, dst_layout, grad_layout, src.out_metas[e.out_index],
                                    src.requires_grad, sizes)  # fmt: skip
        if not fwd and not bwd and src_layout == dst_layout:
            continue
        seconds = price(fwd, bwd)
        comm += seconds
        colls = tuple(
            CollectivePlan(c.kind, names[c.axis], c.nbytes, "forward") for c in fwd
        ) + tuple(CollectivePlan(c.kind, names[c.axis], c.nbytes, "backward") for c in bwd)
        reshards.append(ReshardPlan(e.src, e.out_index, e.dst, e.slot, src_layout, dst_layout,
                                    grad_layout, colls, seconds))  # fmt: skip
    predicted = Predicted(compute, comm, compute + comm, solution.solver, solution.status, solve_s,
                          solution.num_variables)  # fmt: skip
    return Plan(graph.mesh, strategy, str(cm.cluster), tuple(nodes), tuple(reshards), predicted,
                tuple(graph.unknown_ops))  # fmt: skip

"""What the planner prices per group rather than per node or edge.

Contract:
- ``follower_ties(graph, canon)``: single-input views and element-wise ops whose strategy
  is a function of their producer's (``FOLLOWER_FAMILIES``) are tied to it in the ILP and
  need no variables of their own;
- ``group_latencies(ctx, chosen)``: the latency of each collective the program sends for
  many parameters at once (one per gradient bucket, one per layer, phase and kind for
  FSDP's gathers and reduce-scatters) under the chosen strategies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopar.solve.graph import PlanGraph
from autopar.strategies.types import Strategy

if TYPE_CHECKING:
    from autopar.solve.planner import Pricing


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


def group_latencies(ctx: Pricing, chosen: dict[str, Strategy]) -> float:
    """The latency of each collective the program sends for many parameters at once:
    one per gradient bucket (``autopar.buckets``: DDP's rule, backward order) and one per
    layer, phase and kind for FSDP's gathers and reduce-scatters."""
    from autopar.buckets import buckets

    graph, cm = ctx.graph, ctx.cm
    groups: set[tuple[str, str, int, tuple[str, int]]] = set()
    grads: list[tuple[tuple[int], int]] = []
    for e in reversed(graph.edges):
        src = graph.nodes[e.src]
        if src.kind != "param":
            continue
        fwd, bwd, _ = ctx.edge(src, chosen[e.src], e.out_index, e.dst, e.slot, chosen[e.dst],
                               grouped=True)  # fmt: skip
        layer = src.layer or ("", -1)
        for phase, group in (("forward", fwd), ("backward", bwd)):
            for c in group:
                if phase == "backward" and c.kind == "all_reduce":
                    grads.append(((c.axis,), c.nbytes))
                else:
                    groups.add((phase, c.kind, c.axis, layer))
    total: float = sum(cm.collective_latency(kind, axis) for _, kind, axis, _ in groups)
    bucket_of = buckets(grads)  # type: ignore[arg-type]
    axis_of = {b: key[0] for (key, _), b in zip(grads, bucket_of)}
    total += sum(cm.collective_latency("all_reduce", a) for a in axis_of.values())
    return total

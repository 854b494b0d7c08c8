"""Merge identical repeated layers so the ILP does not grow with depth.

Contract: ``canonical_map(graph)`` maps every node name to the name of the node whose
strategy variable it shares. Nodes of layer ``prefix.k`` (from the module path, or the
parameter FQN) are listed in a fixed order (parameters by FQN suffix, then ops in graph
order) and given a signature: kind, op, output metadata, and for each input either its
position inside the same layer or "external". All layers of a prefix whose signature
equals that of the prefix's first layer share that layer's variables. Nodes outside any
repeated layer map to themselves.
"""

from __future__ import annotations

from collections import defaultdict

from autopar.solve.graph import PlanGraph


def canonical_map(graph: PlanGraph) -> dict[str, str]:
    members: dict[tuple[str, int], list[str]] = defaultdict(list)
    for name, node in graph.nodes.items():
        if node.layer is not None:
            members[node.layer].append(name)

    def order(layer: tuple[str, int]) -> list[str]:
        prefix = f"{layer[0]}.{layer[1]}."
        names = members[layer]
        params = sorted(
            (n for n in names if graph.nodes[n].kind == "param"),
            key=lambda n: graph.nodes[n].target[len(prefix) :],
        )
        return params + [n for n in names if graph.nodes[n].kind != "param"]

    def signature(names: list[str], layer: tuple[str, int]) -> tuple[object, ...]:
        pos = {n: i for i, n in enumerate(names)}
        prefix = f"{layer[0]}.{layer[1]}."
        sig = []
        for n in names:
            node = graph.nodes[n]
            ins = tuple(
                pos.get(src, "ext") if src in pos else ("ext", idx) for src, idx in node.inputs
            )
            ident = node.target[len(prefix) :] if node.kind == "param" else node.target
            op_args = repr(node.op.args) + repr(node.op.kwargs) if node.op else ""
            sig.append((node.kind, ident, node.out_metas, ins, op_args, len(node.strategies)))
        return tuple(sig)

    canon = {n: n for n in graph.nodes}
    by_prefix: dict[str, list[int]] = defaultdict(list)
    for prefix, idx in members:
        by_prefix[prefix].append(idx)
    for prefix, idxs in by_prefix.items():
        idxs.sort()
        first = (prefix, idxs[0])
        ref_names = order(first)
        ref_sig = signature(ref_names, first)
        for idx in idxs[1:]:
            layer = (prefix, idx)
            names = order(layer)
            if signature(names, layer) != ref_sig:
                continue
            for n, r in zip(names, ref_names):
                canon[n] = r
    return canon

"""Activation recomputation (checkpointing) per layer: what the planner prices and tries.

Contract:
- ``Layers.of(captured, graph)``: the layer submodules the generated program has
  (``codegen.units.assign``: ``"transformer.h.3"``), in graph order, which op node runs in
  which, and each layer's inputs (the values its nodes read from outside it: what a
  checkpoint of the layer keeps). ``Layers.assignment(spec)`` turns "none" | "selective" |
  "full" (every layer) or a {layer path: mode} mapping into an assignment, refusing
  unknown layers and modes.
- An assignment maps layer paths to "selective" or "full" (absent: "none"). Under it,
  ``saved_under(graph, saved, layers, assignment)`` is the ``solve.saved.Saved`` the memory
  model (``solve.memory.node_memory``, unchanged) reads: a node of a "full" layer keeps
  nothing; one of a "selective" layer keeps its outputs if it is matmul-like
  (``MATMUL_OPS``, torchtitan's selective list) and nothing else; every recomputed layer
  keeps its inputs; other nodes keep what autograd saves; views keep their storage
  (``saved.kept``). Kernel intermediates are kept only outside recomputed layers.
- ``reruns(node, mode)``: the node's forward compute runs again in backward ("full": every
  op; "selective": every op but the matmul-like ones, whose outputs were kept). Every
  statement of a recomputed layer runs again, so its forward collectives (reshards into
  its nodes, kernel collectives) are paid twice (``Pricing.repeated``).
- ``candidates(paths)``: the assignments ``make_plan`` tries when no plan fits without
  recomputation: selective on every layer, then full on the first k layers for a few k
  up to all (ascending; the planner stops at the first k that fits).
- ``split_canon(canon, key)``: the layer merge (``solve.layers``) restricted to nodes with
  equal ``key`` (recompute mode, kept outputs), so a merged variable prices one case.
- ``as_field(assignment, layers)``: the plan's ``recompute`` value, in layer order.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace

from autopar.capture import Captured
from autopar.plan import RECOMPUTE_MODES, PlanError
from autopar.solve.graph import PlanGraph, PNode
from autopar.solve.saved import Saved, kept

# ops whose outputs selective recomputation keeps (the rest of a layer is recomputed)
MATMUL_OPS = frozenset(
    {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "scaled_dot_product_attention"}
)


@dataclass(frozen=True)
class Layers:
    paths: tuple[str, ...] = ()
    of: dict[str, str] = field(default_factory=dict)  # op node -> layer path
    inputs: dict[str, frozenset[tuple[str, int]]] = field(default_factory=dict)

    @staticmethod
    def of_graph(captured: Captured, graph: PlanGraph) -> Layers:
        from autopar.codegen.units import assign

        where, _ = assign(captured)
        of = {n: p for n, p in where.items()
              if p and n in graph.nodes and graph.nodes[n].kind == "op"}  # fmt: skip
        paths: list[str] = []
        inputs: dict[str, set[tuple[str, int]]] = {}
        for name, node in graph.nodes.items():
            path = of.get(name)
            if path is None:
                continue
            if path not in inputs:
                paths.append(path)
                inputs[path] = set()
            inputs[path] |= {(s, i) for s, i in node.inputs if of.get(s) != path}
        return Layers(tuple(paths), of, {p: frozenset(v) for p, v in inputs.items()})

    def assignment(self, spec: str | Mapping[str, str]) -> dict[str, str]:
        if isinstance(spec, str):
            spec = {p: spec for p in self.paths}
        for path, mode in spec.items():
            if mode not in RECOMPUTE_MODES:
                raise PlanError(f"recompute mode of {path!r} must be one of "
                                f"{', '.join(RECOMPUTE_MODES)}, got {mode!r}")  # fmt: skip
            if path not in self.inputs:
                raise PlanError(f"recompute names {path!r}, which is not a layer of this "
                                f"model (its layers: {', '.join(self.paths) or 'none'})")  # fmt: skip
        return {p: m for p, m in spec.items() if m != "none"}

    def modes(self, assignment: Mapping[str, str]) -> dict[str, str]:
        """Op node -> its layer's mode, for the nodes of recomputed layers."""
        return {n: assignment[p] for n, p in self.of.items() if p in assignment}


def reruns(node: PNode, mode: str) -> bool:
    return node.kind == "op" and (
        mode == "full" or (mode == "selective" and node.target not in MATMUL_OPS)
    )


def saved_under(
    graph: PlanGraph, saved: Saved, layers: Layers, assignment: Mapping[str, str]
) -> Saved:
    modes = layers.modes(assignment)
    own = {(n, i) for n, i in saved.own if n not in modes}
    direct = {(n, k) for n, k in saved.direct if n not in modes}
    for name, mode in modes.items():
        node = graph.nodes[name]
        if mode == "selective" and node.target in MATMUL_OPS:
            own |= {(name, i) for i in range(len(node.out_metas))}
    for path in assignment:
        own |= set(layers.inputs[path])
    values, _ = kept(graph, own, direct)
    internal = {n: b for n, b in saved.internal.items() if n not in modes}
    return replace(saved, values=values, internal=internal)


def candidates(paths: tuple[str, ...]) -> list[dict[str, str]]:
    n = len(paths)
    if not n:
        return []
    ks = sorted({max(1, n // 4), max(1, n // 2), max(1, 3 * n // 4), n})
    return [{p: "selective" for p in paths}] + [{p: "full" for p in paths[:k]} for k in ks]


def split_canon(canon: dict[str, str], key: Callable[[str], Hashable]) -> dict[str, str]:
    first: dict[tuple[str, Hashable], str] = {}
    out = {}
    for name, c in canon.items():
        out[name] = first.setdefault((c, key(name)), name)
    return out


def as_field(assignment: Mapping[str, str], layers: Layers) -> tuple[tuple[str, str], ...]:
    return tuple((p, assignment[p]) for p in layers.paths if p in assignment)

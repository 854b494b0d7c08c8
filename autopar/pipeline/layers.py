"""Price pipeline layer units under their own intra-op plans on a stage's submesh.

Contract: ``LayerPricer(captured, cluster, optimizer="adamw")`` finds the layer units of
the captured graph (``partition.find_units``) and groups them into kinds: units whose
ops (targets, output shapes) and parameter shapes agree share a kind, so the 80 blocks
of a 70B model are one kind, plus the embedding unit and the head (``split_head`` gives
the ops after the last block a unit of their own, so the last block is a plain block).
``price(kind, dp, tp, micro_batch, budget)`` plans one representative unit of the kind
(cut out by ``split.split_stages`` once, and ``rebatch``-ed to ``micro_batch``, the
microbatch across the stage's ``dp`` replicas; its inputs arrive and its outputs leave in
the stage boundary layout, ``solve.graph.boundary_layout``, so units planned one by one
chain without a relayout between them and a stage of them is a plan the stage's own ILP
can only improve on) with the ordinary ILP planner (``make_plan``) on the submesh
``{"dp": dp, "tp": tp}`` (size-1 axes dropped) with the cost model of the devices that
submesh occupies (``sub_cluster``: the stage's ``dp * tp`` devices fill whole nodes or a
part of one node, tp innermost) and a memory budget (None: unconstrained) and caches the
result per key, planned by ``pricing.plan_for_pipeline`` (strategy "auto", or the
parameters replicated over ``dp`` where that is cheaper for a step of ``m = batch /
micro_batch`` microbatches; each ILP under ``time_limit`` seconds, longer when it runs
out of time without a plan) and priced as a ``pricing.LayerCost`` (per microbatch, per
step, memory). ``PlanInfeasibleError`` propagates.
"""

from __future__ import annotations

from typing import Any

import torch

from autopar.capture import Captured
from autopar.mesh import MeshSpec
from autopar.pipeline.partition import Units, find_units, module_path
from autopar.pipeline.pricing import LayerCost, plan_for_pipeline
from autopar.pipeline.rebatch import batch_of, rebatch
from autopar.pipeline.split import split_stages
from cost_models import ClusterSpec, CostModel

NO_BUDGET = float(1 << 62)
__all__ = ["NO_BUDGET", "LayerCost", "LayerPricer", "split_head", "sub_cluster", "submesh"]


def submesh(dp: int, tp: int) -> MeshSpec:
    axes = tuple((n, s) for n, s in (("dp", dp), ("tp", tp)) if s > 1)
    return MeshSpec(axes or (("dp", 1),))


def sub_cluster(cluster: ClusterSpec, devices: int) -> ClusterSpec:
    """The devices a stage of ``devices`` ranks (consecutive, tp innermost) occupies."""
    per = cluster.devices_per_node
    if devices <= per and per % devices == 0:
        return ClusterSpec(1, devices, cluster.device)
    if devices % per == 0:
        return ClusterSpec(devices // per, per, cluster.device)
    raise ValueError(
        f"a stage of {devices} devices neither divides nor fills whole nodes of {per} "
        f"devices on {cluster}; choose pipeline degrees that give stages of whole nodes"
    )


def split_head(units: Units, captured: Captured) -> Units:
    """``units`` with the ops after the last block (final norm, head, loss) in a unit of
    their own, ``<post>``, so the last block prices like every other block. An op moves
    only when every op reading it moves too (nothing in the block reads the head)."""
    last = units.count - 1
    label = units.labels[last]
    moved: set[str] = set()
    for node in reversed(list(captured.graph_module.graph.nodes)):
        if node.op != "call_function" or units.unit.get(node.name) != last:
            continue
        path = module_path(node)
        if path == label or path.startswith(label + "."):
            continue
        if all(u.op == "output" or u.name in moved for u in node.users):
            moved.add(node.name)
    if not moved or last == 0:
        return units
    unit = {k: (last + 1 if k in moved else v) for k, v in units.unit.items()}
    return Units(units.prefix, (*units.labels, "<post>"), unit, units.const)


def _signature(captured: Captured, units: Units) -> list[tuple[Any, ...]]:
    params = set(captured.param_names)
    sig: list[list[Any]] = [[] for _ in range(units.count)]
    for node in captured.graph_module.graph.nodes:
        if node.op != "call_function" or node.name in units.const:
            continue
        val = node.meta.get("val")
        shape = tuple(val.shape) if isinstance(val, torch.Tensor) else None
        ps = tuple(
            tuple(a.meta["val"].shape)
            for a in node.all_input_nodes
            if a.op == "get_attr" and str(a.target) in params
        )
        sig[units.unit[node.name]].append((str(node.target), shape, ps))
    return [tuple(s) for s in sig]


class LayerPricer:
    """Per-kind layer prices, planned once per (kind, dp, tp, microbatch, budget)."""

    def __init__(self, captured: Captured, cluster: ClusterSpec, optimizer: str = "adamw",
                 time_limit: float = 3.0, precision: str = "fp32") -> None:  # fmt: skip
        self.captured = captured
        self.cluster = cluster
        self.optimizer = optimizer
        self.precision = precision
        self.time_limit = time_limit
        self.units = split_head(find_units(captured.graph_module, captured.param_names),
                                captured)  # fmt: skip
        self.batch = batch_of(captured)
        sigs = _signature(captured, self.units)
        first: dict[tuple[Any, ...], int] = {}
        self.kind_of = tuple(first.setdefault(s, len(first)) for s in sigs)
        reps = sorted({self.kind_of.index(k) for k in range(len(first))})
        self.representative = tuple(reps)  # kind k -> its first unit
        self._graphs: dict[int, Captured] = {}
        self._rebatched: dict[tuple[int, int], Captured] = {}
        self._cache: dict[tuple[Any, ...], LayerCost] = {}
        self.plans_solved = 0
        self.boundary_bytes = self._boundary_bytes()
        self.param_bytes = self._param_bytes()

    @property
    def count(self) -> int:
        return self.units.count

    @property
    def kinds(self) -> int:
        return len(self.representative)

    def _boundary_bytes(self) -> tuple[float, ...]:
        """Bytes per batch element leaving unit i towards unit i+1 (send/recv payload)."""
        gm, units = self.captured.graph_module, self.units
        batch = 1
        crossing: dict[str, tuple[int, int]] = {}
        sizes: dict[str, float] = {}
        for node in gm.graph.nodes:
            val = node.meta.get("val")
            if node.op == "placeholder" and isinstance(val, torch.Tensor) and val.dim():
                batch = int(val.shape[0])
                break
        for node in gm.graph.nodes:
            if node.op != "call_function" or node.name in units.const:
                continue
            u = units.unit[node.name]
            for a in node.all_input_nodes:
                if a.name in units.unit and units.unit[a.name] < u and a.op != "get_attr":
                    val = a.meta.get("val")
                    if isinstance(val, torch.Tensor):
                        sizes[a.name] = val.numel() * val.element_size() / batch
                        src = units.unit[a.name]
                        crossing[a.name] = (src, max(crossing.get(a.name, (src, u))[1], u))
        leaving = [0.0] * units.count
        for name, (src, dst) in crossing.items():
            for k in range(src, dst):
                leaving[k] += sizes[name]
        return tuple(leaving)

    def _param_bytes(self) -> tuple[float, ...]:
        """Bytes of the parameters each unit reads first (unsharded)."""
        params, seen = set(self.captured.param_names), set()
        out = [0.0] * self.units.count
        for node in self.captured.graph_module.graph.nodes:
            if node.op != "call_function" or node.name not in self.units.unit:
                continue
            for a in node.all_input_nodes:
                if a.op == "get_attr" and str(a.target) in params and a.name not in seen:
                    seen.add(a.name)
                    val = a.meta["val"]
                    out[self.units.unit[node.name]] += val.numel() * val.element_size()
        return tuple(out)

    def _graph(self, kind: int) -> Captured:
        if not self._graphs:
            n, cuts = self.count, set()
            for r in self.representative:
                cuts |= {r, r + 1}
            edges = sorted(cuts | {0, n})
            bounds = tuple((a, b) for a, b in zip(edges, edges[1:]))
            split = split_stages(self.captured, self.units, bounds)
            start = {st.units[0]: st.captured for st in split.stages}
            for k, r in enumerate(self.representative):
                self._graphs[k] = start[r]
        return self._graphs[kind]

    def graph_at(self, kind: int, micro_batch: int) -> Captured:
        key = (kind, micro_batch)
        if key not in self._rebatched:
            self._rebatched[key] = rebatch(self._graph(kind), micro_batch)
        return self._rebatched[key]

    def price(self, kind: int, dp: int, tp: int, micro_batch: int,
              budget: float | None = None) -> LayerCost:  # fmt: skip
        key = (kind, dp, tp, micro_batch, None if budget is None else int(budget))
        if key not in self._cache:
            self._cache[key] = self._solve(kind, dp, tp, micro_batch, budget)
        return self._cache[key]

    def _solve(self, kind: int, dp: int, tp: int, mb: int, budget: float | None) -> LayerCost:
        mesh = submesh(dp, tp)
        cm = CostModel(sub_cluster(self.cluster, dp * tp), mesh)
        plan, cost = plan_for_pipeline(
            self.graph_at(kind, mb), mesh, cm, "auto", max(1, self.batch // mb),
            budget=budget if budget is not None else NO_BUDGET, optimizer=self.optimizer,
            precision=self.precision, time_limit=self.time_limit,
        )  # fmt: skip
        self.plans_solved += 1
        return cost

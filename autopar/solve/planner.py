"""Planner: captured graph + mesh + cost model -> Plan.

Contract: ``make_plan(captured, mesh, strategy, cost_model, memory_budget=None,
optimizer="adamw")`` builds the planning graph, applies the preset, merges repeated
layers, prices every strategy and every edge with ``autopar.cost``, adds the per-device
memory constraint of ``solve.memory`` (budget: ``memory_budget`` bytes, else the cost
model's device memory x 0.9 headroom), solves the ILP (``solve.ilp``, whose docstring
states the math) and expands the canonical choice back to every node. Parameter
collectives (gradient reductions, parameter gathers) may hide under compute up to the
cost model's ``overlap`` fraction, still paying its ``interference`` share; the rest of
the communication is exposed.

Recomputation (``solve.recompute``): ``recompute=None`` plans without it when that fits;
otherwise it tries selective recomputation of every layer and full recomputation of the
first k layers (k ascending, stopping at the first that fits), one ILP each, and keeps the
fastest plan that fits (``Plan.recompute``). ``recompute="selective"|"full"|"none"`` or a
{layer path: mode} mapping fixes the assignment. Under an assignment the ``Pricing`` keeps
each formula: memory reads the saved values ``recompute.saved_under`` derives, compute adds
the forward of each op run again (``recompute.reruns``) and the forward collectives of a
recomputed layer are paid twice (``Pricing.repeated`` / ``kernel_of``).

When no plan fits the budget, ``PlanInfeasibleError`` (a ValueError) reports the
smallest peak memory per device any plan reaches (with every layer recomputed, where the
model has layers), its breakdown, the budget and what to change.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from autopar.capture import Captured
from autopar.cost import (
    Collective,
    collective_seconds,
    collectives_seconds,
    compute_seconds,
    edge_collectives,
    grad_of,
    kernel_collectives,
    model_flops,
)
from autopar.mesh import MeshSpec
from autopar.placement import R
from autopar.plan import CollectivePlan, NodePlan, Plan, Predicted, ReshardPlan
from autopar.solve.graph import PlanGraph, PNode, build_graph
from autopar.solve.grouping import FOLLOWER_FAMILIES, follower_ties, group_latencies
from autopar.solve.ilp import Constraint, EdgeTerm, InfeasibleError, Problem, solve
from autopar.solve.infeasible import PlanInfeasibleError, infeasible
from autopar.solve.layers import canonical_map
from autopar.solve.memory import held_gather_bytes, local_bytes, node_memory
from autopar.solve.presets import restrict
from autopar.solve.recompute import Layers, as_field, candidates, reruns, saved_under, split_canon
from autopar.solve.saved import Saved, saved_values
from autopar.strategies.types import Strategy, TensorMeta
from cost_models import CostModel, TrainingMemory
from cost_models.compute import optimizer_step_time
from cost_models.dtypes import dtype_key

GiB = 2**30
__all__ = ["FOLLOWER_FAMILIES", "PlanInfeasibleError", "Pricing", "build_problem",
           "follower_ties", "group_latencies", "make_plan"]


def _groups(keys: list[object]) -> list[int]:
    ids: dict[object, int] = {}
    return [ids.setdefault(k, len(ids)) for k in keys]


class _CollectivePrices:
    """Memoised ``CostModel.collective_time``: a plan prices a few hundred distinct
    (kind, bytes, axis) triples many thousands of times."""

    def __init__(self, cm: CostModel) -> None:
        self.cm = cm
        self.memo: dict[Collective, float] = {}

    def __call__(self, *collectives: list[Collective]) -> float:
        total = 0.0
        for group in collectives:
            for c in group:
                if c not in self.memo:
                    self.memo[c] = collective_seconds(self.cm, c)
                total += self.memo[c]
        return total


@dataclass
class Pricing:
    """Prices of one planning graph under one cost model: each node strategy's compute
    and memory, each edge's collectives and held gather. The planner, ``autopar explain``
    and the benchmarks all price through it, so their figures agree."""

    graph: PlanGraph
    cm: CostModel
    saved: Saved
    optimizer: str
    precision: str = "fp32"
    modes: dict[str, str] = field(default_factory=dict)  # op node -> recompute mode
    _layer_params: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)
    # pure results keyed on layouts and metadata (bucket share, edge transitions)
    _memo: dict[object, object] = field(default_factory=dict, repr=False)

    def input_grads(self, node: PNode) -> tuple[bool, ...]:
        return tuple(self.graph.nodes[s].requires_grad for s, _ in node.inputs)

    @staticmethod
    def of(
        graph: PlanGraph, cm: CostModel, optimizer: str = "adamw", precision: str = "fp32"
    ) -> Pricing:
        return Pricing(graph, cm, saved_values(graph), optimizer, precision)

    def with_recompute(self, layers: Layers, assignment: Mapping[str, str]) -> Pricing:
        """These prices with ``assignment``'s layers recomputed (``solve.recompute``)."""
        return dataclasses.replace(
            self, saved=saved_under(self.graph, self.saved, layers, assignment),
            modes=layers.modes(assignment), _layer_params={},
        )  # fmt: skip

    def kernel_of(self, node: PNode, s: Strategy) -> list[Collective]:
        """A custom kernel's collectives, issued again when its layer is recomputed."""
        ks = kernel_collectives(s)
        return ks + ks if node.name in self.modes else ks

    def repeated(self, src: PNode, fwd: list[Collective], dst: str) -> list[Collective]:
        """The forward collectives of an edge issued again in backward: a reshard into a
        node of a recomputed layer runs again there (parameter gathers are FSDP's)."""
        return fwd if dst in self.modes and src.kind != "param" else []

    def layer_share(self, node: PNode) -> float:
        """1 / the parameters of ``node``'s layer (one FSDP collective for all of them)."""
        if not self._layer_params:
            for n in self.graph.nodes.values():
                if n.kind == "param":
                    key = n.layer or ("", -1)
                    self._layer_params[key] = self._layer_params.get(key, 0) + 1
        return 1.0 / self._layer_params.get(node.layer or ("", -1), 1)

    def bucket_share(self) -> float:
        """Buckets per parameter gradient, estimated from the gradient bytes (DDP's rule)."""
        from autopar.buckets import BUCKET_BYTES

        got = self._memo.get("bucket_share")
        if got is None:
            params = [n for n in self.graph.nodes.values()
                      if n.kind == "param" and n.requires_grad]  # fmt: skip
            total = sum(n.out_metas[0].nbytes for n in params)
            got = self._memo["bucket_share"] = min(
                1.0, max(1.0, total / BUCKET_BYTES) / max(1, len(params))
            )
        return got  # type: ignore[return-value]

    def gathered_meta(self, node: PNode, idx: int) -> TensorMeta:
        """What a parameter's gather moves: bf16 copies of the fp32 masters under
        bf16-mixed (FSDP's param_dtype), the tensor itself otherwise."""
        meta = node.out_metas[idx]
        if node.kind == "param" and self.precision == "bf16-mixed" and meta.dtype.is_floating_point:
            return TensorMeta(meta.shape, torch.bfloat16)
        return meta

    def kernel_seconds(self, s: Strategy) -> float:
        return collectives_seconds(self.cm, kernel_collectives(s))

    def compute(self, node: PNode, s: Strategy) -> float:
        if node.kind != "op" or node.op is None:
            return 0.0
        t = compute_seconds(
            self.cm, node.op, node.family, s, node.requires_grad, self.input_grads(node)
        )
        if reruns(node, self.modes.get(node.name, "none")):  # its forward runs again
            t += compute_seconds(self.cm, node.op, node.family, s, False)
        return t

    def memory(self, node: PNode, s: Strategy) -> TrainingMemory:
        return node_memory(node, s, self.saved, self.graph.mesh.sizes, self.optimizer)

    def edge(
        self, src: PNode, s_src: Strategy, idx: int, dst: str, slot: int, s_dst: Strategy,
        grouped: bool = False,
    ) -> tuple[list[Collective], list[Collective], int]:
        """(forward, backward) collectives of one edge and the gathered copy it holds. A
        parameter's collectives go out with others (gradient buckets, one FSDP collective
        per layer): each pays 1/group of a latency here, or none with ``grouped`` (the
        expanded plan adds one per group: ``group_latencies``)."""
        sizes = self.graph.mesh.sizes
        saved_slot = (dst, slot) in self.saved.slots
        meta = src.out_metas[idx]
        gathered = self.gathered_meta(src, idx)
        regather = s_src.regather and saved_slot
        key = ("edge", s_src.outs[idx], s_dst.ins[slot], s_dst.grads[slot], meta,
               src.requires_grad, regather, gathered)  # fmt: skip
        got = self._memo.get(key)
        if got is None:
            got = self._memo[key] = edge_collectives(
                s_src.outs[idx], s_dst.ins[slot], s_dst.grads[slot], meta, src.requires_grad,
                sizes, regather=regather, gathered=gathered,
            )  # fmt: skip
        fwd, bwd = (list(x) for x in got)  # type: ignore[attr-defined]
        if src.kind == "param":  # gradient buckets and FSDP layers: one latency per group
            fwd = [dataclasses.replace(c, latency_share=0.0 if grouped else
                                       self.layer_share(src)) for c in fwd]  # fmt: skip
            bwd = [dataclasses.replace(c, latency_share=0.0 if grouped else (
                self.bucket_share() if c.kind == "all_reduce" else self.layer_share(src)))
                for c in bwd]  # fmt: skip
        kept = saved_slot and (src.kind == "param" or dst not in self.modes)  # not recomputed
        held = held_gather_bytes(src, s_src, s_dst.ins[slot], kept, sizes, idx) if fwd else 0
        if held and gathered is not meta:
            held = held * gathered.dtype.itemsize // meta.dtype.itemsize
        return fwd, bwd, held

    def call_seconds(
        self, src: PNode, s_src: Strategy, idx: int, s_dst: Strategy, slot: int
    ) -> float:
        """Runtime overhead of the ``reshard`` call ``codegen.lower`` inserts on this edge
        (none where the value and its gradient already have the layouts needed). A
        parameter used in its stored layout takes the runtime's cheap path
        (``CostModel.param_use_s``); a moved one pays that and a layout call."""
        full = tuple(R for _ in self.graph.mesh.sizes)
        lay = full if src.kind == "input" else s_src.outs[idx]
        dst, grad = s_dst.ins[slot], s_dst.grads[slot]
        if src.kind == "param":
            moved = self.cm.reshard_overhead_s if lay != dst else 0.0
            return self.cm.param_use_s + moved
        free = lay == dst and grad == grad_of(dst) and lay == grad_of(lay)
        return 0.0 if free else self.cm.reshard_overhead_s

    def optimizer_seconds(self, node: PNode, s: Strategy) -> float:
        """One optimizer step over this parameter's local shard."""
        if node.kind != "param" or not node.requires_grad:
            return 0.0
        local = local_bytes(node.out_metas[0], s.outs[0], self.graph.mesh.sizes)
        return optimizer_step_time(self.cm.device, local, 1, self.optimizer)


def build_problem(
    ctx: Pricing, canon: dict[str, str], budget: float | None
) -> tuple[Problem, dict[str, list[float]], list[list[list[float]]]]:
    """The ILP, plus the memory weights (per node, per edge) it constrains."""
    graph, cm = ctx.graph, ctx.cm
    mult = Counter(canon.values())
    costs: dict[str, list[float]] = {}
    compute: dict[str, list[float]] = {}
    memory: dict[str, list[float]] = {}
    price = _CollectivePrices(cm)
    for name, node in graph.nodes.items():
        if canon[name] != name:
            continue
        m = mult[name]
        compute[name] = [m * ctx.compute(node, s) for s in node.strategies]
        costs[name] = [
            c + m * (price(ctx.kernel_of(node, s)) + ctx.optimizer_seconds(node, s))
            for c, s in zip(compute[name], node.strategies)
        ]
        memory[name] = [m * ctx.memory(node, s).total for s in node.strategies]
    edge_mult: Counter[tuple[str, int, str, int]] = Counter()
    for e in graph.edges:
        edge_mult[(canon[e.src], e.out_index, canon[e.dst], e.slot)] += 1
    edges, edge_memory = [], []
    for (u, idx, v, slot), m in edge_mult.items():
        src, dst = graph.nodes[u], graph.nodes[v]
        param = src.kind == "param"
        u_keys = [(s.outs[idx], s.regather and param) for s in src.strategies]
        v_keys = [(s.ins[slot], s.grads[slot]) for s in dst.strategies]
        ug, vg = _groups(list(u_keys)), _groups(list(v_keys))
        u_rep = {g: s for g, s in zip(ug, src.strategies)}
        v_rep = {g: s for g, s in zip(vg, dst.strategies)}
        cost, mem = [], []
        for a in range(len(u_rep)):
            row_c, row_m = [], []
            for b in range(len(v_rep)):
                fwd, bwd, held = ctx.edge(src, u_rep[a], idx, v, slot, v_rep[b])
                call = 0.0 if param else ctx.call_seconds(src, u_rep[a], idx, v_rep[b], slot)
                row_c.append(m * (price(fwd, bwd, ctx.repeated(src, fwd, v)) + call))
                row_m.append(float(m * held))
            cost.append(row_c)
            mem.append(row_m)
        edges.append(EdgeTerm(u, v, ug, vg, cost, hidden=param))
        edge_memory.append(mem)
    constraints = []
    if budget is not None:
        held_edges = {k: mm for k, mm in enumerate(edge_memory) if any(any(r) for r in mm)}
        constraints.append(Constraint("memory", memory, budget, held_edges))
    problem = Problem(
        costs, edges, constraints, follower_ties(graph, canon), compute, cm.overlap,
        cm.interference,
    )  # fmt: skip
    return problem, memory, edge_memory


def make_plan(
    captured: Captured,
    mesh: MeshSpec,
    strategy: str = "auto",
    cost_model: CostModel | None = None,
    time_limit: float = 60.0,
    memory_budget: float | None = None,
    optimizer: str = "adamw",
    precision: str = "fp32",
    recompute: str | Mapping[str, str] | None = None,
) -> Plan:
    from autopar.solve.autocast import with_precision

    captured = with_precision(captured, precision)
    cm = cost_model or CostModel.default_for(mesh)
    budget = float(memory_budget) if memory_budget is not None else cm.memory_budget_bytes()
    graph = build_graph(captured, mesh)
    if graph.unknown_ops:
        warnings.warn(
            f"autopar has no sharding rule for {', '.join(graph.unknown_ops)}; these ops run "
            "replicated (correct, possibly slower)",
            stacklevel=2,
        )
    restrict(graph, strategy)
    canon = canonical_map(graph)
    base = Pricing.of(graph, cm, optimizer, precision)
    layers = Layers() if recompute is None else Layers.of_graph(captured, graph)
    tries = [{}] if recompute is None else [layers.assignment(recompute)]
    best: Plan | None = None
    failed: tuple[object, ...] = ()
    for i, assignment in enumerate(tries):  # grows once: the recompute candidates
        ctx = base.with_recompute(layers, assignment) if assignment else base
        canon_i = split_canon(canon, lambda n: (
            ctx.modes.get(n), tuple((n, k) in ctx.saved.values
                                    for k in range(len(graph.nodes[n].out_metas))),
        )) if assignment else canon  # fmt: skip
        problem, memory, edge_memory = build_problem(ctx, canon_i, budget)
        start = time.perf_counter()
        try:
            solution = solve(problem, time_limit=time_limit)
        except InfeasibleError:
            failed = (ctx, canon_i, problem, memory, edge_memory, budget, strategy)
            if i == 0 and recompute is None:
                layers = Layers.of_graph(captured, graph)
                tries += candidates(layers.paths)
            continue
        solve_s = time.perf_counter() - start
        plan = _expand(ctx, canon_i, solution.choice, strategy, solution, solve_s, budget)
        plan = dataclasses.replace(plan, precision=precision,
                                   recompute=as_field(assignment, layers))  # fmt: skip
        if best is None or plan.predicted.step_time_s < best.predicted.step_time_s:
            best = plan
        if i == 0 or "selective" not in assignment.values():
            break  # fits without recomputation, or the first k layers recomputed that fit
    if best is None:
        raise infeasible(*failed)  # type: ignore[arg-type]
    return best


def _memory_of(ctx: Pricing, canon: dict[str, str], choice: dict[str, int]) -> TrainingMemory:
    graph = ctx.graph
    chosen = {n: graph.nodes[n].strategies[choice[canon[n]]] for n in graph.nodes}
    total = TrainingMemory()
    for name, node in graph.nodes.items():
        total = total + ctx.memory(node, chosen[name])
    held = 0
    for e in graph.edges:
        src = graph.nodes[e.src]
        held += ctx.edge(src, chosen[e.src], e.out_index, e.dst, e.slot, chosen[e.dst])[2]
    return total + TrainingMemory(activations=held)


def _tokens(graph: PlanGraph) -> int:
    inputs = [n.out_metas[0] for n in graph.nodes.values() if n.kind == "input"]
    for m in inputs:
        if not m.is_float and m.ndim >= 1:
            return m.numel  # token ids
    return inputs[0].shape[0] if inputs and inputs[0].ndim else 0


def _expand(ctx, canon, choice, strategy, solution, solve_s, budget) -> Plan:  # type: ignore[no-untyped-def]
    graph, cm = ctx.graph, ctx.cm
    names = graph.mesh.names
    chosen = {n: graph.nodes[n].strategies[choice[canon[n]]] for n in graph.nodes}
    nodes = []
    compute = flops = 0.0
    kernel_comm = 0.0
    price = _CollectivePrices(cm)
    matmul_dtype = "fp32"
    for name, node in graph.nodes.items():
        s = chosen[name]
        t = ctx.compute(node, s)
        compute += t
        kernel_comm += price(ctx.kernel_of(node, s))
        if node.kind == "op" and node.op is not None:
            flops += model_flops(node.op, node.family, node.requires_grad, ctx.input_grads(node))
            if node.family == "matmul":
                matmul_dtype = dtype_key(node.out_metas[0].dtype) or "fp32"
        module = node.target if node.kind in ("param", "buffer") else node.module
        inside = tuple(
            CollectivePlan(c.kind, names[c.axis], c.nbytes, "forward")
            for c in kernel_collectives(s)
        )
        nodes.append(
            NodePlan(name, node.target, node.kind, module, s.ins, s.outs, s.grads, s.kernel, t,
                     inside, s.regather)
        )  # fmt: skip
    reshards = []
    hidden = exposed = 0.0
    framework = optimizer = 0.0
    for name, node in graph.nodes.items():
        optimizer += ctx.optimizer_seconds(node, chosen[name])
    for e in graph.edges:
        src, s_src, s_dst = graph.nodes[e.src], chosen[e.src], chosen[e.dst]
        framework += ctx.call_seconds(src, s_src, e.out_index, s_dst, e.slot)
        src_layout = s_src.outs[e.out_index]
        dst_layout, grad_layout = s_dst.ins[e.slot], s_dst.grads[e.slot]
        fwd, bwd, _ = ctx.edge(src, s_src, e.out_index, e.dst, e.slot, s_dst, grouped=True)
        if not fwd and not bwd and src_layout == dst_layout:
            continue
        seconds = price(fwd, bwd, ctx.repeated(src, fwd, e.dst))
        if src.kind == "param":
            hidden += seconds
        else:
            exposed += seconds
        colls = tuple(
            CollectivePlan(c.kind, names[c.axis], c.nbytes, "forward") for c in fwd
        ) + tuple(CollectivePlan(c.kind, names[c.axis], c.nbytes, "backward") for c in bwd)
        reshards.append(ReshardPlan(e.src, e.out_index, e.dst, e.slot, src_layout, dst_layout,
                                    grad_layout, colls, seconds))  # fmt: skip
    hidden += group_latencies(ctx, chosen)
    visible = exposed + kernel_comm
    exposed = visible + cm.interference * hidden + max(0.0, hidden - cm.overlap * compute)
    step = compute + exposed + optimizer + framework
    mem = _memory_of(ctx, canon, choice)
    devices = graph.mesh.num_devices
    tflops = flops / devices / step / 1e12 if step > 0 else 0.0
    peak = cm.device.peak_flops(matmul_dtype)
    tokens = _tokens(graph)
    predicted = Predicted(
        compute, hidden + visible, step, solution.solver, solution.status, solve_s, solution.num_variables,
        exposed_comm_s=exposed, flops_per_step=flops, tflops_per_gpu=tflops,
        mfu=tflops * 1e12 / peak if peak else 0.0, tokens_per_step=tokens,
        tokens_per_s=tokens / step if step > 0 else 0.0, memory=mem.to_json(),
        memory_per_device_bytes=mem.total, memory_budget_bytes=int(budget),
        optimizer=ctx.optimizer, optimizer_s=optimizer, framework_s=framework,
    )  # fmt: skip
    return Plan(graph.mesh, strategy, str(cm.cluster), tuple(nodes), tuple(reshards), predicted,
                tuple(graph.unknown_ops))  # fmt: skip

"""The 3D plan: pp x dp x tp mesh, stages, schedule and microbatches, each stage priced
under its own intra-op plan.

Contract: ``search(captured, cluster, ...)`` returns ``Ranked``: ``PipelineCandidate``s
sorted by predicted step time, the ones that fit first (``best`` is the plan; the rest
are the runners-up). ``captured`` is the full model at the GLOBAL batch.
1. Coarse: ``search.search_3d`` ranks every factorization (tp inside a node, pp at most
   the layer units) with roofline prices; the ``coarse_k`` best meshes it keeps (those
   its memory estimate fits first, ``fixed`` axes and ``strategy="pp"`` (pp > 1)
   respected) are refined, each at its coarse microbatch count (the smallest
   microbatches that keep the pipeline full) and, with ``one_per_replica``, also at one
   sample per replica per microbatch. ``coarse_k`` trades planning time for breadth.
2. Refined: every layer unit costs what ``layers.LayerPricer`` says its own ILP plan on
   the stage's submesh ``dp x tp`` costs at that microbatch (one solve per distinct
   (kind, dp, tp, microbatch, budget)); ``partition.partition`` cuts the units into
   stages (p2p of the boundary activation on the ``pp`` axis of the full mesh, memory
   per stage = state + activations x microbatches the schedule holds in flight
   (``in_flight``) + received inputs, under the device budget); ``schedule.simulate``
   gives the step of GPipe, 1F1B and (when ``m % pp == 0`` and there are at least
   ``2 pp`` units) interleaved 1F1B with 2 chunks; each rank's once-per-step
   collectives (``LayerCost.step_comm_s``: gradient reductions, FSDP2 gathers) are priced
   after its last backward, overlapping one microbatch of its compute as the planner
   prices overlap (``layers.exposed``), then its optimizer step; the even cut is simulated too and wins when it is faster. When no schedule
   fits, the layers are re-planned under a per-layer budget
   (the device budget / layers per stage, then 1/2, 1/4, 1/8 of it, until the ILP finds
   no plan), so the ILP trades speed for memory where it must.
``to_plan(ranked, captured, cluster)`` turns the best candidate into a ``Plan``: the
intra-op plan of the representative block on its submesh, with ``predicted`` for the
whole pipeline step (``compute_s``: the busiest rank's compute over every stage it holds,
all microbatches; ``comm_s`` = ``exposed_comm_s``: the rest of the step) and ``pipeline`` = {"mesh", "schedule", "microbatches", "chunks",
"num_stages", "stages": [{"index", "rank", "units", "modules", "layers", "forward_s",
"backward_s", "comm_s", "memory_bytes", "predicted_s"}], "predicted_step_s",
"predicted_bubble", "peak_in_flight", "runners_up": [...]}.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from autopar.capture import Captured
from autopar.mesh import MeshSpec
from autopar.pipeline.layers import LayerCost, LayerPricer
from autopar.pipeline.partition import (
    InfeasibleError,
    Partition,
    in_flight,
    module_path,
    partition,
)
from autopar.pipeline.pricing import exposed
from autopar.pipeline.rebatch import RebatchError, batch_of
from autopar.pipeline.schedule import make_schedule, simulate
from autopar.pipeline.search import search_3d
from autopar.plan import Plan
from autopar.solve.planner import PlanInfeasibleError
from cost_models import ClusterSpec, CostModel


@dataclass(frozen=True)
class PipelineCandidate:
    pp: int
    dp: int
    tp: int
    microbatches: int
    schedule: str
    chunks: int
    step_s: float
    bubble: float
    memory_bytes: float  # the fullest rank
    fits: bool
    bounds: tuple[tuple[int, int], ...] = ()
    stage_s: tuple[float, ...] = ()  # per stage, one microbatch (with its send)
    stage_memory: tuple[float, ...] = ()  # per rank
    peak_in_flight: tuple[int, ...] = ()
    level: int = 0  # 0: layers planned without a budget; 1..4: under per-layer budgets
    costs: tuple[LayerCost, ...] = field(default=(), repr=False, compare=False)  # per unit

    @property
    def mesh(self) -> dict[str, int]:
        return {"pp": self.pp, "dp": self.dp, "tp": self.tp}

    def to_json(self) -> dict[str, Any]:
        return {
            "mesh": self.mesh, "microbatches": self.microbatches, "schedule": self.schedule,
            "chunks": self.chunks, "step_time_s": self.step_s, "bubble": self.bubble,
            "memory_per_device_bytes": self.memory_bytes, "fits": self.fits,
            "stages": [list(b) for b in self.bounds],
        }  # fmt: skip


@dataclass(frozen=True)
class Ranked:
    candidates: tuple[PipelineCandidate, ...]
    budget: float
    global_batch: int
    pricer: LayerPricer = field(repr=False, compare=False)

    @property
    def best(self) -> PipelineCandidate:
        return self.candidates[0]


def _dtype(captured: Captured) -> str:
    for node in captured.graph_module.graph.nodes:
        val = node.meta.get("val")
        if node.op == "get_attr" and isinstance(val, torch.Tensor) and val.is_floating_point():
            return "fp32" if val.dtype == torch.float32 else "bf16"
    return "fp32"


def _coarse(captured: Captured, cluster: ClusterSpec, batch: int, strategy: str,
            fixed: dict[str, int] | None, k: int) -> list[tuple[int, int, int, int]]:  # fmt: skip
    dtype = _dtype(captured)
    act = 17.0 if dtype == "fp32" else 8.5
    ranked = search_3d(captured, cluster, batch, captured_batch=batch, dtype=dtype,
                       act_factor=act, fixed=fixed, top=10**6, memory_filter=False)  # fmt: skip
    if strategy == "pp":
        ranked = [c for c in ranked if c.pp > 1]
    budget = CostModel(cluster, MeshSpec.of(cluster.num_devices)).memory_budget_bytes()
    ranked.sort(key=lambda c: (c.memory_bytes > budget, c.step_s))
    meshes: list[tuple[int, int, int, int]] = []
    for c in ranked:
        if (c.pp, c.dp, c.tp) not in [m[:3] for m in meshes]:
            meshes.append((c.pp, c.dp, c.tp, c.microbatches))
    return meshes[:k]


def search(
    captured: Captured,
    cluster: ClusterSpec,
    *,
    strategy: str = "auto",
    fixed: dict[str, int] | None = None,
    memory_budget: float | None = None,
    optimizer: str = "adamw",
    coarse_k: int = 4,
    schedules: tuple[str, ...] = ("1f1b", "gpipe", "interleaved_1f1b"),
    pricer: LayerPricer | None = None,
    one_per_replica: bool = False,
    precision: str = "fp32",
    microbatches: int | None = None,
) -> Ranked:
    batch = batch_of(captured)
    pricer = pricer or LayerPricer(captured, cluster, optimizer, precision=precision)
    full = CostModel(cluster, MeshSpec.of(cluster.num_devices))
    budget = float(memory_budget) if memory_budget is not None else full.memory_budget_bytes()
    found: list[PipelineCandidate] = []
    tried = 0
    for pp, dp, tp, m0 in _coarse(captured, cluster, batch, strategy, fixed, coarse_k):
        ms = {m0, batch // dp} if one_per_replica and batch % dp == 0 else {m0}
        if microbatches is not None and pp > 1:  # the caller fixed it
            ms = {microbatches}
        for m in sorted(ms):
            if batch % m or (batch // m) % dp or (strategy == "pp" and pp == 1):
                continue
            tried += 1
            found += price_mesh(pricer, cluster, pp, dp, tp, m, budget, schedules)
    if not found and tried:
        raise InfeasibleError(
            f"no pp x dp x tp plan of {cluster} fits the memory budget of "
            f"{budget:,.0f} bytes per device: even with its parameters sharded a layer "
            "needs more; use a larger memory budget, more devices, or a smaller batch or "
            "sequence"
        )
    if not found:
        raise InfeasibleError(
            f"no pp x dp x tp plan of {cluster} for this model at batch {batch} can be cut "
            "into stages; use a larger batch (microbatches) or another cluster"
        )
    found.sort(key=lambda c: (not c.fits, c.step_s if c.fits else c.memory_bytes))
    seen: set[tuple[Any, ...]] = set()
    unique = []  # one entry per (mesh, microbatches, schedule): its best layer-plan level
    for c in found:
        key = (c.pp, c.dp, c.tp, c.microbatches, c.schedule)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return Ranked(tuple(unique), budget, batch, pricer)


def price_mesh(pricer: LayerPricer, cluster: ClusterSpec, pp: int, dp: int, tp: int, m: int,
               budget: float, schedules: tuple[str, ...] = ("1f1b",),
               uniform: bool = False) -> list[PipelineCandidate]:  # fmt: skip
    """The candidates of one mesh and microbatch count (step 2 of the module docstring);
    ``uniform=True`` cuts the layers evenly instead (the hand-written grid baseline)."""
    n = pricer.count
    mb = pricer.batch // m
    mesh = MeshSpec((("pp", pp), ("dp", dp), ("tp", tp)))
    cm = CostModel(cluster, mesh)
    per_replica = mb // dp
    bnd = [b * per_replica for b in pricer.boundary_bytes]

    def send(j: int) -> float:
        return cm.collective_time("send_recv", bnd[j - 1], "pp") if pp > 1 else 0.0

    kinds = []
    for sched in schedules if pp > 1 else ("1f1b",):  # one stage has no schedule to choose
        v = 2 if sched == "interleaved_1f1b" else 1
        if sched != "1f1b" and pp == 1:
            continue
        if v > 1 and (m % pp or n < 2 * pp):
            continue
        kinds.append((sched, v))
    out: list[PipelineCandidate] = []
    per_stage = math.ceil(n / pp)
    levels = (None, *(budget / per_stage / 2**i for i in range(4)))
    # layers planned without a budget keep their parameters replicated where that is
    # fastest: skip that level when a stage of replicated states cannot fit anyway
    state = 4.0 * max(pricer.param_bytes)  # params, grads, Adam's two moments
    first = 1 if per_stage * state > budget else 0
    for level, layer_budget in enumerate(levels):
        if level < first:
            continue
        try:
            by_kind = [pricer.price(k, dp, tp, mb, layer_budget) for k in range(pricer.kinds)]
        except PlanInfeasibleError:
            break
        except RebatchError:  # a layer's graph does not re-trace at this microbatch size
            return out
        costs = tuple(by_kind[pricer.kind_of[u]] for u in range(n))
        got = [_evaluate(costs, bnd, send, cm, pp, dp, tp, m, s, v, budget, level,
                         uniform) for s, v in kinds]  # fmt: skip
        got = [c for c in got if c is not None]
        out += got
        if any(c.fits for c in got):
            break
    return out


def _even(n: int, stages: int) -> tuple[tuple[int, int], ...]:
    edges = [round(k * n / stages) for k in range(stages + 1)]
    return tuple(zip(edges, edges[1:]))


def _evaluate(costs, bnd, send, cm, pp, dp, tp, m, sched, v, budget, level, uniform):  # type: ignore[no-untyped-def]
    n = len(costs)
    pre = {"t": [0.0], "state": [0.0], "act": [0.0], "grad": [0.0], "comp": [0.0], "opt": [0.0]}
    for c in costs:
        for key, x in (("t", c.micro_s), ("state", c.state_bytes), ("act", c.act_bytes),
                       ("grad", c.step_comm_s), ("comp", c.compute_s), ("opt", c.optimizer_s)):  # fmt: skip
            pre[key].append(pre[key][-1] + x)

    def span(key: str, i: int, j: int) -> float:
        return pre[key][j] - pre[key][i]

    def memory(i: int, j: int, s: int) -> float:
        held = in_flight(sched, s, pp, m)
        received = bnd[i - 1] if i > 0 else 0.0
        return span("state", i, j) + held * (span("act", i, j) + received)

    stages = pp * v
    try:
        if uniform:
            bounds = _even(n, stages)
            st = tuple(span("t", i, j) + send(j) if j < n else span("t", i, j) for i, j in bounds)
            part = Partition(bounds, st, (m - 1) * max(st) + sum(st), ())
        elif v == 1:
            part = partition(n, stages, m, lambda i, j: span("t", i, j), p2p=send,
                             memory=memory, memory_limit=budget)  # fmt: skip
        else:
            part = partition(n, stages, m, lambda i, j: span("t", i, j), p2p=send)
    except InfeasibleError:
        if v > 1 or level < 4:
            return None
        part = partition(n, stages, m, lambda i, j: span("t", i, j), p2p=send)
    if uniform:
        return _finish(part, pre, costs, bnd, cm, pp, dp, tp, m, sched, v, budget, level)
    # the DP minimises the pipeline bound; the simulated step (p2p, gradient tails) can
    # still favour the even cut: keep whichever is better, so no even grid beats us
    even = _evaluate(costs, bnd, send, cm, pp, dp, tp, m, sched, v, budget, level, True)
    ours = _finish(part, pre, costs, bnd, cm, pp, dp, tp, m, sched, v, budget, level)
    if even is not None and (even.fits, -even.step_s) > (ours.fits, -ours.step_s):
        return even
    return ours


def _finish(part, pre, costs, bnd, cm, pp, dp, tp, m, sched, v, budget, level):  # type: ignore[no-untyped-def]
    """Simulate a cut: step (with each rank's gradient tail), bubble, memory per rank."""

    def span(key: str, i: int, j: int) -> float:
        return pre[key][j] - pre[key][i]

    stages = pp * v
    fwd = [t / 3.0 for t in part.stage_s]
    bwd = [2.0 * t / 3.0 for t in part.stage_s]
    sim = simulate(make_schedule(sched, pp, m, v), fwd, bwd)
    step, mem = 0.0, []
    for r in range(pp):
        mine = [part.bounds[s] for s in range(stages) if s % pp == r]
        grad = sum(span("grad", i, j) for i, j in mine)
        comp = sum(span("comp", i, j) for i, j in mine)
        opt = sum(span("opt", i, j) for i, j in mine)
        step = max(step, sim.finish_s[r] + exposed(cm, grad, comp) + opt)
        act = max(span("act", i, j) + (bnd[i - 1] if i else 0.0) for i, j in mine)
        mem.append(sum(span("state", i, j) for i, j in mine) + sim.peak_in_flight[r] * act)
    busy = max(sim.busy_s)
    return dataclasses.replace(
        PipelineCandidate(pp, dp, tp, m, sched, v, step, max(0.0, 1 - busy / step) if step else 0.0,
                          max(mem), max(mem) <= budget, part.bounds, part.stage_s, tuple(mem),
                          sim.peak_in_flight, level),
        costs=costs,
    )  # fmt: skip


def _modules(captured: Captured, pricer: LayerPricer, i: int, j: int) -> list[str]:
    units = pricer.units
    names: list[str] = []
    for u in range(i, j):
        if units.labels[u] not in ("<pre>", "<post>"):
            names.append(units.labels[u])
    ends = {u for u in (i, j - 1) if units.labels[u] in ("<pre>", "<post>")}
    if ends:
        for node in captured.graph_module.graph.nodes:
            if node.op == "call_function" and units.unit.get(node.name) in ends:
                path = module_path(node)
                if path.startswith(units.prefix + "."):
                    path = ".".join(path.split(".")[: units.prefix.count(".") + 2])
                if path and path not in names and not (units.prefix + ".").startswith(path + "."):
                    names.append(path)
    return names


def to_plan(ranked: Ranked, captured: Captured, cluster: ClusterSpec) -> Plan:
    best = ranked.best
    pricer = ranked.pricer
    n = pricer.count
    block = best.costs[min(1, n - 1)]  # the first block's plan
    base = block.plan
    total_flops = sum(c.plan.predicted.flops_per_step for c in best.costs) * best.microbatches
    devices = best.pp * best.dp * best.tp
    tflops = total_flops / devices / best.step_s / 1e12 if best.step_s else 0.0
    peak = cluster.device.peak_flops(_dtype(captured))
    tokens = next((int(nd.meta["val"].numel()) for nd in captured.graph_module.graph.nodes
                   if nd.op == "placeholder" and isinstance(nd.meta.get("val"), torch.Tensor)
                   and not nd.meta["val"].is_floating_point()), 0)  # fmt: skip
    # the busiest rank's compute: every stage it holds (interleaved: ``chunks`` of them)
    per_stage = [sum(c.compute_s for c in best.costs[i:j]) for i, j in best.bounds]
    compute = best.microbatches * max(
        sum(per_stage[s] for s in range(len(per_stage)) if s % best.pp == r) for r in range(best.pp)
    )
    worst = max(range(best.pp), key=lambda r: best.stage_memory[r])
    memory = _memory_breakdown(best, worst)
    predicted = dataclasses.replace(
        base.predicted, compute_s=compute, comm_s=max(0.0, best.step_s - compute),
        step_time_s=best.step_s, exposed_comm_s=max(0.0, best.step_s - compute),
        flops_per_step=total_flops, tflops_per_gpu=tflops, mfu=tflops * 1e12 / peak if peak else 0.0,
        tokens_per_step=tokens, tokens_per_s=tokens / best.step_s if best.step_s else 0.0,
        memory=memory, memory_per_device_bytes=int(best.memory_bytes),
        memory_budget_bytes=int(ranked.budget), solve_s=0.0,
    )  # fmt: skip
    stages = []
    for s, (i, j) in enumerate(best.bounds):
        t = best.stage_s[s]
        comp = sum(c.compute_s for c in best.costs[i:j])
        stages.append({
            "index": s, "rank": s % best.pp, "units": [i, j],
            "modules": _modules(captured, pricer, i, j),
            "layers": [pricer.units.labels[i], pricer.units.labels[j - 1]],
            "forward_s": comp / 3.0, "backward_s": 2.0 * comp / 3.0, "comm_s": max(0.0, t - comp),
            "memory_bytes": best.stage_memory[s % best.pp], "predicted_s": t,
        })  # fmt: skip
    info = {
        "mesh": best.mesh, "schedule": best.schedule, "microbatches": best.microbatches,
        "chunks": best.chunks, "num_stages": len(best.bounds), "stages": stages,
        "predicted_step_s": best.step_s, "predicted_bubble": best.bubble,
        "peak_in_flight": list(best.peak_in_flight), "layer_budget_level": best.level,
        "layer_plans_solved": pricer.plans_solved,
        "runners_up": [c.to_json() for c in ranked.candidates[1:11]],
    }  # fmt: skip
    return dataclasses.replace(base, predicted=predicted, pipeline=info, strategy="pp",
                               cluster=str(cluster))  # fmt: skip


def _memory_breakdown(best: PipelineCandidate, rank: int) -> dict[str, int]:
    out: dict[str, float] = {}
    held = best.peak_in_flight[rank] if best.peak_in_flight else 1
    for s, (i, j) in enumerate(best.bounds):
        if s % best.pp != rank:
            continue
        for c in best.costs[i:j]:
            for key, val in (c.plan.predicted.memory or {}).items():
                scale = held if key == "activations" else 1
                out[key] = out.get(key, 0.0) + float(val) * scale
    out["total"] = float(best.memory_bytes)
    out["activations"] = max(0.0, out["total"] - sum(v for k, v in out.items()
                                                     if k not in ("total", "activations")))  # fmt: skip
    return {k: int(v) for k, v in out.items()}

"""What a plan of a pipeline stage (or of one layer unit of it) costs in a pipeline step.

Contract: the ILP (``solve.planner.make_plan``) prices one microbatch as if it were a whole
training step. A pipeline step of ``m`` microbatches repeats the microbatch's work ``m``
times but holds the parameters' collectives for the whole step (``runtime.pipeline``:
torch's pipeline schedules keep FSDP2's gathered parameters from the first forward to the
last backward, and every gradient reduction, FSDP2's and the bucketed reducer's, waits
for the last backward). So:
- ``layer_cost(plan, cm, modes)`` splits a plan's prices by how often the pipeline
  program pays them, given how the generated program holds each parameter (``modes``:
  FQN -> "replicated" | "sharded" | "fsdp" | "zero2" | "explicit", ``codegen.lower``):
  ``micro_s`` (per microbatch): compute, activation communication and kernel collectives,
  the runtime's call overhead, and the parameter collectives issued every microbatch (the
  reshard statements of "explicit" parameters; the gather of an "fsdp" parameter, which
  FSDP2 frees after each forward), the latter priced with the planner's overlap
  (``exposed``); ``step_comm_s`` (per step): gradient reductions, one gather of every
  "fsdp"/"zero2" parameter, and the planner's per-group latencies; ``optimizer_s``: the
  optimizer step; ``state_bytes`` (parameters, gradients, optimizer state, master weights)
  and ``act_bytes`` (saved by one microbatch) per device. Every edge keeps the planner's
  price (``ReshardPlan.seconds``), split over its collectives in proportion to their
  ``CostModel.collective_time``.
- ``LayerCost.step_price(m, cm)``: its share of an ``m``-microbatch step, bubble aside.
- ``plan_for_pipeline(graph, mesh, cm, strategy, m, ...)`` -> (plan, cost): ``make_plan``
  with ``strategy``; for "auto" on a mesh whose ``dp`` axis is larger than 1, also with
  the parameters replicated over ``dp`` (preset "tp", or "dp" without a ``tp`` axis),
  keeping the plan with the lower ``step_price`` at ``m`` (the ILP's one-microbatch
  objective would otherwise trade activation traffic, paid ``m`` times, for parameter
  traffic, paid once). A solve that runs out of ``time_limit`` without any plan (a
  loaded machine) is tried again with 4x and then 16x the limit before it counts as
  infeasible: the solver's limit is not a price. ``PlanInfeasibleError`` propagates.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

from autopar.capture import Captured
from autopar.mesh import MeshSpec
from autopar.plan import Plan
from autopar.solve.infeasible import PlanInfeasibleError
from cost_models import CostModel

_GATHERS = ("all_gather",)
_RETRIES = 2  # longer solves after a time-out without a plan (4x, then 16x the limit)


@dataclass(frozen=True)
class LayerCost:
    micro_s: float
    step_comm_s: float
    optimizer_s: float
    state_bytes: float
    act_bytes: float
    compute_s: float
    plan: Plan = field(repr=False, compare=False)

    def step_price(self, m: int, cm: CostModel) -> float:
        """This plan's share of a step of ``m`` microbatches, bubble aside (``plan3d``
        simulates the schedule itself)."""
        return m * self.micro_s + exposed(cm, self.step_comm_s, self.compute_s) + self.optimizer_s


def exposed(cm: CostModel, hidden: float, compute: float) -> float:
    """The planner's price of collectives that may overlap ``compute`` (``solve.planner``):
    their interference with it, plus what does not fit under its overlap share."""
    return cm.interference * hidden + max(0.0, hidden - cm.overlap * compute)


def layer_cost(plan: Plan, cm: CostModel, modes: Mapping[str, str]) -> LayerCost:
    """Split a plan into per-microbatch and per-step prices (module docstring)."""
    fqn = {n.name: n.module for n in plan.nodes if n.kind == "param"}
    activation = micro_hidden = step_comm = 0.0
    for r in plan.reshards:  # each edge at the planner's price, split by collective
        if r.src not in fqn:
            activation += r.seconds
            continue
        mode = modes.get(fqn[r.src], "explicit")
        times = [cm.collective_time(c.kind, c.nbytes, c.axis) for c in r.collectives]
        scale = r.seconds / sum(times) if sum(times) > 0 else 0.0
        for c, t in zip(r.collectives, times, strict=True):
            t *= scale
            if mode == "explicit":  # reshard statements: every microbatch
                micro_hidden += t
            elif c.kind not in _GATHERS:  # held gradients: reduced after the last backward
                step_comm += t
            elif c.phase == "forward":  # FSDP2: gathered once, kept through the schedule
                step_comm += t
                if mode == "fsdp":  # ... but freed after each forward: gathered again
                    micro_hidden += t
    kernels = sum(cm.collective_time(c.kind, c.nbytes, c.axis)
                  for n in plan.nodes for c in n.collectives)  # fmt: skip
    pred = plan.predicted
    # what the planner adds beyond its edges and kernels: one latency per parameter group
    step_comm += max(0.0, pred.comm_s - kernels - sum(r.seconds for r in plan.reshards))
    micro = (pred.compute_s + activation + kernels + pred.framework_s
             + exposed(cm, micro_hidden, pred.compute_s))  # fmt: skip
    mem = pred.memory or {}
    act = float(mem.get("activations", 0))
    total = float(mem.get("total", pred.memory_per_device_bytes))
    return LayerCost(micro, step_comm, pred.optimizer_s, total - act, act, pred.compute_s, plan)


def runtime_modes(graph: Captured, plan: Plan) -> dict[str, str]:
    """FQN -> how the generated program holds each parameter (``codegen.lower``)."""
    from autopar.codegen.lower import lower

    return {p.fqn: p.mode for p in lower(graph, plan).params}


def plan_for_pipeline(
    graph: Captured,
    mesh: MeshSpec,
    cm: CostModel,
    strategy: str,
    microbatches: int,
    *,
    budget: float | None = None,
    optimizer: str = "adamw",
    precision: str = "fp32",
    time_limit: float = 60.0,
) -> tuple[Plan, LayerCost]:
    """The plan of ``graph`` (a stage or a layer unit) for a pipeline step of
    ``microbatches``, and its cost (module docstring)."""
    sizes = dict(mesh.axes)
    presets = [strategy]
    if strategy == "auto" and sizes.get("dp", 1) > 1:
        presets.append("tp" if sizes.get("tp", 1) > 1 else "dp")
    best: tuple[Plan, LayerCost] | None = None
    for preset in presets:
        try:
            plan = _solve(graph, mesh, cm, preset, budget, optimizer, precision, time_limit)
        except (PlanInfeasibleError, ValueError):
            if preset == strategy:
                raise
            continue  # the replicated variant does not fit (or cannot shard an input)
        cost = layer_cost(plan, cm, runtime_modes(graph, plan))
        if best is None or cost.step_price(microbatches, cm) < best[1].step_price(microbatches, cm):
            best = (plan, cost)
    assert best is not None
    return best


def _solve(graph: Captured, mesh: MeshSpec, cm: CostModel, preset: str, budget: float | None,
           optimizer: str, precision: str, time_limit: float) -> Plan:  # fmt: skip
    from autopar.solve.planner import make_plan

    limit = time_limit
    for attempt in range(_RETRIES + 1):
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return make_plan(graph, mesh, preset, cm, limit, memory_budget=budget,
                                 optimizer=optimizer, precision=precision)  # fmt: skip
        except PlanInfeasibleError:
            if attempt == _RETRIES or time.perf_counter() - start < 0.9 * limit:
                raise  # proven infeasible: it stopped before its limit
            limit *= 4
    raise AssertionError("unreachable")

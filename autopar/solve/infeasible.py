"""The error for a memory budget no plan meets.

Contract: ``infeasible(ctx, canon, problem, memory, edge_memory, budget, strategy)`` (the
pricing, layer merge, ILP and memory weights of the last assignment ``make_plan`` tried:
every layer recomputed where the model has layers) solves for the smallest peak memory
per device any plan reaches and returns a ``PlanInfeasibleError`` (a ValueError) naming
it, its breakdown, the budget and what to change.
"""

from __future__ import annotations

from autopar.solve.ilp import EdgeTerm, Problem, solve

GiB = 2**30


class PlanInfeasibleError(ValueError):
    pass


def infeasible(ctx, canon, problem, memory, edge_memory, budget, strategy):  # type: ignore[no-untyped-def]
    """The error for a budget no plan meets, naming the smallest peak any plan reaches."""
    from autopar.solve.planner import _memory_of

    smallest = Problem(
        {u: [w * 1e-9 for w in ws] for u, ws in memory.items()},
        [EdgeTerm(e.u, e.v, e.u_group, e.v_group, [[x * 1e-9 for x in r] for r in mm])
         for e, mm in zip(problem.edges, edge_memory)],
        ties=problem.ties,
    )  # fmt: skip
    choice = solve(smallest).choice
    mem = _memory_of(ctx, canon, choice)
    cm, mesh = ctx.cm, ctx.graph.mesh
    unit, scale = _unit(min(mem.total, budget))
    parts = ", ".join(
        f"{k.replace('_', ' ')} {v / scale:.2f}" for k, v in mem.to_json().items() if k != "total"
    )
    state = mem.total - mem.activations
    need = -(-state * mesh.num_devices // int(budget)) if budget > 0 else 0
    fp32 = any(
        n.kind == "param" and n.out_metas[0].dtype.itemsize == 4 for n in ctx.graph.nodes.values()
    )
    fixes = [
        f"more devices (the parameter state alone needs at least {need} devices of this "
        f"budget; e.g. a larger --cluster)",
        "a smaller batch or sequence (--batch-size, --seq-len) for the activations",
    ]
    if fp32:
        fixes.append("bf16 parameters (half the parameter and gradient bytes)")
    fixes.append("a larger --memory-budget if the device really has more free memory")
    return PlanInfeasibleError(
        f"no plan fits in memory: the smallest plan autopar finds for strategy={strategy!r} on "
        f"mesh {mesh}{' (recomputing every layer)' if ctx.modes else ''} needs "
        f"{mem.total / scale:.2f} {unit} per device ({parts} {unit}), but the budget is {budget / scale:.2f} {unit} per device ({cm.device.name} with "
        f"{cm.device.memory_bytes / GiB:.0f} GiB). Fix: use " + "; or ".join(fixes)
    )


def _unit(smallest: float) -> tuple[str, float]:
    """The largest binary unit in which ``smallest`` bytes still reads as 1 or more."""
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if smallest >= scale:
            return unit, float(scale)
    return "bytes", 1.0

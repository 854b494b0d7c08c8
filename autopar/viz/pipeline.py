"""Reading ``plan.pipeline`` for pictures, and simulating its schedule.

Contract: ``plan.pipeline`` is a JSON-able dict or None (None: one stage, one
microbatch). This module reads it tolerantly: ``stages`` is a list of dicts naming
their modules (``modules`` or ``layers``: module-path prefixes), optionally with
``forward_s``/``backward_s`` per microbatch and ``memory_bytes``; ``microbatches`` (int)
and ``schedule`` ("1f1b" or "gpipe", any case). ``stage_of_module`` returns a stage
index or -1 for a module no stage names. ``simulate(plan)`` returns the timeline:
``Slot``s (stage, microbatch, phase "F"/"B"/"comm", start, end) and the makespan,
from per-stage times given by the pipeline or, failing that, from the plan's own
compute (backward = 2 x forward) and communication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autopar.plan import Plan


@dataclass(frozen=True)
class Slot:
    stage: int
    micro: int
    phase: str
    start: float
    end: float


def stages_of(pipeline: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pipeline:
        return []
    stages = pipeline.get("stages") or []
    return [s if isinstance(s, dict) else {"modules": list(s)} for s in stages]


def stage_of_module(pipeline: dict[str, Any] | None, module: str) -> int:
    stages = stages_of(pipeline)
    if not stages:
        return 0
    best, found = -1, -1
    for i, s in enumerate(
        stages
    ):  # the longest named prefix wins ("transformer.h.3" over "transformer")
        for prefix in s.get("modules") or s.get("layers") or []:
            if (module == prefix or module.startswith(f"{prefix}.")) and len(prefix) > best:
                best, found = len(prefix), i
    return found


def microbatches(pipeline: dict[str, Any] | None) -> int:
    return int(
        (pipeline or {}).get("microbatches") or (pipeline or {}).get("num_microbatches") or 1
    )


def schedule_name(pipeline: dict[str, Any] | None) -> str:
    return str((pipeline or {}).get("schedule") or "1f1b").lower()


def stage_times(plan: Plan) -> list[tuple[float, float, float]]:
    """(forward, backward, communication) seconds per stage for ONE microbatch."""
    stages = stages_of(plan.pipeline)
    m = microbatches(plan.pipeline)
    if stages and all("forward_s" in s and "backward_s" in s for s in stages):
        return [
            (float(s["forward_s"]), float(s["backward_s"]), float(s.get("comm_s", 0.0)))
            for s in stages
        ]
    n = max(1, len(stages))
    compute = [0.0] * n
    current = 0
    for node in plan.nodes:
        if node.kind != "op":
            continue
        s = stage_of_module(plan.pipeline, node.module)
        current = s if s >= 0 else current
        compute[current] += node.compute_s
    pred = plan.predicted
    comm = float(getattr(pred, "exposed_comm_s", getattr(pred, "comm_s", 0.0)))
    # compute_s prices forward and backward together; backward is about 2x forward
    return [(c / 3 / m, 2 * c / 3 / m, comm / n / m) for c in compute]


def _order(stage: int, n: int, m: int, kind: str) -> list[tuple[str, int]]:
    if kind == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    warm = min(n - stage - 1, m)
    order = [("F", i) for i in range(warm)]
    f, b = warm, 0
    while b < m:
        if f < m:
            order.append(("F", f))
            f += 1
        order.append(("B", b))
        b += 1
    return order


def simulate(plan: Plan) -> tuple[list[Slot], float]:
    times = stage_times(plan)
    n, m = len(times), microbatches(plan.pipeline)
    kind = "gpipe" if "gpipe" in schedule_name(plan.pipeline) else "1f1b"
    orders = [_order(s, n, m, kind) for s in range(n)]
    done: dict[tuple[str, int, int], float] = {}
    free = [0.0] * n
    pos = [0] * n
    slots: list[Slot] = []
    progress = True
    while progress:
        progress = False
        for s in range(n):
            while pos[s] < len(orders[s]):
                phase, i = orders[s][pos[s]]
                deps = [("F", s - 1, i)] if phase == "F" and s > 0 else []
                if phase == "B":
                    deps = [("F", s, i)] + ([("B", s + 1, i)] if s < n - 1 else [])
                if any(d not in done for d in deps):
                    break
                start = max([free[s]] + [done[d] for d in deps])
                end = start + times[s][0 if phase == "F" else 1]
                done[(phase, s, i)] = end
                slots.append(Slot(s, i, phase, start, end))
                free[s] = end
                pos[s] += 1
                progress = True
    for s in range(n):
        comm = times[s][2] * m
        if comm > 0:
            slots.append(Slot(s, -1, "comm", free[s], free[s] + comm))
            free[s] += comm
    return slots, max(free) if free else 0.0

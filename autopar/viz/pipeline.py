"""Reading ``plan.pipeline`` for pictures, and laying its schedule out in time.

Contract: ``plan.pipeline`` is a JSON-able dict or None (None: one stage, one
microbatch). This module reads it tolerantly: ``stages`` is a list of dicts naming
their modules (``modules`` or ``layers``: module-path prefixes), optionally with
``forward_s``/``backward_s``/``comm_s`` per microbatch and ``memory_bytes``;
``microbatches`` (int), ``schedule`` ("1f1b", "gpipe" or "interleaved_1f1b", any case)
and ``chunks`` (virtual stages per rank; stage ``s`` runs on rank ``s % ranks``).
``stage_of_module`` returns a stage index or -1 for a module no stage names.
``simulate(plan)`` returns a ``Timeline``: ``Slot``s (stage, microbatch, phase
"F"/"B"/"comm", start, end, rank) and the makespan. The order of work on each rank is
``autopar.pipeline.schedule.make_schedule``'s and its step and bubble are that module's
``simulate``; this module only records when each action starts and ends, by the same
dependency rule (``schedule._ready``), then appends each rank's exposed collectives
(its stages' ``comm_s`` x microbatches; comm slots have stage -1). Per-stage times come
from the pipeline or, failing that, from the plan's own compute (backward = 2 x forward)
and communication. A pipeline the scheduler refuses (interleaving with microbatches not
divisible by the ranks) is laid out as 1F1B over its stages, and ``note`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autopar.pipeline import schedule as sched
from autopar.plan import Plan


@dataclass(frozen=True)
class Slot:
    stage: int
    micro: int
    phase: str
    start: float
    end: float
    rank: int = 0


@dataclass(frozen=True)
class Timeline:
    slots: tuple[Slot, ...]
    total: float  # makespan, collectives included
    kind: str  # the schedule laid out: gpipe | 1f1b | interleaved_1f1b
    ranks: int
    chunks: int
    microbatches: int
    bubble: float  # the scheduler's idle fraction of the busiest-idle rank (work only)
    note: str = ""


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
    # the longest named prefix wins ("transformer.h.3" over "transformer")
    for i, s in enumerate(stages):
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


def schedule_kind(pipeline: dict[str, Any] | None) -> str:
    """One of ``autopar.pipeline.schedule.KINDS`` for a tolerantly spelled schedule."""
    name = schedule_name(pipeline).replace("-", "_").replace(" ", "_")
    if "gpipe" in name:
        return "gpipe"
    return "interleaved_1f1b" if "interleav" in name else "1f1b"


def chunks_of(pipeline: dict[str, Any] | None) -> int:
    given = (pipeline or {}).get("chunks")
    if given:
        return max(1, int(given))
    return 2 if schedule_kind(pipeline) == "interleaved_1f1b" else 1


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


def _schedule(plan: Plan, n: int, m: int) -> tuple[sched.Schedule, str]:
    """The scheduler's schedule for ``n`` stages, or 1F1B over them with a note why."""
    kind = schedule_kind(plan.pipeline) if n > 1 else "1f1b"
    v = chunks_of(plan.pipeline) if kind == "interleaved_1f1b" else 1
    try:
        if n % v:
            raise ValueError(f"{n} stages do not split into {v} chunks per rank")
        return sched.make_schedule(kind, n // v, m, v), ""
    except ValueError as e:
        return sched.make_schedule("1f1b", n, m), f"drawn as 1f1b ({e})"


def simulate(plan: Plan) -> Timeline:
    times = stage_times(plan)
    n, m = len(times), microbatches(plan.pipeline)
    schedule, note = _schedule(plan, n, m)
    fwd, bwd = [t[0] for t in times], [t[1] for t in times]
    sim = sched.simulate(schedule, fwd, bwd)
    done: dict[tuple[str, int, int], float] = {}
    clock = [0.0] * schedule.num_ranks
    pos = [0] * schedule.num_ranks
    slots: list[Slot] = []
    while any(pos[r] < len(acts) for r, acts in enumerate(schedule.ranks)):
        for r, acts in enumerate(schedule.ranks):  # sched.simulate has proven this terminates
            while pos[r] < len(acts):
                a = acts[pos[r]]
                ready = sched._ready(a, n, done, 0.0)
                if ready is None:
                    break
                start = max(clock[r], ready)
                clock[r] = start + (fwd[a.stage] if a.kind == "F" else bwd[a.stage])
                done[(a.kind, a.stage, a.microbatch)] = clock[r]
                slots.append(Slot(a.stage, a.microbatch, a.kind, start, clock[r], r))
                pos[r] += 1
    for r in range(schedule.num_ranks):
        comm = sum(times[s][2] for s in range(n) if schedule.rank_of(s) == r) * m
        if comm > 0:
            slots.append(Slot(-1, -1, "comm", clock[r], clock[r] + comm, r))
            clock[r] += comm
    return Timeline(tuple(slots), max(clock), schedule.kind, schedule.num_ranks,
                    schedule.chunks, m, sim.bubble_fraction, note)  # fmt: skip

"""Pipeline schedules as data, and a simulator that prices them.

Contract: ``make_schedule(kind, num_ranks, microbatches, chunks=1)`` returns a
``Schedule``: for every pipeline rank the ordered list of ``Action``s it runs (a
forward or backward of one microbatch on one stage). Kinds:
- ``"gpipe"``: all forwards, then all backwards (peak in-flight microbatches ``m``);
- ``"1f1b"``: ``p - r - 1`` warm-up forwards, then one forward / one backward, then the
  remaining backwards (peak in-flight ``min(m, p - r)``);
- ``"interleaved_1f1b"``: Megatron's interleaving of ``chunks`` virtual stages per rank
  (stage ``s`` lives on rank ``s % p``); needs ``m % p == 0``.
``simulate(schedule, fwd_s, bwd_s, p2p_s)`` runs the actions in order on an idealised
machine (a rank runs one action at a time; a forward of stage ``s`` waits for the
forward of stage ``s-1`` plus ``p2p_s``; a backward waits for the backward of stage
``s+1`` plus ``p2p_s``, or for its own forward on the last stage) and returns the step
time, each rank's bubble fraction, when each rank finishes, and each rank's peak number of microbatches whose
forward has run but whose backward has not (the activations it holds).
``bubble_theory`` gives the textbook figure ``(p-1)/(v*m + p-1)``. Pure Python, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("gpipe", "1f1b", "interleaved_1f1b")


@dataclass(frozen=True)
class Action:
    kind: str  # "F" | "B"
    stage: int
    microbatch: int

    def __str__(self) -> str:
        return f"{self.kind}{self.stage}.{self.microbatch}"


@dataclass(frozen=True)
class Schedule:
    kind: str
    num_ranks: int
    microbatches: int
    chunks: int
    ranks: tuple[tuple[Action, ...], ...]

    @property
    def num_stages(self) -> int:
        return self.num_ranks * self.chunks

    def rank_of(self, stage: int) -> int:
        return stage % self.num_ranks


@dataclass(frozen=True)
class Simulation:
    step_s: float
    busy_s: tuple[float, ...]  # per rank
    bubble: tuple[float, ...]  # per rank: idle fraction of the step
    peak_in_flight: tuple[int, ...]  # per rank, microbatches (summed over its stages)
    finish_s: tuple[float, ...] = ()  # per rank: when its last action ends

    @property
    def bubble_fraction(self) -> float:
        return max(self.bubble)


def _check(kind: str, p: int, m: int, v: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"schedule must be one of {', '.join(KINDS)}, got {kind!r}")
    if p < 1 or m < 1 or v < 1:
        raise ValueError(f"ranks, microbatches and chunks must be >= 1, got {p}, {m}, {v}")
    if kind != "interleaved_1f1b" and v != 1:
        raise ValueError(f"{kind} runs one stage per rank (chunks=1), got chunks={v}")
    if kind == "interleaved_1f1b" and m % p:
        raise ValueError(
            f"interleaved 1F1B needs microbatches divisible by the pipeline ranks; got "
            f"{m} microbatches on {p} ranks: use a multiple of {p}"
        )


def make_schedule(kind: str, num_ranks: int, microbatches: int, chunks: int = 1) -> Schedule:
    p, m, v = num_ranks, microbatches, chunks
    _check(kind, p, m, v)
    ranks: list[tuple[Action, ...]] = []
    for r in range(p):
        if kind == "gpipe":
            acts = [Action("F", r, i) for i in range(m)] + [Action("B", r, i) for i in range(m)]
        elif kind == "1f1b":
            acts = _one_f_one_b(r, p, m)
        else:
            acts = _interleaved(r, p, m, v)
        ranks.append(tuple(acts))
    return Schedule(kind, p, m, v, tuple(ranks))


def _one_f_one_b(r: int, p: int, m: int) -> list[Action]:
    warm = min(p - r - 1, m)
    acts = [Action("F", r, i) for i in range(warm)]
    for i in range(m - warm):
        acts += [Action("F", r, warm + i), Action("B", r, i)]
    acts += [Action("B", r, i) for i in range(m - warm, m)]
    return acts


def _interleaved(r: int, p: int, m: int, v: int) -> list[Action]:
    """Megatron-LM's interleaved schedule (``forward_backward_pipelining_with_interleaving``)."""
    total = m * v

    def fwd(k: int) -> Action:
        chunk = (k // p) % v
        return Action("F", chunk * p + r, (k // (p * v)) * p + k % p)

    def bwd(k: int) -> Action:
        chunk = v - 1 - (k // p) % v
        return Action("B", chunk * p + r, (k // (p * v)) * p + k % p)

    warm = min((p - r - 1) * 2 + (v - 1) * p, total)
    acts = [fwd(k) for k in range(warm)]
    for i in range(total - warm):
        acts += [fwd(warm + i), bwd(i)]
    acts += [bwd(k) for k in range(total - warm, total)]
    return acts


def _per_stage(x: float | Sequence[float], n: int, what: str) -> list[float]:
    if isinstance(x, int | float):
        return [float(x)] * n
    if len(x) != n:
        raise ValueError(f"{what} needs one value per stage ({n}), got {len(x)}")
    return [float(t) for t in x]


def simulate(
    schedule: Schedule,
    fwd_s: float | Sequence[float],
    bwd_s: float | Sequence[float],
    p2p_s: float = 0.0,
) -> Simulation:
    """Step time of ``schedule`` with per-stage forward/backward seconds (per microbatch)."""
    n = schedule.num_stages
    fwd, bwd = _per_stage(fwd_s, n, "fwd_s"), _per_stage(bwd_s, n, "bwd_s")
    done: dict[tuple[str, int, int], float] = {}
    clock = [0.0] * schedule.num_ranks
    busy = [0.0] * schedule.num_ranks
    pos = [0] * schedule.num_ranks
    in_flight = [0] * schedule.num_ranks
    peak = [0] * schedule.num_ranks
    remaining = sum(len(a) for a in schedule.ranks)
    while remaining:
        progressed = False
        for r, acts in enumerate(schedule.ranks):
            while pos[r] < len(acts):
                a = acts[pos[r]]
                ready = _ready(a, n, done, p2p_s)
                if ready is None:
                    break
                cost = fwd[a.stage] if a.kind == "F" else bwd[a.stage]
                start = max(clock[r], ready)
                clock[r] = start + cost
                busy[r] += cost
                done[(a.kind, a.stage, a.microbatch)] = clock[r]
                in_flight[r] += 1 if a.kind == "F" else -1
                peak[r] = max(peak[r], in_flight[r])
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = {
                r: str(acts[pos[r]]) for r, acts in enumerate(schedule.ranks) if pos[r] < len(acts)
            }
            raise ValueError(f"schedule {schedule.kind} deadlocks: waiting actions {stuck}")
    step = max(clock)
    bubble = tuple(1.0 - b / step if step > 0 else 0.0 for b in busy)
    return Simulation(step, tuple(busy), bubble, tuple(peak), tuple(clock))


def _ready(a: Action, n: int, done: dict[tuple[str, int, int], float], p2p: float) -> float | None:
    """When the inputs of ``a`` are available on its rank, or None if not yet produced."""
    if a.kind == "F":
        if a.stage == 0:
            return 0.0
        t = done.get(("F", a.stage - 1, a.microbatch))
        return None if t is None else t + p2p
    own = done.get(("F", a.stage, a.microbatch))
    if own is None:
        return None
    if a.stage == n - 1:
        return own
    t = done.get(("B", a.stage + 1, a.microbatch))
    return None if t is None else max(own, t + p2p)


def bubble_theory(num_ranks: int, microbatches: int, chunks: int = 1) -> float:
    """Idle fraction of a balanced pipeline without p2p cost: (p-1) / (v*m + p-1)."""
    p, m, v = num_ranks, microbatches, chunks
    return (p - 1) / (v * m + p - 1)


def step_time(
    kind: str,
    num_ranks: int,
    microbatches: int,
    fwd_s: float | Sequence[float],
    bwd_s: float | Sequence[float],
    p2p_s: float = 0.0,
    chunks: int = 1,
) -> Simulation:
    """Shorthand: build the schedule and simulate it."""
    return simulate(make_schedule(kind, num_ranks, microbatches, chunks), fwd_s, bwd_s, p2p_s)

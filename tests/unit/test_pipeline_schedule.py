"""Pipeline schedules without processes: ordering, dependencies, bubbles, in-flight memory."""

from __future__ import annotations

import pytest

from autopar.pipeline.schedule import (
    Action,
    bubble_theory,
    make_schedule,
    simulate,
    step_time,
)

CASES = [
    ("gpipe", 1, 1, 1),
    ("gpipe", 4, 8, 1),
    ("gpipe", 3, 2, 1),
    ("1f1b", 2, 4, 1),
    ("1f1b", 4, 8, 1),
    ("1f1b", 4, 2, 1),
    ("1f1b", 8, 16, 1),
    ("interleaved_1f1b", 2, 4, 2),
    ("interleaved_1f1b", 4, 8, 2),
    ("interleaved_1f1b", 4, 4, 3),
]


@pytest.mark.parametrize("kind,p,m,v", CASES)
def test_every_action_once_and_forward_before_backward(kind: str, p: int, m: int, v: int) -> None:
    sched = make_schedule(kind, p, m, v)
    seen: list[Action] = [a for acts in sched.ranks for a in acts]
    expected = {(k, s, i) for k in "FB" for s in range(p * v) for i in range(m)}
    assert sorted((a.kind, a.stage, a.microbatch) for a in seen) == sorted(expected)
    for r, acts in enumerate(sched.ranks):
        assert all(sched.rank_of(a.stage) == r for a in acts)
        pos = {(a.kind, a.stage, a.microbatch): i for i, a in enumerate(acts)}
        for (kind_, s, i), at in pos.items():
            if kind_ == "B":
                assert pos[("F", s, i)] < at, f"rank {r}: B{s}.{i} before its forward"


@pytest.mark.parametrize("kind,p,m,v", CASES)
def test_stage_dependencies_hold_in_simulated_time(kind: str, p: int, m: int, v: int) -> None:
    sched = make_schedule(kind, p, m, v)
    # record start/finish by re-simulating with distinct stage costs
    fwd = [1.0 + 0.1 * s for s in range(p * v)]
    bwd = [2.0 + 0.1 * s for s in range(p * v)]
    sim = simulate(sched, fwd, bwd, p2p_s=0.25)
    finish = _finish_times(sched, fwd, bwd, 0.25)
    n = p * v
    for (k, s, i), (start, _) in finish.items():
        if k == "F" and s > 0:
            assert start >= finish[("F", s - 1, i)][1] + 0.25 - 1e-9
        if k == "B":
            assert start >= finish[("F", s, i)][1] - 1e-9
            if s < n - 1:
                assert start >= finish[("B", s + 1, i)][1] + 0.25 - 1e-9
    assert sim.step_s == pytest.approx(max(f for _, f in finish.values()))


def _finish_times(sched, fwd, bwd, p2p):  # type: ignore[no-untyped-def]
    """An independent reference: list scheduling with explicit start times."""
    t = [0.0] * sched.num_ranks
    out: dict[tuple[str, int, int], tuple[float, float]] = {}
    pos = [0] * sched.num_ranks
    n = sched.num_stages
    while any(pos[r] < len(a) for r, a in enumerate(sched.ranks)):
        for r, acts in enumerate(sched.ranks):
            while pos[r] < len(acts):
                a = acts[pos[r]]
                deps = []
                if a.kind == "F" and a.stage > 0:
                    deps.append(("F", a.stage - 1, a.microbatch, p2p))
                if a.kind == "B":
                    deps.append(("F", a.stage, a.microbatch, 0.0))
                    if a.stage < n - 1:
                        deps.append(("B", a.stage + 1, a.microbatch, p2p))
                if any(d[:3] not in out for d in deps):
                    break
                start = max([t[r]] + [out[d[:3]][1] + d[3] for d in deps])
                cost = fwd[a.stage] if a.kind == "F" else bwd[a.stage]
                out[(a.kind, a.stage, a.microbatch)] = (start, start + cost)
                t[r] = start + cost
                pos[r] += 1
    return out


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m", [(2, 2), (2, 4), (4, 4), (4, 8), (4, 16), (8, 8)])
def test_bubble_matches_theory(kind: str, p: int, m: int) -> None:
    tf, tb = 1.0, 2.0
    sim = step_time(kind, p, m, tf, tb)
    assert sim.step_s == pytest.approx((m + p - 1) * (tf + tb))
    assert sim.bubble_fraction == pytest.approx(bubble_theory(p, m))
    assert sim.bubble_fraction == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("p,m,v", [(2, 4, 2), (4, 8, 2), (4, 4, 4)])
def test_interleaving_shrinks_the_bubble(p: int, m: int, v: int) -> None:
    tf, tb = 1.0 / v, 2.0 / v  # the same model cut into p*v chunks
    inter = step_time("interleaved_1f1b", p, m, tf, tb, chunks=v)
    plain = step_time("1f1b", p, m, 1.0, 2.0)
    assert inter.step_s < plain.step_s
    # Megatron's figure: (m + (p-1)/v) * (tf + tb) * v
    assert inter.step_s == pytest.approx((m * v + p - 1) * (tf + tb))
    assert inter.bubble_fraction == pytest.approx(bubble_theory(p, m, v))


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 2), (8, 32)])
def test_peak_in_flight(p: int, m: int) -> None:
    g = step_time("gpipe", p, m, 1.0, 2.0)
    assert g.peak_in_flight == (m,) * p
    f = step_time("1f1b", p, m, 1.0, 2.0)
    assert f.peak_in_flight == tuple(min(m, p - r) for r in range(p))
    assert max(f.peak_in_flight) <= p


def test_p2p_adds_to_the_critical_path() -> None:
    base = step_time("gpipe", 4, 8, 1.0, 2.0).step_s
    slow = step_time("gpipe", 4, 8, 1.0, 2.0, p2p_s=0.5).step_s
    # GPipe: the fill and the drain each cross p-1 boundaries once
    assert slow == pytest.approx(base + 2 * 3 * 0.5)
    # 1F1B also waits on round trips in its steady state, so it pays at least as much
    f_base = step_time("1f1b", 4, 8, 1.0, 2.0).step_s
    f_slow = step_time("1f1b", 4, 8, 1.0, 2.0, p2p_s=0.5).step_s
    assert f_slow >= f_base + 2 * 3 * 0.5


def test_bad_input_is_explained() -> None:
    with pytest.raises(ValueError, match="divisible"):
        make_schedule("interleaved_1f1b", 4, 6, 2)
    with pytest.raises(ValueError, match="schedule must be one of"):
        make_schedule("zb", 2, 2)
    with pytest.raises(ValueError, match="one value per stage"):
        simulate(make_schedule("gpipe", 2, 2), [1.0], 1.0)

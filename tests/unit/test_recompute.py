"""Activation recomputation without processes: the plan field (JSON, validation, summary),
the memory and time the pricing gives it, the solver's choice under a memory budget and the
program the code generator writes for it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import pytest

from autopar.capture import Captured, capture
from autopar.mesh import MeshSpec
from autopar.plan import Plan, PlanError
from autopar.plan_check import check_against
from autopar.solve.planner import PlanInfeasibleError, make_plan
from autopar.solve.recompute import candidates, split_canon
from autopar.testing.parity import build_tiny

MESH = MeshSpec.of(2)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request: pytest.FixtureRequest) -> tuple[str, Captured, dict[str, Plan]]:
    model, args, kwargs = build_tiny(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture(model, args, kwargs)
        plans = {m: make_plan(captured, MESH, "dp", recompute=m)
                 for m in ("none", "selective", "full")}  # fmt: skip
    return request.param, captured, plans


def test_recompute_lowers_activations_and_costs_time(tiny) -> None:
    _, _, plans = tiny
    act = {m: p.predicted.memory["activations"] for m, p in plans.items()}
    step = {m: p.predicted.step_time_s for m, p in plans.items()}
    assert act["full"] < act["selective"] < act["none"], act
    assert step["none"] < step["selective"] < step["full"], step
    assert plans["none"].recompute == ()
    layers = [p for p, _ in plans["full"].recompute]
    assert len(layers) == 2 and all(m == "full" for _, m in plans["full"].recompute)
    assert [p for p, _ in plans["selective"].recompute] == layers
    # the parameter state does not change
    for k in ("params", "grads", "optimizer_state"):
        assert plans["full"].predicted.memory[k] == plans["none"].predicted.memory[k]


def test_json_round_trip_and_old_json(tiny) -> None:
    _, captured, plans = tiny
    for plan in plans.values():
        back = Plan.from_json(plan.to_json())
        assert back == plan and back.recompute == plan.recompute
        check_against(back, captured)
    old = plans["full"].to_json()
    del old["recompute"]  # written before the field existed: no recomputation
    assert Plan.from_json(old).recompute == ()


def test_validation_errors(tiny) -> None:
    _, captured, plans = tiny
    obj = plans["full"].to_json()
    layer = obj["recompute"][0][0]
    for bad, match in (
        ([[layer, "some"]], "recompute mode"),
        ([[layer, "full"], [layer, "selective"]], "twice"),
        ([[layer]], r"\[layer path, mode\]"),
        ({"x": "full"}, "recompute must be a list"),
        ([[3, "full"]], "recompute layer must be a string"),
    ):
        with pytest.raises(PlanError, match=match):
            Plan.from_json({**obj, "recompute": bad})
    unknown = dataclasses.replace(plans["full"], recompute=(("transformer.h.9", "full"),))
    with pytest.raises(PlanError, match="does not have"):
        check_against(unknown, captured)
    with pytest.raises(PlanError, match="not a layer"):
        make_plan(captured, MESH, "dp", recompute={"nope.0": "full"})


def test_summary_shows_recompute(tiny) -> None:
    _, _, plans = tiny
    assert "recompute: full x 2 layers (" in plans["full"].summary()
    assert "recompute:" not in plans["none"].summary()


def test_solver_recomputes_under_a_tight_budget(tiny) -> None:
    from autopar import planning

    _, captured, plans = tiny
    none, full = (plans[m].predicted.memory_per_device_bytes for m in ("none", "full"))
    budget = (none + full) // 2
    plan = make_plan(captured, MESH, "dp", memory_budget=budget)
    assert plan.recompute, "a plan that fits only with recomputation"
    assert plan.predicted.memory_per_device_bytes <= budget
    assert plan.predicted.memory_per_device_bytes == sum(
        v for k, v in plan.predicted.memory.items() if k != "total"
    )
    # the one planning entry chooses the same way
    got = planning.plan(captured, "cpu:2", strategy="dp", memory_budget=budget)
    assert got.recompute and got.predicted.memory_per_device_bytes <= budget
    # a loose budget: no recomputation
    assert make_plan(captured, MESH, "dp", memory_budget=none * 2).recompute == ()
    # below what full recomputation of every layer reaches: refused, saying so
    with pytest.raises(PlanInfeasibleError, match="recomputing every layer"):
        make_plan(captured, MESH, "dp", memory_budget=full * 0.9)


def test_program_calls_recompute(tiny) -> None:
    from autopar.codegen import program_source

    _, captured, plans = tiny
    for mode in ("full", "selective"):
        src = program_source(captured, plans[mode])
        assert src.count("rt.recompute(") == 2 and f"'{mode}'" in src
        assert "RECOMPUTED = {}" in src  # dp: no collectives inside a layer
    assert "rt.recompute(" not in program_source(captured, plans["none"])


def test_candidates_and_split_canon() -> None:
    paths = tuple(f"h.{i}" for i in range(8))
    cands = candidates(paths)
    assert cands[0] == {p: "selective" for p in paths}
    assert [len(c) for c in cands[1:]] == [2, 4, 6, 8]
    assert all(set(c.values()) == {"full"} for c in cands[1:])
    assert list(cands[1]) == ["h.0", "h.1"]  # the first layers
    assert candidates(()) == []
    canon = {"a0": "a0", "a1": "a0", "a2": "a0", "b": "b"}
    split = split_canon(canon, lambda n: n == "a2")
    assert split == {"a0": "a0", "a1": "a0", "a2": "a2", "b": "b"}


def test_runtime_imports_no_planner() -> None:
    code = (
        "import sys, autopar.runtime.recompute, autopar.runtime as rt; "
        "bad = [m for m in sys.modules if m.startswith(('autopar.solve', 'autopar.planning', "
        "'autopar.pipeline.plan3d', 'autopar.capture', 'cost_models'))]; "
        "assert not bad, bad; assert rt.recompute"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

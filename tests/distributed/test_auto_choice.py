"""``autopar.compile(strategy="auto")`` on 4 gloo ranks picks a different kind of plan when
the memory budget rules out its previous pick, and each pick trains in parity.

Contract: for GPT-2 and LLaMA tiny (SGD), the test plans in this process exactly as
``compile`` does on rank 0 (``planning.plan`` for ``cpu:4``, fp32, the same microbatch
capture), first without a budget, then under a budget of the previous pick's predicted
per-device memory (``plan.predicted.memory_per_device_bytes``) times ``MARGIN`` (that pick no
longer fits, so the answer must change; a 2% margin, not one byte, which lies inside the
solver's feasibility tolerance), until the kind of plan changes. No budget is a fixed
number; each comes from the planner's own figure. Together the two chains cover all three
kinds: GPT-2 goes from a pipeline to a tp mix, LLaMA from pure dp to a pipeline. The kind of every pick is asserted ("dp": one ``dp`` axis over the
4 ranks, no stages; "pipeline": ``pp`` stages; "tp": a flat mesh with a ``tp`` axis), then
``compile(strategy="auto", memory_budget=...)`` runs on 4 ranks and must choose the same
kind: the loss at every step and every parameter after 3 SGD steps match the
single-process model within ``parity.TOLERANCE`` (``parity.check``, which for flat plans
also compares the collectives issued in a step with the program's and the program's
explicit ones with the plan's), a data-parallel pick all-reduces gradients, a
tensor-parallel pick shards activations and reshards them with explicit collectives, a
pipeline has its stages (2, or 4 chunks interleaved) on a ``pp`` axis of 2.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from autopar.testing.parity import build_tiny, check, train_parity

pytestmark = pytest.mark.slow

# per model, the kinds auto picks: without a budget, then each time its pick no longer fits
MARGIN = 0.98
CHAINS = {"gpt2": ("pipeline", "tp"), "llama": ("dp", "pipeline")}


def kind_of(mesh: dict[str, int], stages: int) -> str:
    if stages:
        return "pipeline"
    if mesh.get("tp", 1) > 1:
        return "tp"
    return "dp" if set(mesh) == {"dp"} else f"other {mesh}"


def plan_chain(example: str, kinds: int, most: int = 4) -> list[tuple[float | None, str, int]]:
    """(budget, kind, predicted bytes per device) of each pick that changes the kind,
    planned as compile plans: without a budget, then each time under the previous pick's
    predicted memory minus one byte, until ``kinds`` kinds were picked (at most ``most``
    plans)."""
    from autopar import planning
    from autopar.capture import capture
    from autopar.pipeline.runtime import microbatch_capture
    from cost_models import ClusterSpec

    model, args, kwargs = build_tiny(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture(model, args, kwargs)
        per_microbatch = microbatch_capture(model, args, kwargs)
        chain: list[tuple[float | None, str, int]] = []
        budget: float | None = None
        for _ in range(most):
            plan = planning.plan(captured, ClusterSpec.cpu(4), strategy="auto", precision="fp32",
                                 memory_budget=budget, optimizer="sgd",
                                 microbatch_capture=per_microbatch)  # fmt: skip
            memory = plan.predicted.memory_per_device_bytes
            assert budget is None or memory <= budget, (budget, memory)
            mesh = dict((plan.pipeline or {}).get("mesh") or zip(plan.mesh.names, plan.mesh.sizes))
            kind = kind_of(mesh, len(plan.stages))
            if not chain or chain[-1][1] != kind:
                chain.append((budget, kind, memory))
            if len(chain) == kinds:
                break
            budget = MARGIN * memory  # the pick no longer fits: the answer must change
    return chain


def ran_kind(r: dict[str, Any]) -> str:
    if "stages" in r:
        return kind_of(r["pipeline"]["mesh"], r["stages"])
    return kind_of(r["mesh"], 0)


@pytest.mark.xfail(
    strict=False,
    reason="auto's pick is not yet deterministic: the time-limited layer ILPs of the 3D search "
    "can rank candidates differently from run to run (seen: llama unbounded picked dp2 x tp2 "
    "once instead of dp=4); the picks are asserted, and a pass is reported as XPASS",
)
@pytest.mark.parametrize("example", sorted(CHAINS))
def test_auto_picks_change_with_the_budget_and_train_in_parity(pool4, example: str) -> None:
    chain = plan_chain(example, len(CHAINS[example]))
    assert tuple(kind for _, kind, _ in chain) == CHAINS[example], chain
    for budget, kind, memory in chain:
        result = pool4.run(train_parity, example, "auto", None, ("sgd",), 3, None, budget,
                           timeout_s=400)[0]  # fmt: skip
        check(result)
        r = result["sgd"]
        assert ran_kind(r) == kind, (budget, kind, r.get("mesh"), r.get("pipeline"))
        assert r["memory"]["total"] == memory, (budget, r["memory"], memory)
        if kind == "pipeline":
            assert r["pipeline"]["mesh"].get("pp") == 2, r["pipeline"]
        if kind == "dp":  # gradients are all-reduced over the 4 replicas
            assert r["comms"].get("all_reduce", 0) > 0, r["comms"]
        if kind == "tp":  # activations are sharded: the program reshards them explicitly
            assert r["sharded"] > 0 and sum(r["explicit"].values()) > 0, r["explicit"]

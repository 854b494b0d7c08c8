"""Activation recomputation run for real on 2 gloo ranks (``rt.recompute`` in the generated
program): full and selective recomputation of every layer under dp, tp, fsdp and a
pp=2 pipeline match the single-process model (the loss at every step, every parameter
after 3 steps, fp32 tolerances of ``autopar.testing.parity.TOLERANCE``); the collectives
issued equal the program's (a recomputed layer issues its forward collectives again in
backward); and what a step really keeps for backward is the plan's activation figure
within 10%.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from autopar.testing.parity import check, train_parity

MODELS = ["gpt2", "llama"]


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("strategy", ["dp", "tp", "fsdp"])
@pytest.mark.parametrize("example", MODELS)
def test_recompute_parity(pool2, example: str, strategy: str, mode: str) -> None:
    results = pool2.run(train_parity, example, strategy, None, ("sgd",), 3, None, None, mode,
                        timeout_s=400)  # fmt: skip
    for result in results:
        check(result)
    r = results[0]["sgd"]
    assert r["recompute"] and {m for _, m in r["recompute"]} == {mode}, r["recompute"]
    if strategy == "tp":  # the row-parallel all-reduces run again in the recomputation
        assert r["recomputed"].get("all_reduce", 0) > 0, r["recomputed"]
    if strategy == "fsdp":
        assert "fsdp" in r["program_modes"].values(), r["program_modes"]


def test_recompute_parity_adamw(pool2) -> None:
    for result in pool2.run(train_parity, "llama", "tp", None, ("adamw",), 3, None, None,
                            "selective", timeout_s=400):  # fmt: skip
        check(result)


def activations(rank: int, world: int, example: str, mode: str) -> dict[str, tuple[int, int]]:
    """(bytes a step keeps for backward, the plan's activation figure) per strategy."""
    import autopar
    from autopar.testing.memory import saved_bytes
    from autopar.testing.parity import build_tiny, recompute_plan

    out = {}
    for strategy in ("dp", "tp", "fsdp"):
        model, args, kwargs = build_tiny(example)
        plan = recompute_plan(model, args, kwargs, strategy, mode)
        compiled = autopar.compile(model, args, kwargs, plan=plan)
        out[strategy] = (saved_bytes(compiled, *args, **kwargs),
                         int(compiled.plan.predicted.memory["activations"]))  # fmt: skip
    return out


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("example", MODELS)
def test_recompute_memory_truth(pool2, example: str, mode: str) -> None:
    for result in pool2.run(activations, example, mode, timeout_s=400):
        for strategy, (measured, planned) in result.items():
            print(
                f"{example} {strategy} {mode}: measured {measured} planned {planned} "
                f"ratio {measured / planned:.4f}"
            )
            assert abs(measured - planned) <= 0.10 * planned, (
                f"{example} {strategy} {mode}: measured {measured} bytes kept, plan {planned}"
            )


def pipeline_plan(example: str, mode: str) -> str:
    """The pp=2 pipeline plan (planned here, in the test process: a 3D search outlasts the
    ranks' collective timeout) with every layer of every stage recomputed, as JSON."""
    from autopar import planning
    from autopar.capture import capture
    from autopar.pipeline.runtime import microbatch_capture
    from autopar.testing.parity import build_tiny
    from cost_models import ClusterSpec

    model, args, kwargs = build_tiny(example)
    piped = planning.plan(capture(model, args, kwargs), ClusterSpec.cpu(2), mesh={"pp": 2},
                          schedule="1f1b",
                          microbatch_capture=microbatch_capture(model, args, kwargs))  # fmt: skip
    stages = tuple(dataclasses.replace(st, recompute=_layers(st, mode)) for st in piped.stages)
    return dataclasses.replace(piped, stages=stages).dumps()


def pipeline_recompute(rank: int, world: int, example: str, plan_json: str) -> dict[str, Any]:
    """The pipeline of ``plan_json`` (its stages recompute), trained 3 SGD steps."""
    import copy
    import json

    import torch

    import autopar
    from autopar.plan import Plan
    from autopar.testing.parity import build_tiny, state_diffs

    model, args, kwargs = build_tiny(example)
    ref = copy.deepcopy(model)
    compiled = autopar.compile(model, args, kwargs, plan=Plan.from_json(json.loads(plan_json)))
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    losses, ref_losses = [], []
    for _ in range(3):
        opt_ref.zero_grad()
        loss_ref = ref(*args, **kwargs).loss
        loss_ref.backward()
        opt_ref.step()
        opt.zero_grad()
        losses.append(float(compiled.step(*args, **kwargs)))
        opt.step()
        ref_losses.append(float(loss_ref.detach()))
    diffs, missing = state_diffs(compiled.full_state_dict(), ref.state_dict())
    return {
        "losses": losses,
        "ref_losses": ref_losses,
        "diffs": diffs,
        "missing": missing,
        "recompute": [list(st.recompute) for st in compiled.plan.stages],
        "calls": sum(len(m.module.RECOMPUTE) for m in compiled.stages),
    }  # this rank's


def _layers(stage: Any, mode: str) -> tuple[tuple[str, str], ...]:
    """Every layer of a stage plan (the module paths ending in a layer index)."""
    from autopar.plan import _layer_key

    paths = {_layer_key(n.module) for n in stage.nodes if n.kind == "op" and n.module}
    layers = sorted(p for p in paths if p.rsplit(".", 1)[-1].isdigit())
    return tuple((p, mode) for p in layers)


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("example", MODELS)
def test_recompute_pipeline_parity(pool2, example: str, mode: str) -> None:
    from autopar.testing.pipeline_parity import check as pipeline_check

    results = pool2.run(pipeline_recompute, example, pipeline_plan(example, mode), timeout_s=400)
    for r in results:
        pipeline_check({**r, "moved": 1.0})
    assert all(results[0]["recompute"]), results[0]["recompute"]  # every stage recomputes
    assert all(r["calls"] > 0 for r in results), [r["calls"] for r in results]


def bf16_recompute(rank: int, world: int, strategy: str, mode: str) -> dict[str, Any]:
    """LLaMA tiny in bf16-mixed with every layer recomputed, against the single process
    under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (see test_precision)."""
    import copy

    import torch

    import autopar
    from autopar.testing.parity import build_tiny, recompute_plan

    model, args, kwargs = build_tiny("llama")
    ref = copy.deepcopy(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    plan = recompute_plan(model, args, kwargs, strategy, mode, precision="bf16-mixed")
    compiled = autopar.compile(model, args, kwargs, plan=plan)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (compiled, ref)]
    losses, ref_losses = [], []
    for _ in range(3):
        for o in opts:
            o.zero_grad()
        losses.append(float(compiled.step(*args, **kwargs)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r = ref(*args, **kwargs).loss
        r.backward()
        ref_losses.append(float(r))
        for o in opts:
            o.step()
    full = compiled.full_state_dict()
    moved = {k: (float((full[k] - v).abs().max()), float((v - start[k]).abs().max()))
             for k, v in ref.state_dict().items()}  # fmt: skip
    return {"losses": losses, "ref": ref_losses, "moved": moved,
            "recompute": list(compiled.plan.recompute)}  # fmt: skip


@pytest.mark.parametrize(("strategy", "mode"), [("tp", "selective"), ("fsdp", "full")])
def test_recompute_bf16_mixed(pool2, strategy: str, mode: str) -> None:
    """Tolerances of test_precision: loss within 5e-4 relative, parameters within 5% of
    how far they moved."""
    r = pool2.run(bf16_recompute, strategy, mode, timeout_s=400)[0]
    assert r["recompute"], r
    for step, (a, b) in enumerate(zip(r["losses"], r["ref"])):
        assert abs(a - b) <= 5e-4 * abs(b), f"step {step}: loss {a} vs autocast {b}"
    for key, (diff, move) in r["moved"].items():
        assert diff <= 0.05 * move + 1e-7, f"{key}: off by {diff}, moved {move}"

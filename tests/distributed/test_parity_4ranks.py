"""Parity on 4 gloo ranks: ``auto`` on a named {"dp": 2, "tp": 2} mesh for every bundled
example, 3 SGD and 3 AdamW steps against the single-process model."""

from __future__ import annotations

import pytest

from autopar.testing.parity import check, train_parity


@pytest.mark.parametrize("example", ["mlp", "gpt2", "bert", "llama"])
def test_auto_2d_mesh(pool4, example: str) -> None:
    result = pool4.run(train_parity, example, "auto", {"dp": 2, "tp": 2}, timeout_s=400)[0]
    check(result)


def test_forced_tp_on_2d_mesh_is_really_sharded(pool4) -> None:
    result = pool4.run(train_parity, "gpt2", "tp", {"dp": 2, "tp": 2}, ("sgd",), timeout_s=400)[0]
    check(result)
    assert result["sgd"]["sharded"] > 0


def test_auto_2d_mesh_under_a_tight_budget_shards_parameters(pool4) -> None:
    import importlib
    import warnings

    from autopar.capture import capture
    from autopar.mesh import MeshSpec
    from autopar.solve.planner import make_plan

    mesh = {"dp": 2, "tp": 2}
    model, args, kwargs = importlib.import_module("autopar.zoo.llama").build("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture(model, args, kwargs)
        totals = {
            s: make_plan(captured, MeshSpec.of(mesh), s).predicted.memory_per_device_bytes
            for s in ("auto", "fsdp")
        }
    assert totals["fsdp"] < totals["auto"]
    budget = (totals["fsdp"] + totals["auto"]) // 2
    results = pool4.run(train_parity, "llama", "auto", mesh, ("sgd",), 3, None, budget,
                        timeout_s=400)  # fmt: skip
    for result in results:
        check(result)
        r = result["sgd"]
        for kind in ("params", "grads", "optimizer_state"):
            assert r["held"][kind] == r["memory"][kind], (kind, r["held"], r["memory"])
    assert results[0]["sgd"]["memory"]["total"] <= budget

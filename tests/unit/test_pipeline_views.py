"""Every view of a pipeline plan (one with ``stages``) of a 70B LLaMA.

The model is LLaMA 70B's layer (hidden 8192, 64 heads, 8 KV heads, MLP 28672, vocabulary
32000, bf16 on the meta device) with 4 of its 80 blocks, so it captures in seconds; it is
planned once for this module on ``8x8xH100`` with fixed degrees ``tp=8,pp=4,dp=2``, and a
flat plan (``tp``: TP inside a node, DP across) is made for ``autopar diff``. Then:
``autopar explain`` (stage count and a stage column), ``autopar explain --node`` on a
node of stage 1 (the model rebuilt at the microbatch and cut at the plan's stages),
``autopar diff`` of the pipeline plan against the flat one, the pictures of
``--visualize`` (``autopar.viz.write_pictures``) and ``autopar emit``'s program files
(``autopar.emit.emit`` with the plan's stage graphs; no weights are materialised).
"""

from __future__ import annotations

import dataclasses
import py_compile
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from autopar.cli import main
from autopar.plan import Plan

pytestmark = pytest.mark.slow

LAYERS = 4
BATCH, SEQ = 8, 1024
SPEC = f"{Path(__file__).resolve()}:build"
CLUSTER = "8x8xH100"


def build(batch: int = BATCH) -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:
    """LLaMA 70B's blocks, ``LAYERS`` of them, on the meta device in bf16."""
    from transformers import LlamaForCausalLM

    from autopar.zoo.llama import config

    cfg = config("70b")
    cfg.num_hidden_layers = LAYERS
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    ids = torch.empty((batch, SEQ), dtype=torch.long, device="meta")
    return model, (), {"input_ids": ids, "labels": ids}


def _capture(batch: int) -> Any:
    from autopar.capture import capture

    model, args, kwargs = build(batch)
    return capture(model, args, kwargs)


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from autopar.planning import plan

    d = tmp_path_factory.mktemp("pipeline_views")
    source = {"model": SPEC, "cluster": CLUSTER, "batch_size": BATCH, "seq_len": SEQ}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = _capture(BATCH)
        pp = plan(captured, CLUSTER, strategy="tp=8,pp=4,dp=2", microbatch_capture=_capture)
        flat = plan(captured, CLUSTER, strategy="tp")
    pp = dataclasses.replace(pp, source={**pp.source, **source})
    flat = dataclasses.replace(flat, source={**flat.source, **source})
    pp.save(d / "pp.json")
    flat.save(d / "flat.json")
    return {"dir": d, "plan": pp, "flat": flat, "captured": captured}


def test_the_plan_has_four_stages(planned: dict[str, Any]) -> None:
    plan: Plan = planned["plan"]
    assert len(plan.stages) == 4 and plan.pipeline is not None
    assert plan.pipeline["num_stages"] == 4 and plan.pipeline["mesh"] == {"pp": 4, "dp": 2, "tp": 8}
    assert all(st.mesh.num_devices == 16 for st in plan.stages)
    assert [st.source["stage"] for st in plan.stages] == [0, 1, 2, 3]
    loaded = Plan.load(planned["dir"] / "pp.json")
    assert len(loaded.stages) == 4


def test_explain_lists_the_stages(planned: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", str(planned["dir"] / "pp.json"), "--top", "10"]) == 0
    out = capsys.readouterr().out
    assert "4 pipeline stages" in out and "stage" in out and "compute" in out


def _stage1_matmul(plan: Plan) -> str:
    first = {n.name for n in plan.stages[0].nodes}
    return next(n.name for n in plan.stages[1].nodes
                if n.kind == "op" and n.op in ("linear", "mm", "addmm") and n.name not in first)  # fmt: skip


def test_explain_node_of_stage_1(planned: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    from autopar.cli.explain import alternatives

    plan: Plan = planned["plan"]
    name = _stage1_matmul(plan)
    alts = alternatives(plan, name, SPEC)
    assert alts[0]["chosen"] and len(alts) > 1
    path = str(planned["dir"] / "pp.json")
    assert main(["explain", path, "--node", name, "--model", SPEC]) == 0
    out = capsys.readouterr().out
    assert name in out and "pipeline stage 1" in out and "chosen" in out


def test_diff_pipeline_against_flat(planned: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    d = planned["dir"]
    assert main(["diff", str(d / "flat.json"), str(d / "pp.json")]) == 0
    out = capsys.readouterr().out
    assert "nodes placed differently" in out
    assert "(dp=8, tp=8)" in out and "(dp=2, tp=8)" in out  # the two meshes side by side
    from autopar.cli.diff import differences

    assert differences(planned["flat"], planned["plan"])  # some placement differs


def test_pictures_of_the_pipeline(planned: dict[str, Any], tmp_path: Path) -> None:
    from autopar.viz import dataflow_edges, write_pictures

    plan, captured = planned["plan"], planned["captured"]
    edges = dataflow_edges(captured.graph_module)
    page = write_pictures(plan, tmp_path / "plan.html", edges, "llama 70b layers")
    assert page.paths and all(p.exists() and p.stat().st_size > 0 for p in page.paths)
    text = (tmp_path / "plan.html").read_text()
    assert "<svg" in text and "stage" in text.lower()
    svg = write_pictures(plan, tmp_path / "plan.svg", edges, "llama 70b layers")
    names = {p.name for p in svg.paths}
    assert "plan.schedule.svg" in names and "plan.memory.svg" in names
    assert "plan.svg" in names or "plan.dot" in names  # the graph, or its source without dot


def test_emit_writes_one_program_per_stage(planned: dict[str, Any], tmp_path: Path) -> None:
    from autopar.emit import emit
    from autopar.plan_check import check_against
    from autopar.planning.pipeline import stage_graphs

    plan: Plan = planned["plan"]
    info = plan.pipeline or {}
    mb = BATCH // int(info["microbatches"])
    split = stage_graphs(_capture(mb), tuple(tuple(s["units"]) for s in info["stages"]))
    for st in split.stages:
        check_against(plan.stages[st.index], st.captured)
    launch = emit(plan, planned["captured"], SPEC, tmp_path, stage_graphs=split)
    assert "--nproc-per-node 64" in launch
    for k in range(4):
        py_compile.compile(str(tmp_path / f"program_stage{k}.py"), doraise=True)
    assert Plan.load(tmp_path / "plan.json").stages

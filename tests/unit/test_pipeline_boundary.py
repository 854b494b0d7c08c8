"""Stage boundaries on a dp x tp submesh: what a stage sends and receives, and what its
plan and its program pay for it (no processes)."""

from __future__ import annotations

import warnings

import torch

from autopar.capture import capture
from autopar.codegen.lower import lower
from autopar.mesh import MeshSpec
from autopar.pipeline.layers import LayerPricer, sub_cluster, submesh
from autopar.pipeline.pricing import layer_cost, runtime_modes
from autopar.placement import R, Shard
from autopar.planning.pipeline import stage_graphs
from autopar.solve.graph import boundary_layout, build_graph
from autopar.solve.planner import make_plan
from autopar.strategies.types import TensorMeta
from cost_models import ClusterSpec, CostModel

MESH = MeshSpec((("dp", 2), ("tp", 2)))
CLUSTER = ClusterSpec.parse("1x4xA100-80GB")


def _gpt2(batch: int = 8):  # type: ignore[no-untyped-def]
    from autopar.zoo import gpt2

    model, args, kwargs = gpt2.build("tiny", device="meta", batch_size=batch, seq_len=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return capture(model, args, kwargs)


def _two_stages():  # type: ignore[no-untyped-def]
    captured = _gpt2()
    return stage_graphs(captured, ((0, 2), (2, 4)))  # embeddings + block 0 | block 1 + head


def test_boundary_layout_splits_the_microbatch_over_dp_only() -> None:
    names, sizes = MESH.names, MESH.sizes
    act = TensorMeta((8, 16, 64), torch.bfloat16)
    assert boundary_layout(act, names, sizes, 8) == (Shard(0), R)
    assert boundary_layout(TensorMeta((1, 16), torch.long), names, sizes, 8) == (R, R)
    assert boundary_layout(TensorMeta((), torch.float32), names, sizes, 8) == (R, R)
    assert boundary_layout(TensorMeta((7, 4), torch.float32), names, sizes, 7) == (R, R)


def test_a_stage_sends_its_piece_and_pays_no_dp_gather_for_it() -> None:
    split = _two_stages()
    first, second = (st.captured for st in split.stages)
    assert first.whole_outputs and not first.input_grads and first.stage_batch == 8
    assert second.input_grads and not second.whole_outputs
    cm = CostModel(CLUSTER, MESH)
    # batch split over dp (Megatron's layout): nothing moves over dp into the sink
    tp = make_plan(first, MESH, "tp", cm, memory_budget=1e18)
    into_sink = [c for r in tp.reshards if r.dst == "output" for c in r.collectives]
    assert not [c for c in into_sink if c.axis == "dp"], into_sink
    # whatever the ILP picks, the sink never makes it gather a value over dp to send it
    plan = make_plan(first, MESH, "auto", cm, memory_budget=1e18)
    into_sink = [c for r in plan.reshards if r.dst == "output" for c in r.collectives]
    assert not [c for c in into_sink if c.axis == "dp" and c.phase == "forward"], into_sink
    sink = next(n for n in plan.nodes if n.kind == "output")
    floats = [lay for lay in sink.ins if lay[0] == Shard(0)]
    assert floats, "the hidden state leaves split over dp"
    # the program returns exactly that piece: its layout is the sink's
    ir = lower(first, plan)
    assert "S(0)R" in ir.output_layouts


def test_the_next_stage_receives_that_piece_and_its_gradient_is_priced() -> None:
    split = _two_stages()
    second = split.stages[1].captured
    graph = build_graph(second, MESH)
    received = [n for n in graph.nodes.values() if n.kind == "input"]
    assert received and all(len(n.strategies) == 1 for n in received)
    hidden = next(n for n in received if n.out_metas[0].is_float)
    assert hidden.strategies[0].outs[0] == (Shard(0), R) and hidden.requires_grad
    plan = make_plan(second, MESH, "auto", CostModel(CLUSTER, MESH), memory_budget=1e18)
    ir = lower(second, plan)
    assert all(lay == "S(0)R" for lay in ir.input_layouts), ir.input_layouts
    # nothing gathers the received activation over dp before the block uses it
    gathers = [c for r in plan.reshards if r.src == hidden.name for c in r.collectives
               if c.axis == "dp" and c.phase == "forward"]  # fmt: skip
    assert not gathers, gathers


def test_a_middle_layer_is_priced_without_a_stage_output_gather() -> None:
    pricer = LayerPricer(_gpt2(), CLUSTER)
    cost = pricer.price(1, 2, 2, 8)  # a block on dp2 x tp2
    into_sink = [c for r in cost.plan.reshards if r.dst == "output" for c in r.collectives]
    assert not [c for c in into_sink if c.axis == "dp" and c.phase == "forward"], into_sink


def test_gathers_kept_through_the_schedule_are_paid_once_per_step() -> None:
    """ZeRO-2 parameters: torch's schedules keep FSDP2's gathered copy until the last
    backward, so their gathers are per step; an "explicit" parameter's reshard statements
    run every microbatch."""
    pricer = LayerPricer(_gpt2(), CLUSTER)
    graph = pricer.graph_at(1, 8)
    mesh = submesh(4, 1)
    cm = CostModel(sub_cluster(CLUSTER, 4), mesh)
    plan = make_plan(graph, mesh, "zero", cm, memory_budget=1e18)
    modes = runtime_modes(graph, plan)
    assert "zero2" in modes.values()
    held = layer_cost(plan, cm, modes)
    every = layer_cost(plan, cm, dict.fromkeys(modes, "explicit"))
    assert every.micro_s > held.micro_s and held.step_comm_s > every.step_comm_s
    assert held.step_price(16, cm) < every.step_price(16, cm)

"""The 3D plan without processes: rebatching, per-layer ILP prices, the refined search,
the uniform-grid baseline it must beat, the Plan it emits, and the CLI path."""

from __future__ import annotations

import warnings

import pytest
import torch

from autopar.capture import capture
from autopar.pipeline.layers import LayerPricer, sub_cluster
from autopar.pipeline.plan3d import price_mesh, search, to_plan
from autopar.pipeline.rebatch import batch_of, rebatch
from autopar.planning.session import Request, make
from cost_models import ClusterSpec


def _captured(example: str, batch: int = 8, seq: int = 16):  # type: ignore[no-untyped-def]
    import importlib

    mod = importlib.import_module(f"autopar.zoo.{example}")
    model, args, kwargs = mod.build("tiny", device="meta", batch_size=batch, seq_len=seq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return capture(model, args, kwargs)


@pytest.mark.parametrize("example", ["gpt2", "llama", "bert"])
def test_rebatch_matches_a_fresh_capture(example: str) -> None:
    small, big = _captured(example, 4), _captured(example, 6)
    again = rebatch(small, 6)
    assert batch_of(again) == 6 and batch_of(small) == 4  # the original is unchanged
    ref = {n.name: n.meta.get("val") for n in big.graph_module.graph.nodes}
    checked = 0
    for node in again.graph_module.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            assert tuple(val.shape) == tuple(ref[node.name].shape), node.name
            checked += 1
    assert checked > 50


def test_layer_prices_are_cached_per_key_and_grow_with_the_microbatch() -> None:
    pricer = LayerPricer(_captured("gpt2"), ClusterSpec.parse("2x2xH100"))
    assert pricer.count == 4 and pricer.kinds == 3  # embeddings, 2 blocks, head
    assert pricer.units.labels == ("<pre>", "transformer.h.0", "transformer.h.1", "<post>")
    one = pricer.price(1, 1, 2, 2)
    solved = pricer.plans_solved
    assert pricer.price(1, 1, 2, 2) is one and pricer.plans_solved == solved
    four = pricer.price(1, 1, 2, 8)
    assert four.micro_s > one.micro_s and four.act_bytes > one.act_bytes
    assert one.state_bytes > 0 and one.plan.mesh.names == ("tp",)


def test_sub_cluster_keeps_stages_inside_or_across_whole_nodes() -> None:
    cluster = ClusterSpec.parse("4x8xH100")
    assert (sub_cluster(cluster, 4).num_nodes, sub_cluster(cluster, 4).devices_per_node) == (1, 4)
    assert sub_cluster(cluster, 16).num_nodes == 2
    with pytest.raises(ValueError, match="whole nodes"):
        sub_cluster(cluster, 12)


def test_search_ranks_fitting_plans_and_forces_pipelines() -> None:
    cap = _captured("llama")
    cluster = ClusterSpec.parse("2x2xH100")
    ranked = search(cap, cluster)
    steps = [c.step_s for c in ranked.candidates if c.fits]
    assert steps == sorted(steps) and ranked.best.fits
    for c in ranked.candidates:
        assert c.pp * c.dp * c.tp == 4 and 2 % c.tp == 0
        assert c.bounds[0][0] == 0 and c.bounds[-1][1] == 4
    forced = search(cap, cluster, strategy="pp", pricer=ranked.pricer)
    assert all(c.pp > 1 for c in forced.candidates)
    assert forced.best.step_s >= ranked.best.step_s - 1e-12
    fixed = search(cap, cluster, fixed={"pp": 2, "dp": 2}, pricer=ranked.pricer)
    assert all((c.pp, c.dp, c.tp) == (2, 2, 1) for c in fixed.candidates)


def test_dp_partition_never_loses_to_the_even_split() -> None:
    cap = _captured("gpt2")
    cluster = ClusterSpec.parse("2x2xH100")
    pricer = LayerPricer(cap, cluster)
    budget = 1e12
    for pp, dp, tp in ((2, 2, 1), (2, 1, 2)):
        ours = price_mesh(pricer, cluster, pp, dp, tp, 4, budget)
        even = price_mesh(pricer, cluster, pp, dp, tp, 4, budget, uniform=True)
        assert ours and even
        assert ours[0].step_s <= even[0].step_s + 1e-12


def test_to_plan_fills_the_pipeline_record() -> None:
    cap = _captured("gpt2")
    cluster = ClusterSpec.parse("2x2xH100")
    ranked = search(cap, cluster, strategy="pp")
    plan = to_plan(ranked, cap, cluster)
    info = plan.pipeline
    assert info is not None and info["mesh"]["pp"] == ranked.best.pp > 1
    assert plan.predicted.step_time_s == pytest.approx(ranked.best.step_s)
    assert plan.cluster == str(cluster)
    units = [s["units"] for s in info["stages"]]
    assert units[0][0] == 0 and units[-1][1] == 4
    assert all(a[1] == b[0] for a, b in zip(units, units[1:]))
    for s in info["stages"]:
        assert (
            s["modules"]
            and s["forward_s"] > 0
            and s["backward_s"] == pytest.approx(2 * s["forward_s"])
        )
        assert s["memory_bytes"] > 0
    assert any("wte" in m for m in info["stages"][0]["modules"])
    assert "lm_head" in info["stages"][-1]["modules"]
    assert [r["step_time_s"] for r in info["runners_up"]] == [
        c.step_s for c in ranked.candidates[1 : 1 + len(info["runners_up"])]
    ]
    assert plan.to_json()["pipeline"] == info  # JSON-able


def test_cli_plans_pipelines_and_fixed_mixes() -> None:
    plan, _ = make(Request("gpt2-tiny", cluster="2x2xH100", strategy="pp=2,dp=2"))
    assert plan.pipeline is not None and plan.pipeline["mesh"] == {"pp": 2, "dp": 2}
    assert len(plan.stages) >= 2 and all(st.mesh == plan.mesh for st in plan.stages)
    assert plan.source["model"] == "gpt2-tiny"
    with pytest.raises(ValueError, match="pp, dp or tp"):
        make(Request("gpt2-tiny", cluster="2x2xH100", strategy="pp=2,xp=2"))

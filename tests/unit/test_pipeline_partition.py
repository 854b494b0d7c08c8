"""Stage partitioning without processes: the layer DP against brute force, memory and
p2p terms, layer discovery on captured models, the split into stage programs, and a ViT's
parameter-only ops (class token, position embeddings) kept in one stage, with the chained
stage programs' accumulated gradients equal to the model's."""

from __future__ import annotations

import copy
import functools
import importlib
import itertools
import json
import random
import warnings

import pytest
import torch
from torch.fx._pytree import tree_flatten_spec

from autopar.capture import capture
from autopar.mesh import MeshSpec
from autopar.pipeline.partition import InfeasibleError, find_units, partition, uniform_cost
from autopar.pipeline.split import split_stages
from autopar.pipeline.stages import choose_stages
from cost_models import ClusterSpec, CostModel


def _brute(costs, stages, m, send=None, mem=None, limit=None):  # type: ignore[no-untyped-def]
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), stages - 1):
        b = (0, *cuts, n)
        ranges = list(zip(b, b[1:]))
        if mem and any(mem(i, j, s) > limit for s, (i, j) in enumerate(ranges)):
            continue
        per = [sum(costs[i:j]) + (send(j) if send and j < n else 0.0) for i, j in ranges]
        v = (m - 1) * max(per) + sum(per)
        if best is None or v < best[0] - 1e-12:
            best = (v, tuple(ranges))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_dp_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n, stages, m = rng.randint(3, 9), rng.randint(1, 3), rng.choice([1, 2, 4, 8])
    stages = min(stages, n)
    costs = [rng.uniform(0.5, 3.0) for _ in range(n)]
    sends = [rng.uniform(0.0, 0.5) for _ in range(n + 1)]
    part = partition(n, stages, m, uniform_cost(costs), p2p=lambda j: sends[j])
    value, bounds = _brute(costs, stages, m, send=lambda j: sends[j])
    assert part.step_s == pytest.approx(value)
    assert len(part.bounds) == stages
    assert part.bounds[0][0] == 0 and part.bounds[-1][1] == n


def test_uniform_layers_split_evenly() -> None:
    part = partition(8, 4, 8, uniform_cost([1.0] * 8))
    assert part.bounds == ((0, 2), (2, 4), (4, 6), (6, 8))
    assert part.step_s == pytest.approx(7 * 2 + 8)


def test_heavy_embedding_gets_fewer_layers() -> None:
    costs = [4.0] + [1.0] * 8  # a big embedding/head unit first
    part = partition(9, 3, 16, uniform_cost(costs))
    assert part.bounds[0][1] - part.bounds[0][0] < part.bounds[1][1] - part.bounds[1][0]


def test_memory_limit_is_respected_and_explained() -> None:
    costs = [1.0] * 6
    mem = lambda i, j, s: 10.0 * (j - i) + (30.0 if s == 0 else 0.0)  # noqa: E731
    part = partition(6, 2, 4, uniform_cost(costs), memory=mem, memory_limit=50.0)
    assert all(x <= 50.0 for x in part.memory)
    assert part.bounds == ((0, 2), (2, 6))
    assert _brute(costs, 2, 4, mem=mem, limit=50.0)[1] == part.bounds
    with pytest.raises(InfeasibleError, match="memory limit"):
        partition(6, 2, 4, uniform_cost(costs), memory=mem, memory_limit=20.0)
    with pytest.raises(InfeasibleError, match="at least one layer"):
        partition(2, 3, 4, uniform_cost([1.0, 1.0]))


@functools.cache
def _captured(example: str):  # type: ignore[no-untyped-def]
    model, args, kwargs = importlib.import_module(f"autopar.zoo.{example}").build("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, args, kwargs, capture(model, args, kwargs)


@pytest.mark.parametrize("example,prefix", [("gpt2", "transformer.h"), ("llama", "model.layers")])
def test_units_follow_the_module_hierarchy(example: str, prefix: str) -> None:
    _, _, _, cap = _captured(example)
    units = find_units(cap.graph_module, cap.param_names)
    assert units.prefix == prefix
    assert units.labels == ("<pre>", f"{prefix}.0", f"{prefix}.1")
    nodes = {n.name: n for n in cap.graph_module.graph.nodes}
    for name, u in units.unit.items():
        n = nodes[name]
        if n.op == "call_function" and "embedding" in str(n.target) and name not in units.const:
            assert u == 0  # token embedding: first stage
        if "cross_entropy" in str(n.target):
            assert u == units.count - 1  # loss: last stage
    assert any("arange" in str(nodes[c].target) for c in units.const)  # positions: copied


@pytest.mark.parametrize("example", ["gpt2", "llama"])
@pytest.mark.parametrize("bounds", [((0, 1), (1, 3)), ((0, 2), (2, 3)), ((0, 1), (1, 2), (2, 3))])
def test_stage_programs_chain_to_the_model(example: str, bounds) -> None:  # type: ignore[no-untyped-def]
    model, args, kwargs, cap = _captured(example)
    units = find_units(cap.graph_module, cap.param_names)
    split = split_stages(cap, units, bounds)
    x = tree_flatten_spec((args, kwargs), split.in_spec)
    for st in split.stages:
        x = st.captured.graph_module(*x)
    with torch.no_grad():
        ref = model(*args, **kwargs)
    assert torch.allclose(x[0], ref.loss)
    assert sum(len(s.captured.param_names) for s in split.stages) >= len(cap.param_names)
    if example == "gpt2":  # the tied embedding is read by the first and the last stage
        assert split.shared_params == {"lm_head.weight": (0, len(bounds) - 1)}
    for a, b in zip(split.stages, split.stages[1:]):
        assert a.outputs == b.inputs


def test_choose_stages_records_a_json_plan() -> None:
    _, _, _, cap = _captured("gpt2")
    mesh = MeshSpec.of({"pp": 2})
    cm = CostModel(ClusterSpec.cpu(2), mesh)
    units, part, info = choose_stages(cap, 2, 4, "1f1b", cm, p2p_axis="pp")
    json.dumps(info)
    assert info["num_stages"] == 2 and info["microbatches"] == 4
    assert [s["units"] for s in info["stages"]] == [list(b) for b in part.bounds]
    assert 0.0 < info["predicted_bubble"] < 1.0


def _vit():  # type: ignore[no-untyped-def]
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, num_labels=10,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = ViTForImageClassification(cfg)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cap = capture(copy.deepcopy(model), (), {"pixel_values": x[:1], "labels": y[:1]})
    return model, x, y, cap


def test_vit_parameter_only_ops_run_once_in_the_first_stage() -> None:
    """``cls_token.expand(...)`` and ``+ position_embeddings`` read parameters, so they are
    ops of unit 0, never ``const`` copies; each parameter lives in exactly one stage, and
    the chained stage programs give the model's loss and, accumulated over two
    microbatches of one image, its gradients (issue 10: the drift was not in the split)."""
    model, x, y, cap = _vit()
    units = find_units(cap.graph_module, cap.param_names)
    assert units.labels == ("<pre>", "vit.layers.0", "vit.layers.1")
    nodes = list(cap.graph_module.graph.nodes)
    param_nodes = {n.name for n in nodes if n.op == "get_attr"}
    readers = [n for n in nodes if n.op == "call_function"
               and any(a.name in param_nodes and "embeddings" in str(a.target)
                       and "patch" not in str(a.target) for a in n.all_input_nodes)]  # fmt: skip
    assert {str(n.target) for n in readers} >= {"aten.expand.default", "aten.add.Tensor"}
    for n in readers:
        assert n.name not in units.const and units.unit[n.name] == 0, n.name
    split = split_stages(cap, units, ((0, 2), (2, 3)))
    assert split.shared_params == {}
    owners = [p for st in split.stages for p in st.captured.param_names]
    assert sorted(owners) == sorted(cap.param_names)  # each parameter in one stage
    ref = copy.deepcopy(model)
    for i in range(2):  # two microbatches of one image, gradients accumulated
        out = tree_flatten_spec(((), {"pixel_values": x[i : i + 1], "labels": y[i : i + 1]}),
                                split.in_spec)  # fmt: skip
        for st in split.stages:
            out = st.captured.graph_module(*out)
        out[0].backward()
        ref_loss = ref(pixel_values=x[i : i + 1], labels=y[i : i + 1]).loss
        ref_loss.backward()
        assert torch.allclose(out[0], ref_loss)
    got = {k: p.grad for st in split.stages for k, p in st.captured.graph_module.named_parameters()}
    for key, p in ref.named_parameters():
        assert torch.allclose(got[key], p.grad, rtol=1e-5, atol=1e-6), key

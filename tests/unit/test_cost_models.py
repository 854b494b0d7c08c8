"""Unit tests for cost_models (no process group, no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autopar.mesh import MeshSpec
from cost_models import (
    DEVICES,
    ClusterSpec,
    CostModel,
    DeviceSpec,
    LinkSpec,
    Profile,
    TrainingMemory,
    collective_time,
    compute_time,
    detect_cluster,
    device_from_name,
    dtype_bytes,
    dtype_key,
    lookup_device,
    master_weight_bytes,
    optimizer_state_bytes,
)

# ---------------------------------------------------------------- hardware


def test_device_table_is_immutable_and_round_trips() -> None:
    assert set(DEVICES) == {"V100", "A100-40GB", "A100-80GB", "H100", "H200", "L40S", "CPU"}
    with pytest.raises(TypeError):
        DEVICES["X"] = DEVICES["CPU"]  # type: ignore[index]
    for dev in DEVICES.values():
        back = DeviceSpec.from_json(json.loads(json.dumps(dev.to_json())))
        assert back == dev and hash(back) == hash(dev)
        with pytest.raises(TypeError):
            dev.flops["fp32"] = 1.0  # type: ignore[index]


def test_lookup_aliases() -> None:
    assert lookup_device("A100").name == "A100-80GB"
    assert lookup_device(" a100-40gb ").name == "A100-40GB"
    assert lookup_device("h200").name == "H200"
    assert lookup_device("H100").flops["bf16"] == 989e12
    assert lookup_device("cpu").is_cpu
    with pytest.raises(ValueError, match="known devices are .*H100"):
        lookup_device("TPUv5")


def test_peak_flops_fallback() -> None:
    cpu = DEVICES["CPU"]
    assert cpu.peak_flops("tf32") == cpu.flops["fp32"]
    assert DEVICES["A100-80GB"].peak_flops("fp8") == 312e12


def test_device_validation_messages() -> None:
    d = DEVICES["H100"].to_json()
    d["mem_bw"] = -1
    with pytest.raises(ValueError, match="mem_bw"):
        DeviceSpec.from_json(d)
    d = DEVICES["H100"].to_json()
    d["bogus"] = 1
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        DeviceSpec.from_json(d)


def test_dtype_names() -> None:
    torch = pytest.importorskip("torch")
    assert dtype_key(torch.bfloat16) == "bf16"
    assert dtype_key("float32") == "fp32"
    assert dtype_key("Half") == "fp16"
    assert dtype_key(torch.int64) is None
    assert dtype_bytes(torch.float16) == 2
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_key("complex32")


# ---------------------------------------------------------------- cluster


@pytest.mark.parametrize(
    "text, nodes, per_node, dev, canon",
    [
        ("8xH100", 1, 8, "H100", "8xH100"),
        ("4x8xA100-80GB", 4, 8, "A100-80GB", "4x8xA100-80GB"),
        (" 4 X 8 x a100 ", 4, 8, "A100-80GB", "4x8xA100-80GB"),
        ("cpu:2", 1, 2, "CPU", "cpu:2"),
        ("CPU : 3", 1, 3, "CPU", "cpu:3"),
        ("cpu", 1, 1, "CPU", "cpu:1"),
        ("1xH100", 1, 1, "H100", "1xH100"),
        ("2x4xcpu", 2, 4, "CPU", "2x4xCPU"),
    ],
)
def test_parse_cluster(text: str, nodes: int, per_node: int, dev: str, canon: str) -> None:
    c = ClusterSpec.parse(text)
    assert (c.num_nodes, c.devices_per_node, c.device.name) == (nodes, per_node, dev)
    assert c.num_devices == nodes * per_node
    assert str(c) == canon
    assert ClusterSpec.parse(str(c)) == c
    assert ClusterSpec.from_json(json.loads(json.dumps(c.to_json()))) == c


@pytest.mark.parametrize("text", ["", "H100", "0xH100", "8xTPU", "8x", "cpu:0", "cpu:x", "a:b"])
def test_parse_cluster_errors(text: str) -> None:
    with pytest.raises(ValueError) as e:
        ClusterSpec.parse(text)
    msg = str(e.value)
    assert repr(text) in msg
    if text not in ("0xH100", "cpu:0"):
        assert "H100" in msg and "8xH100" in msg  # known devices and accepted forms


def test_cluster_json_errors() -> None:
    with pytest.raises(ValueError, match="missing \\['device'\\]"):
        ClusterSpec.from_json({"num_nodes": 1, "devices_per_node": 2})
    with pytest.raises(ValueError, match="num_nodes"):
        ClusterSpec(0, 8, DEVICES["H100"])


def test_axis_link_mapping() -> None:
    c = ClusterSpec.parse("4x8xH100")
    mesh = MeshSpec.of({"dp": 4, "tp": 8})
    assert c.axis_link(mesh, 1) == LinkSpec(320e9, 3.4e-6, "intra")
    assert c.axis_link(mesh, 0) == LinkSpec(50e9, 5e-6, "inter")
    swapped = MeshSpec.of({"tp": 8, "dp": 4})  # tp: stride 4, size 8 -> spans nodes
    assert c.axis_link(swapped, 0).kind == "inter"
    assert c.axis_link(swapped, 1).kind == "intra"  # dp: stride 1, span 4 divides 8


def test_axis_link_edge_cases() -> None:
    c = ClusterSpec.parse("2x6xA100")
    # span 4 does not divide 6: group {4,5,6,7} straddles nodes 0 and 1.
    assert c.axis_link(MeshSpec.of({"a": 3, "b": 4}), 1).kind == "inter"
    assert c.axis_link(MeshSpec.of({"a": 4, "b": 3}), 1).kind == "intra"
    # size-1 axes and single-node clusters are always intra.
    assert c.axis_link(MeshSpec.of({"a": 1, "b": 12}), 0).kind == "intra"
    assert ClusterSpec.parse("8xH100").axis_link(MeshSpec.of({"dp": 8}), 0).kind == "intra"


def test_check_mesh() -> None:
    c = ClusterSpec.parse("8xH100")
    c.check_mesh(MeshSpec.of({"dp": 2, "tp": 4}))
    with pytest.raises(ValueError, match="4 devices but cluster '8xH100' has 8"):
        c.check_mesh(MeshSpec.of({"dp": 4}))


# ---------------------------------------------------------------- compute


def test_compute_roofline() -> None:
    h = DEVICES["H100"]
    # compute bound: 1e12 FLOP bf16 -> 1e12 / (989e12 * 0.75) + 5us
    t = compute_time(h, 1e12, 1e6, "bf16")
    assert t == pytest.approx(1e12 / (989e12 * 0.75) + 5e-6)
    # memory bound: 1 GB -> 1e9 / (3.35e12 * 0.8) + 5us
    t = compute_time(h, 1e6, 1e9, "float32")
    assert t == pytest.approx(1e9 / (3.35e12 * 0.8) + 5e-6)
    assert compute_time(h, 0, 0, "bf16") == 0.0
    # integer dtypes: memory term only, even with "flops"
    assert compute_time(h, 1e15, 1e6, "int64") == pytest.approx(1e6 / (3.35e12 * 0.8) + 5e-6)
    # CPU: 50 GFLOP/s * 0.5
    assert compute_time(DEVICES["CPU"], 50e9, 0, "fp32") == pytest.approx(2.0 + 10e-6)
    with pytest.raises(ValueError, match="flops"):
        compute_time(h, -1, 0)


# ---------------------------------------------------------------- comm


def test_collective_formulas() -> None:
    link = LinkSpec(bandwidth=100e9, alpha=10e-6, kind="intra")
    b, n = 1e9, 4
    assert collective_time("all_reduce", b, n, link) == pytest.approx(
        2 * 3 / 4 * 1e9 / 100e9 + 6 * 10e-6
    )  # 0.015 + 0.00006
    assert collective_time("all_reduce", b, n, link) == pytest.approx(0.01506)
    assert collective_time("all_gather", b, n, link) == pytest.approx(0.0075 + 3e-5)
    assert collective_time("reduce_scatter", b, n, link) == pytest.approx(0.0075 + 3e-5)
    assert collective_time("all_to_all", b, n, link) == pytest.approx(0.0075 + 3e-5)
    assert collective_time("broadcast", b, n, link) == pytest.approx(0.01 + 3e-5)
    assert collective_time("send_recv", b, n, link) == pytest.approx(0.01 + 1e-5)
    assert collective_time("all_reduce", b, 1, link) == 0.0
    assert collective_time("all_reduce", 0, 8, link) == 0.0
    with pytest.raises(ValueError, match="all_gather"):
        collective_time("allreduce", b, n, link)
    with pytest.raises(ValueError, match="group size"):
        collective_time("all_reduce", b, 0, link)


# ---------------------------------------------------------------- memory


def test_training_memory() -> None:
    torch = pytest.importorskip("torch")
    n = 1000
    assert optimizer_state_bytes(n, "adamw") == 8000
    assert optimizer_state_bytes(n, "Adam") == 8000
    assert optimizer_state_bytes(n, "sgd_momentum") == 4000
    assert optimizer_state_bytes(n, "sgd") == 0
    with pytest.raises(ValueError, match="adamw"):
        optimizer_state_bytes(n, "lion")
    assert master_weight_bytes(n, torch.bfloat16) == 4000
    assert master_weight_bytes(n, "fp16") == 4000
    assert master_weight_bytes(n, torch.float32) == 0
    m = TrainingMemory(params=2000, grads=2000, optimizer_state=8000, master_weights=4000)
    assert m.total == 16000
    assert (m + TrainingMemory(activations=5)).total == 16005
    assert TrainingMemory.from_json(json.loads(json.dumps(m.to_json()))) == m
    with pytest.raises(ValueError, match="sum to"):
        TrainingMemory.from_json({**m.to_json(), "total": 1})
    with pytest.raises(ValueError, match="params"):
        TrainingMemory(params=-1)


# ---------------------------------------------------------------- profile / model


def test_profile_round_trip(tmp_path: Path) -> None:
    p = Profile(
        matmul_flops={"bf16": 700e12},
        mem_bw=3e12,
        intra_bw=300e9,
        inter_alpha=25e-6,
        note="measured",
    )
    assert Profile.from_json(json.loads(json.dumps(p.to_json()))) == p
    path = tmp_path / "profile.json"
    p.save(path)
    assert Profile.load(path) == p
    assert hash(Profile.load(path)) == hash(p)
    assert Profile.from_json({}) == Profile()
    with pytest.raises(ValueError, match="unknown keys"):
        Profile.from_json({"mem_bandwidth": 1e9})
    with pytest.raises(ValueError, match="unknown dtype keys"):
        Profile(matmul_flops={"bfloat16": 1e12})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Profile.load(bad)


def test_profile_apply() -> None:
    h = DEVICES["H100"]
    d = Profile(matmul_flops={"bf16": 700e12}, mem_bw=3e12, inter_bw=40e9).apply(h)
    assert d.flops["bf16"] == 700e12 and d.matmul_efficiency == 1.0
    assert d.flops["fp32"] == pytest.approx(67e12 * 0.75)  # unmeasured keeps modelled rate
    assert d.mem_bw == 3e12 and d.memory_efficiency == 1.0
    assert d.inter_node_bw == 40e9 and d.intra_node_bw == h.intra_node_bw
    assert Profile().apply(h) is h


def test_cost_model() -> None:
    mesh = MeshSpec.of({"dp": 4, "tp": 8})
    cm = CostModel(ClusterSpec.parse("4x8xH100"), mesh)
    assert cm.link("tp").kind == "intra" and cm.link(0).kind == "inter"
    assert cm.collective_time("all_reduce", 1e9, "tp") == pytest.approx(
        2 * 7 / 8 * 1e9 / 320e9 + 14 * 3.4e-6
    )
    assert cm.collective_time("all_gather", 1e9, 0) == pytest.approx(3 / 4 * 1e9 / 50e9 + 3 * 5e-6)
    # both axes together: 32 ranks across 4 nodes
    assert cm.group_size(("dp", "tp")) == 32 and cm.link(["dp", "tp"]).kind == "inter"
    assert cm.compute_time(1e12, 0, "bf16") == pytest.approx(1e12 / (989e12 * 0.75) + 5e-6)
    assert cm.memory_budget_bytes() == int(80 * 2**30 * 0.9)
    assert cm.memory_budget_bytes(0.5) == 40 * 2**30
    with pytest.raises(ValueError, match="no axis 'pp'"):
        cm.link("pp")
    with pytest.raises(ValueError, match="headroom"):
        cm.memory_budget_bytes(1.5)
    with pytest.raises(ValueError, match="32 devices but cluster '8xH100'"):
        CostModel(ClusterSpec.parse("8xH100"), mesh)
    assert CostModel.from_json(json.loads(json.dumps(cm.to_json()))) == cm


def test_cost_model_multi_axis_matches_single_axis_rule() -> None:
    cluster = ClusterSpec.parse("2x4xH100")
    for axes in ({"a": 2, "b": 4}, {"a": 4, "b": 2}, {"a": 2, "b": 2, "c": 2}, {"a": 8}):
        mesh = MeshSpec.of(axes)
        cm = CostModel(cluster, mesh)
        for i in range(mesh.ndim):
            assert cm.link((i,)) == cluster.axis_link(mesh, i)
    cm = CostModel(cluster, MeshSpec.of({"a": 2, "b": 2, "c": 2}))
    assert cm.link(("b", "c")).kind == "intra" and cm.link(("a", "c")).kind == "inter"


def test_cost_model_with_profile() -> None:
    mesh = MeshSpec.of({"dp": 8})
    p = Profile(intra_bw=100e9, intra_alpha=0.0)
    cm = CostModel(ClusterSpec.parse("8xH100"), mesh, p)
    assert cm.collective_time("all_gather", 8e9, "dp") == pytest.approx(7 / 8 * 8e9 / 100e9)
    assert cm.cluster.device.intra_node_bw == 320e9  # the given cluster is untouched
    assert CostModel.from_json(json.loads(json.dumps(cm.to_json()))) == cm


def test_default_for() -> None:
    cm = CostModel.default_for(MeshSpec.of({"dp": 2, "tp": 2}))
    assert str(cm.cluster) == "cpu:4"
    assert cm.link("tp") == LinkSpec(1e9, 50e-6, "intra")


# ---------------------------------------------------------------- detect


def test_detect_cluster_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert str(detect_cluster()) == "cpu:1"
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert str(detect_cluster()) == "cpu:4"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    c = detect_cluster()
    assert (c.num_nodes, c.devices_per_node, c.device.is_cpu) == (2, 2, True)
    monkeypatch.setenv("WORLD_SIZE", "garbage")
    assert detect_cluster().device.is_cpu


def test_device_from_name() -> None:
    d = device_from_name("NVIDIA A100-SXM4-40GB", 40 * 2**30)
    assert d.flops == DEVICES["A100-40GB"].flops and d.name == "NVIDIA A100-SXM4-40GB"
    d = device_from_name("NVIDIA A100 80GB PCIe", 80 * 2**30)
    assert d.mem_bw == DEVICES["A100-80GB"].mem_bw and d.intra_node_bw == 25e9
    assert device_from_name("NVIDIA H200", 150_000_000_000).memory_bytes == 150_000_000_000
    unknown = device_from_name("NVIDIA RTX 6000 Ada Generation", 48 * 2**30)
    assert unknown.flops == DEVICES["L40S"].flops  # closest memory size


def test_import_is_light() -> None:
    code = "import sys, cost_models; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_detect_cluster_gpu_mocked(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    import types

    import cost_models.detect as detect

    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=85_000_000_000)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(detect, "nvlink_present", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    c = detect_cluster()
    assert (c.num_nodes, c.devices_per_node) == (2, 8)
    assert c.device.flops == DEVICES["H100"].flops and c.device.intra_node_bw == 320e9
    monkeypatch.setattr(detect, "nvlink_present", lambda: False)
    assert detect_cluster().device.intra_node_bw == 25e9

    def boom(i: int) -> None:
        raise RuntimeError("driver error")

    monkeypatch.setattr(torch.cuda, "get_device_properties", boom)
    assert detect_cluster().device.is_cpu  # never raises


def test_special_functions_and_attention_efficiency() -> None:
    """Special functions bound an op only where the device has a rate for them; attention
    runs at the device's attention efficiency of the matmul rate."""
    import dataclasses

    cpu = DEVICES["CPU"]
    assert compute_time(cpu, 0, 1e3, "fp32", {"tanh": 1e6}) == compute_time(cpu, 0, 1e3, "fp32")
    slow = dataclasses.replace(cpu, special_rates={"tanh": 1e8}, attention_efficiency=0.5)
    assert compute_time(slow, 0, 1e3, "fp32", {"tanh": 1e6}) == pytest.approx(1e-2 + 10e-6)
    assert compute_time(slow, 0, 0, "fp32", {"tanh": 1e6}) > 0  # special alone is work
    assert compute_time(slow, 25e9, 0, "fp32", attention=True) == pytest.approx(
        2 * compute_time(slow, 25e9, 0, "fp32") - 10e-6
    )
    assert DeviceSpec.from_json(slow.to_json()) == slow
    with pytest.raises(ValueError, match="unknown functions"):
        dataclasses.replace(cpu, special_rates={"cosh": 1e9})
    p = Profile(special_rates={"exp": 2e9}, attention_efficiency=0.7)
    applied = p.apply(cpu)
    assert applied.special_rates == {"exp": 2e9} and applied.attention_efficiency == 0.7


def test_op_special_work_and_relayout() -> None:
    """Rules are data: tanh evaluates one tanh per element forward and none backward;
    cross-entropy one exp per logit each way. A gather on dim 1 copies the tensor once
    more (collectives concatenate along dim 0); on dim 0 it does not."""
    import torch

    from autopar.cost import Collective, collective_seconds, special_work, transition
    from autopar.placement import R, Shard
    from autopar.strategies.types import OpView, TensorMeta

    x = TensorMeta((4, 8), torch.float32)
    tanh = OpView(torch.ops.aten.tanh.default, (), {}, (x,), (x,))
    assert special_work(tanh, needs_grad=True) == {"tanh": 32.0}
    loss = OpView(
        torch.ops.aten.cross_entropy_loss.default, (), {}, (x,), (TensorMeta((), torch.float32),)
    )
    assert special_work(loss, needs_grad=True) == {"exp": 64.0}
    assert special_work(loss, needs_grad=False) == {"exp": 32.0}
    add = OpView(torch.ops.aten.add.Tensor, (), {}, (x, x), (x,))
    assert special_work(add, needs_grad=True) == {}
    dim0 = transition((Shard(0),), (R,), x, (2,))
    dim1 = transition((Shard(1),), (R,), x, (2,))
    assert [c.relayout for c in dim0] == [False] and [c.relayout for c in dim1] == [True]
    cm = CostModel(ClusterSpec.cpu(2), MeshSpec.of(2))
    plain = collective_seconds(cm, Collective("all_gather", 0, 1 << 20))
    moved = collective_seconds(cm, Collective("all_gather", 0, 1 << 20, relayout=True))
    assert moved == pytest.approx(plain + cm.compute_time(0, 2 << 20))

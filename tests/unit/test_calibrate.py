"""Calibration fits on synthetic times, the calibrated Profile's JSON, and bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from autopar.mesh import MeshSpec
from cost_models import ClusterSpec, CostModel, LinkSpec, Profile, collective_time
from cost_models.calibrate import (
    CALIBRATED_KINDS,
    MESSAGE_BYTES,
    _assemble,
    fit_link,
    fit_rate,
)
from cost_models.comm import ring_terms
from cost_models.profile import CollectiveFit


def _synthetic(alpha: float, bw: float, n: int, noise: float = 0.0) -> list[tuple[str, int, float]]:
    link = LinkSpec(bw, alpha, "intra")
    out = []
    for i, (kind, nbytes) in enumerate((k, b) for k in CALIBRATED_KINDS for b in MESSAGE_BYTES):
        wiggle = 1.0 + noise * (1 if i % 2 else -1)  # deterministic +-noise
        out.append((kind, nbytes, collective_time(kind, nbytes, n, link) * wiggle))
    return out


@pytest.mark.parametrize("n", [2, 4, 8])
def test_fit_link_recovers_alpha_and_bandwidth(n: int) -> None:
    fit = fit_link(_synthetic(50e-6, 2e9, n), n)
    assert fit.alpha == pytest.approx(50e-6, rel=1e-6)
    assert fit.bandwidth == pytest.approx(2e9, rel=1e-6)
    assert fit.rms_rel_error < 1e-9 and fit.samples == len(CALIBRATED_KINDS) * len(MESSAGE_BYTES)
    assert fit.predict("all_reduce", 1 << 20, n) == pytest.approx(
        collective_time("all_reduce", 1 << 20, n, LinkSpec(2e9, 50e-6, "intra"))
    )


def test_fit_link_with_noise_and_one_kind() -> None:
    fit = fit_link(_synthetic(200e-6, 1e9, 2, noise=0.05), 2)
    assert fit.alpha == pytest.approx(200e-6, rel=0.1)
    assert fit.bandwidth == pytest.approx(1e9, rel=0.1)
    assert 0.01 < fit.rms_rel_error < 0.1
    only = [s for s in _synthetic(10e-6, 5e9, 4) if s[0] == "all_gather"]
    fit = fit_link(only, 4)
    assert (fit.alpha, fit.bandwidth) == (pytest.approx(10e-6), pytest.approx(5e9))


def test_fit_link_clamps_negative_alpha() -> None:
    # times proportional to volume minus a constant: the unconstrained alpha is negative
    samples = [("all_reduce", b, ring_terms("all_reduce", b, 2)[0] / 1e9 - 1e-7)
               for b in (1 << 16, 1 << 18, 1 << 20)]  # fmt: skip
    fit = fit_link(samples, 2)
    assert fit.alpha == 0.0
    assert fit.bandwidth == pytest.approx(1e9, rel=0.05)


def test_fit_rate_recovers_overhead_and_rate() -> None:
    samples = [(w, 3e-6 + w / 40e9) for w in (1e6, 1e7, 1e8, 1e9)]
    fit = fit_rate(samples)
    assert fit.overhead_s == pytest.approx(3e-6, rel=1e-6)
    assert fit.rate == pytest.approx(40e9, rel=1e-6)


@pytest.mark.parametrize(
    ("samples", "n", "match"),
    [
        ([("all_reduce", 1024, 1e-4)], 2, "at least 2 samples"),
        ([("all_reduce", 1024, 1e-4), ("all_reduce", 1024, 1.1e-4)], 2, "distinct message"),
        ([("all_reduce", 1024, 1e-4), ("all_reduce", 4096, 0.0)], 2, "seconds"),
        ([("all_reduce", 1024, 1e-4), ("all_reduce", 4096, float("nan"))], 2, "finite"),
        ([("all_reduce", -1, 1e-4), ("all_reduce", 4096, 1e-4)], 2, "message bytes"),
        ([("allreduce", 1024, 1e-4), ("all_reduce", 4096, 1e-4)], 2, "unknown collective"),
        ([("all_reduce", 1024, 1e-4), ("all_reduce", 4096, 2e-4)], 1, "n >= 2"),
        ([("all_reduce", 1024, 1e-3), ("all_reduce", 1 << 20, 1e-4)], 2, "do not grow"),
        ([("all_reduce", 1024), ("all_reduce", 4096, 1e-4)], 2, "kind, nbytes, seconds"),
    ],
)
def test_fit_link_bad_input(samples: list, n: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_link(samples, n)


def test_fit_rate_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        fit_rate([])
    with pytest.raises(ValueError, match="work"):
        fit_rate([(0.0, 1e-3), (1e6, 2e-3)])
    with pytest.raises(ValueError, match="distinct"):
        fit_rate([(1e6, 1e-3), (1e6, 2e-3)])


def _calibration():  # type: ignore[no-untyped-def]
    matmul = {
        "fp32": [(f, 2e-6 + f / 40e9) for f in (3e7, 2e8, 5e8)],
        "bf16": [(f, 2e-6 + f / 1e9) for f in (3e7, 2e8, 5e8)],  # emulated: dropped
    }
    ew = [(b, 1e-6 + b / 20e9) for b in (1e5, 1e6, 1e7)]
    coll = tuple(_synthetic(100e-6, 1e9, 2))
    return _assemble(2, "gloo", matmul, ew, 1e-6, 20e-6, 50e-6, coll, 3.0)


def test_assembled_profile_round_trip(tmp_path: Path) -> None:
    cal = _calibration()
    p = cal.profile
    assert p.matmul_flops == {"fp32": pytest.approx(40e9)}  # slow bf16 left to the table
    assert p.mem_bw == pytest.approx(20e9) and p.launch_floor_s == 20e-6
    assert p.reshard_overhead_s == 50e-6
    assert CostModel(ClusterSpec.cpu(2), MeshSpec.of(2), p).reshard_overhead_s == 50e-6
    assert CostModel(ClusterSpec.cpu(2), MeshSpec.of(2)).reshard_overhead_s == 0.0
    assert p.intra_alpha == pytest.approx(100e-6) and p.intra_bw == pytest.approx(1e9)
    assert set(p.collectives) == set(CALIBRATED_KINDS)
    assert Profile.from_json(json.loads(json.dumps(p.to_json()))) == p
    path = tmp_path / "profile.json"
    p.save(path)
    assert Profile.load(path) == p and hash(Profile.load(path)) == hash(p)
    assert pickle.loads(pickle.dumps(p)) == p  # profiles cross process boundaries
    assert "all_reduce" in cal.table() and "GFLOP/s" in cal.table()


def test_param_use_figure() -> None:
    """A profile without ``param_use_s`` (older files) prices a parameter use as a layout
    call; with it, the measured figure; without a profile, nothing."""
    mesh = MeshSpec.of(2)
    old = Profile(reshard_overhead_s=50e-6)
    assert CostModel(ClusterSpec.cpu(2), mesh, old).param_use_s == 50e-6
    new = Profile(reshard_overhead_s=50e-6, param_use_s=20e-6)
    assert CostModel(ClusterSpec.cpu(2), mesh, new).param_use_s == 20e-6
    assert CostModel(ClusterSpec.cpu(2), mesh).param_use_s == 0.0
    assert Profile.from_json(json.loads(json.dumps(new.to_json()))) == new
    with pytest.raises(ValueError, match="param_use_s"):
        Profile(param_use_s=-1.0)


def test_profile_collectives_field() -> None:
    p = Profile(collectives={"all_gather": {"alpha": 1e-4, "bandwidth": 2e9}})  # type: ignore[dict-item]
    assert p.collectives["all_gather"] == CollectiveFit(1e-4, 2e9)
    assert not p.is_empty
    with pytest.raises(ValueError, match="unknown kinds"):
        Profile(collectives={"allgather": CollectiveFit(1e-4, 2e9)})
    with pytest.raises(ValueError, match="missing"):
        Profile.from_json({"collectives": {"all_gather": {"alpha": 1e-4, "bw": 2e9}}})
    with pytest.raises(ValueError, match="bandwidth"):
        CollectiveFit(1e-4, 0.0)
    with pytest.raises(ValueError, match="must map"):
        Profile(collectives=[1, 2])  # type: ignore[arg-type]


def test_cost_model_uses_per_kind_fit() -> None:
    mesh = MeshSpec.of(2)
    fit = CollectiveFit(300e-6, 0.5e9)
    p = Profile(intra_alpha=100e-6, intra_bw=1e9, collectives={"all_gather": fit})
    cm = CostModel(ClusterSpec.cpu(2), mesh, profile=p)
    gathered = collective_time("all_gather", 1 << 20, 2, LinkSpec(0.5e9, 300e-6, "intra"))
    assert cm.collective_time("all_gather", 1 << 20, 0) == pytest.approx(gathered)
    joint = collective_time("all_reduce", 1 << 20, 2, LinkSpec(1e9, 100e-6, "intra"))
    assert cm.collective_time("all_reduce", 1 << 20, 0) == pytest.approx(joint)


def test_optimizer_step_time() -> None:
    from cost_models import DEVICES
    from cost_models.compute import optimizer_step_time

    d = Profile(mem_bw=10e9, launch_floor_s=1e-5).apply(DEVICES["CPU"])
    assert optimizer_step_time(d, 1e9, 10, "sgd") == pytest.approx(3e9 / 10e9 + 1e-4)
    assert optimizer_step_time(d, 1e9, 10, "adamw") == pytest.approx(7e9 / 10e9 + 1e-4)
    assert optimizer_step_time(d, 0, 0) == 0.0
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizer_step_time(d, 1e9, 1, "lion")

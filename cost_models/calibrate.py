"""Calibration: short micro-benchmarks on the live process group -> a measured ``Profile``.

Contract:

- ``fit_link`` and ``fit_rate`` (pure least-squares fits of ring terms and of
  overhead + work / rate) live in ``cost_models.fit`` and are re-exported here.
- ``run_calibration(group=None, budget_s=8.0, path="dtensor")`` must be called on EVERY
  rank of an initialised ``torch.distributed`` group (gloo on CPU, NCCL on GPU): all
  ranks run the same benchmarks at the same time (so they share the machine as training
  ranks do), each time is all-reduced to its maximum over ranks (the slowest rank bounds
  a step), and every rank returns the same ``Calibration``: the raw samples, the fits and
  the ``Profile``. It measures fp32 (and bf16 when it runs at a usable rate) matmul
  throughput, element-wise memory bandwidth on cold operands (``_cold_pool``), the
  per-element rate of each special function (exp, tanh, erf, log), fused attention's
  forward + backward rate relative to matmul, the launch floor (one tiny op), the
  per-op framework overhead (a tiny op's forward and backward under autograd, priced
  by ``autopar.cost`` as one node), all_reduce, all_gather, reduce_scatter, all_to_all
  and broadcast at several message sizes, and (path "dtensor") the cost of one
  communication-free DTensor wrap/unwrap, forward and backward (``reshard_overhead_s``).
  ``path="dtensor"`` times each collective as DTensor's ``redistribute`` issues it
  (autopar's runtime path: the fitted alpha then includes that framework's per-call
  overhead, and on gloo its all_to_all fallback); ``path="c10d"`` times the raw
  ``torch.distributed`` calls. Broadcast is raw c10d either way. ``calibrate(...)``
  returns just the Profile. Writing the file is the caller's job (rank 0 only).

Profile mapping: ``intra_alpha``/``intra_bw`` come from the joint fit over all five
collectives (on one node every axis is intra-node; ``inter_*`` stay unmeasured unless
the group spans nodes, which this module does not detect), ``collectives`` keeps each
kind's own fit, ``launch_floor_s`` is the per-op overhead (forward + backward, the way a
planner node is priced), ``matmul_flops``/``mem_bw`` the fitted rates,
``reshard_overhead_s`` the wrap/unwrap cost, ``special_rates`` and
``attention_efficiency`` the measured special-function and attention rates. Collectives
are timed right after a burst of compute, the way a step issues them (``_time_collective``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cost_models import _validate as v
from cost_models.fit import LinkFit, RateFit, fit_link, fit_rate
from cost_models.microbench import (
    ATTENTION_SHAPE,
    SPECIAL_NUMEL,
    attention_flops,
    compute_samples,
    median_per_call,
)
from cost_models.profile import CollectiveFit, Profile

CALIBRATED_KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
# Message sizes (bytes of the full tensor); 4 bytes per fp32 element.
MESSAGE_BYTES = (1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22)
COLLECTIVE_PATHS = ("dtensor", "c10d")
BURST_S = 2e-3  # compute before each timed collective (see _time_collective)
_BF16_MIN_FRACTION = 0.1  # bf16 slower than this fraction of fp32 is not "usable"


@dataclass(frozen=True)
class Calibration:
    """Everything one calibration measured and fitted; ``profile`` is what cost models use."""

    profile: Profile
    world_size: int
    backend: str
    link: LinkFit  # joint fit over every calibrated collective
    per_kind: dict[str, LinkFit]
    matmul: dict[str, RateFit]  # dtype key -> fit of FLOPs
    elementwise: RateFit  # fit of bytes moved
    tiny_op_s: float  # one tiny eager op (the kernel launch floor)
    op_overhead_s: float  # a tiny op forward + backward under autograd
    reshard_overhead_s: float | None  # a DTensor wrap/unwrap forward + backward (no comm)
    collective_samples: tuple[tuple[str, int, float], ...] = field(repr=False)
    seconds: float = 0.0  # wall time the calibration took
    param_use_s: float | None = None  # set by autopar.runtime.overhead.calibrate_runtime

    def table(self) -> str:
        """The fitted figures as a short human-readable table."""
        lines = [f"calibrated on {self.world_size} {self.backend} ranks in {self.seconds:.1f} s"]
        for key, f in self.matmul.items():
            lines.append(
                f"  matmul {key:<5} {f.rate / 1e9:10.2f} GFLOP/s  (fit rms {f.rms_rel_error:.0%})"
            )
        e = self.elementwise
        lines.append(
            f"  memory bw    {e.rate / 1e9:10.2f} GB/s     (fit rms {e.rms_rel_error:.0%})"
        )
        p = self.profile
        for fn, rate in sorted(p.special_rates.items()):
            lines.append(f"  {fn:<12} {rate / 1e9:10.3f} G/s       (cold, per element)")
        if p.attention_efficiency is not None:
            lines.append(f"  attention    {p.attention_efficiency:10.2f} x matmul rate (fwd+bwd)")
        lines.append(f"  tiny op      {self.tiny_op_s * 1e6:10.2f} us")
        lines.append(f"  op fwd+bwd   {self.op_overhead_s * 1e6:10.2f} us       (launch floor)")
        if self.reshard_overhead_s is not None:
            lines.append(f"  reshard call {self.reshard_overhead_s * 1e6:10.2f} us       (no comm)")
        if self.param_use_s is not None:
            lines.append(f"  param use    {self.param_use_s * 1e6:10.2f} us       (no comm)")
        lines.append(f"  {'collective':<15}{'alpha us':>10}{'bw GB/s':>10}{'rms err':>9}")
        for name, fit in (*self.per_kind.items(), ("joint", self.link)):
            lines.append(
                f"  {name:<15}{fit.alpha * 1e6:10.1f}{fit.bandwidth / 1e9:10.3f}"
                f"{fit.rms_rel_error:9.0%}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------- measuring


def _max_over_ranks(values: list[float], group: Any) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend(group) == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return [float(x) for x in t.cpu()]


def _collective(
    kind: str, nbytes: int, n: int, device: Any, group: Any, path: str
) -> Callable[[], object]:
    import torch
    import torch.distributed as dist

    numel = max(n, nbytes // 4 // n * n)  # divisible by n, so scatters split evenly
    full = torch.ones(numel, device=device)
    part = torch.ones(numel // n, device=device)
    if kind == "broadcast":  # DTensor has no broadcast: both paths use c10d
        src = dist.get_global_rank(group, 0) if group is not None else 0
        return lambda: dist.broadcast(full, src=src, group=group)
    if path == "dtensor":
        return _dtensor_collective(kind, full, part, n, group)
    if kind == "all_reduce":
        return lambda: dist.all_reduce(full, group=group)
    if kind == "all_gather":  # torch 2.13 renamed *_into_tensor / *_tensor to *_single
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return lambda: gather(full, part, group=group)
    if kind == "reduce_scatter":
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return lambda: scatter(part, full, group=group)
    if kind == "all_to_all":
        out = torch.empty_like(full)
        return lambda: dist.all_to_all_single(out, full, group=group)
    raise ValueError(f"cannot calibrate collective {kind!r}; use one of {CALIBRATED_KINDS}")


def _dtensor_collective(
    kind: str, full: Any, part: Any, n: int, group: Any
) -> Callable[[], object]:
    """The collective as DTensor's ``redistribute`` issues it (the runtime's path)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    pg = group if group is not None else dist.group.WORLD
    assert pg is not None, "checked by run_calibration: the process group is initialised"
    mesh = DeviceMesh.from_group(pg, full.device.type)
    moves = {
        "all_reduce": (full, Partial(), Replicate()),
        "all_gather": (part, Shard(0), Replicate()),
        "reduce_scatter": (full, Partial(), Shard(0)),
        "all_to_all": (part.view(n, -1), Shard(0), Shard(1)),
    }
    if kind not in moves:
        raise ValueError(f"cannot calibrate collective {kind!r}; use one of {CALIBRATED_KINDS}")
    local, src, dst = moves[kind]
    dt = DTensor.from_local(local, mesh, [src], run_check=False)
    return lambda: dt.redistribute(mesh, [dst]).to_local()


def _time_collective(
    fn: Callable[[], object],
    budget_s: float,
    group: Any,
    burst: Callable[[], object],
    sync: Callable[[], None],
) -> float:
    """Mean seconds of one call issued the way a training step issues it: right after a
    burst of compute, not back to back. Both ranks run the same burst, so what the call
    waits for the slower rank, and for idle communication threads to wake, is in the
    figure (on 2 CPU cores with gloo that is 1-2 ms per call, as much as the transfer;
    back-to-back loops hide it). The MEAN, not the median: per-call times have a long
    right tail (on 2 gloo CPU ranks the mean is about twice the median), and a step pays
    the sum of its calls, which the mean predicts. The repetition count is agreed by all
    ranks."""
    import torch.distributed as dist

    fn()
    dist.barrier(group=group)
    start = time.perf_counter()
    fn()
    one = _max_over_ranks([time.perf_counter() - start], group)[0]
    reps = max(5, min(40, int(budget_s / max(one + BURST_S, 1e-6))))
    times = []
    for _ in range(reps):
        burst()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.fmean(times)


def _burst(device: Any, sync: Callable[[], None]) -> Callable[[], object]:
    """About ``BURST_S`` of matmuls on ``device`` (sized by timing one)."""
    import torch

    a, b = torch.randn(256, 256, device=device), torch.randn(256, 256, device=device)
    a @ b
    sync()
    start = time.perf_counter()
    for _ in range(4):
        a @ b
    sync()
    one = max((time.perf_counter() - start) / 4, 1e-7)
    count = max(1, min(10_000, round(BURST_S / one)))

    def burst() -> None:
        for _ in range(count):
            a @ b

    return burst


def _reshard_overhead(device: Any, group: Any, budget_s: float, sync: Callable[[], None]) -> float:
    """Seconds one communication-free layout call costs, forward and backward: a local
    tensor wrapped as a DTensor and unwrapped with declared gradient placements (what
    autopar's ``Reshard`` does around every move, and for every parameter use)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Replicate

    pg = group if group is not None else dist.group.WORLD
    assert pg is not None, "checked by run_calibration: the process group is initialised"
    mesh = DeviceMesh.from_group(pg, torch.device(device).type)
    leaf = torch.ones(4, device=device, requires_grad=True)
    place = [Replicate()]

    def chain() -> None:
        y = leaf
        for _ in range(8):
            y = DTensor.from_local(y, mesh, place, run_check=False).to_local(grad_placements=place)
        y.sum().backward()

    return median_per_call(chain, budget_s, sync) / 8


def run_calibration(group: Any = None, budget_s: float = 8.0, path: str = "dtensor") -> Calibration:
    """Measure on every rank of the live group; every rank returns the same Calibration."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "calibrate needs an initialised process group: call "
            "torch.distributed.init_process_group('gloo' or 'nccl') on every rank first "
            "(or use `autopar calibrate --nproc 2`, which does it)"
        )
    budget_s = v.positive("calibration budget_s", budget_s)
    if path not in COLLECTIVE_PATHS:
        raise ValueError(f"calibration path must be one of {COLLECTIVE_PATHS}, got {path!r}")
    n = dist.get_world_size(group)
    if n < 2:
        raise ValueError(f"calibration needs a group of at least 2 ranks, got {n}")
    backend = str(dist.get_backend(group))
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    started = time.perf_counter()
    dist.barrier(group=group)
    comp = compute_samples(budget_s * 0.5, device, sync)
    if path == "dtensor":
        comp["reshard"] = _reshard_overhead(device, group, budget_s * 0.05, sync)
    coll = []
    each = budget_s * 0.5 / (len(CALIBRATED_KINDS) * len(MESSAGE_BYTES))
    burst = _burst(device, sync)
    for kind in CALIBRATED_KINDS:
        for nbytes in MESSAGE_BYTES:
            fn = _collective(kind, nbytes, n, device, group, path)
            coll.append((kind, nbytes, _time_collective(fn, each, group, burst, sync)))
    # one all-reduce agrees every figure: the slowest rank's time
    flat = [t for key in ("fp32", "bf16") for _, t in comp["matmul"][key]]
    flat += [t for _, t in comp["elementwise"]] + [comp["tiny_op"], comp["op_overhead"]]
    specials = sorted(comp["special"])
    flat += [comp["special"][fn] for fn in specials] + [comp["attention"]]
    flat += [comp.get("reshard", 0.0)]
    flat += [t for _, _, t in coll]
    agreed = iter(_max_over_ranks(flat, group))
    matmul_samples = {
        key: [(w, next(agreed)) for w, _ in comp["matmul"][key]] for key in ("fp32", "bf16")
    }
    ew_samples = [(w, next(agreed)) for w, _ in comp["elementwise"]]
    tiny, overhead = next(agreed), next(agreed)
    special_rates = {fn: SPECIAL_NUMEL / next(agreed) for fn in specials}
    attention_rate = attention_flops(ATTENTION_SHAPE) / next(agreed)
    reshard = next(agreed)
    coll_samples = tuple((k, b, next(agreed)) for k, b, _ in coll)
    return _assemble(n, f"{backend}/{path}", matmul_samples, ew_samples, tiny, overhead,
                     reshard if path == "dtensor" else None, coll_samples,
                     time.perf_counter() - started, special_rates, attention_rate)  # fmt: skip


def _assemble(
    n: int,
    backend: str,
    matmul_samples: dict[str, list[tuple[float, float]]],
    ew_samples: list[tuple[float, float]],
    tiny: float,
    overhead: float,
    reshard: float | None,
    coll_samples: tuple[tuple[str, int, float], ...],
    seconds: float,
    special_rates: dict[str, float] | None = None,
    attention_rate: float | None = None,
) -> Calibration:
    matmul = {key: fit_rate(s) for key, s in matmul_samples.items()}
    if matmul["bf16"].rate < _BF16_MIN_FRACTION * matmul["fp32"].rate:
        del matmul["bf16"]  # emulated bf16: leave the table's modelled rate alone
    elementwise = fit_rate(ew_samples)
    link = fit_link(list(coll_samples), n)
    per_kind = {
        kind: fit_link([s for s in coll_samples if s[0] == kind], n) for kind in CALIBRATED_KINDS
    }
    attention_eff = None if attention_rate is None else attention_rate / matmul["fp32"].rate
    profile = Profile(
        matmul_flops={k: f.rate for k, f in matmul.items()},
        special_rates=special_rates or {},
        attention_efficiency=attention_eff,
        mem_bw=elementwise.rate,
        intra_bw=link.bandwidth,
        intra_alpha=link.alpha,
        launch_floor_s=overhead,
        reshard_overhead_s=reshard,
        collectives={k: CollectiveFit(f.alpha, f.bandwidth) for k, f in per_kind.items()},
        note=(
            f"calibrated by cost_models.calibrate on {n} {backend} ranks "
            f"({time.strftime('%Y-%m-%d %H:%M:%S')}); link fit rms error "
            f"{link.rms_rel_error:.0%}, launch floor = tiny op forward+backward"
        ),
    )
    return Calibration(profile, n, backend, link, per_kind, matmul, elementwise, tiny, overhead,
                       reshard, coll_samples, seconds)  # fmt: skip


def calibrate(group: Any = None, budget_s: float = 8.0, path: str = "dtensor") -> Profile:
    """``run_calibration(group, budget_s, path).profile``: call on every rank of the group."""
    return run_calibration(group, budget_s, path).profile


__all__ = [
    "Calibration", "LinkFit", "RateFit", "calibrate", "fit_link", "fit_rate", "run_calibration",
]  # fmt: skip

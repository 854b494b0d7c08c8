"""The 3D search: pp x dp x tp meshes for a cluster, priced fast, ranked.

Contract: ``search_3d(captured, cluster, global_batch, ...)`` enumerates every
factorization ``pp * dp * tp`` of the cluster's devices with ``tp`` dividing a node
(tensor parallelism stays on the intra-node links; data and pipeline parallelism go
across nodes) and ``pp`` at most the number of layer units, and for each the
microbatch counts that divide the per-replica batch. Each candidate is priced once
from the per-unit prices of ``stages.unit_prices`` (one roofline pricing of the
captured graph, reused for every repeated layer; ``layers=L`` prices an L-block model
from a graph captured with as few as 2 identical blocks, so planning does not grow
with depth):
- compute: unit seconds scaled to the microbatch and divided by ``tp``;
- tensor parallelism: Megatron's 4 all-reduces (2 forward, 2 backward) of the unit's
  boundary activation per unit on the ``tp`` axis;
- pipeline: ``partition.partition`` (step = (m-1) x slowest + sum, plus send/recv of
  boundary activations between stages; the bubble is the idle share of that step);
  only the three largest microbatch counts of at least ``pp`` are tried, since more
  microbatches only shrink the bubble and the activations in flight;
- data parallelism: one all-reduce of the slowest stage's gradients (params / tp) on
  the ``dp`` axis, of which ``cm.overlap`` hides under compute;
- memory per device: parameters, gradients and optimizer state (``bytes_per_param``)
  of the fullest stage divided by ``tp``, plus its in-flight activations (1F1B holds
  ``min(m, pp - s)`` microbatches; a unit's activation estimate is its ``act_factor``
  x its fp32 boundary bytes; 8.5 is Megatron's 34·s·b·h bytes of
  16-bit activations per layer). Candidates over ``cm.memory_budget_bytes()`` are dropped.
It returns the ``Candidate``s sorted by predicted step time (the first is the plan,
the rest are the runners-up). ``InfeasibleError`` when nothing fits, saying by how much;
``memory_filter=False`` keeps the candidates over budget (a coarse ranking to refine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autopar.capture import Captured
from autopar.mesh import MeshSpec
from autopar.pipeline.partition import (
    InfeasibleError,
    find_units,
    in_flight,
    partition,
    uniform_cost,
)
from autopar.pipeline.stages import UnitPrices, unit_prices
from cost_models import ClusterSpec, CostModel


@dataclass(frozen=True)
class Candidate:
    pp: int
    dp: int
    tp: int
    microbatches: int
    schedule: str
    step_s: float
    bubble: float
    memory_bytes: float
    bounds: tuple[tuple[int, int], ...]

    @property
    def mesh(self) -> dict[str, int]:
        return {k: v for k, v in (("pp", self.pp), ("dp", self.dp), ("tp", self.tp)) if v > 1}

    def to_json(self) -> dict[str, Any]:
        return {
            "pp": self.pp, "dp": self.dp, "tp": self.tp, "microbatches": self.microbatches,
            "schedule": self.schedule, "step_s": self.step_s, "bubble": self.bubble,
            "memory_bytes": self.memory_bytes, "bounds": [list(b) for b in self.bounds],
        }  # fmt: skip


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def search_3d(
    captured: Captured,
    cluster: ClusterSpec,
    global_batch: int,
    *,
    captured_batch: int | None = None,
    schedule: str = "1f1b",
    bytes_per_param: float = 16.0,
    act_factor: float = 8.5,
    max_microbatches: int | None = None,
    layers: int | None = None,
    dtype: str = "bf16",
    fixed: dict[str, int] | None = None,
    top: int = 10,
    memory_filter: bool = True,
) -> list[Candidate]:
    """Rank pp x dp x tp meshes of ``cluster`` for ``captured`` at ``global_batch``."""
    devices = cluster.num_nodes * cluster.devices_per_node
    units = find_units(captured.graph_module, captured.param_names)
    flat = MeshSpec.of({"dp": devices})
    base = CostModel(cluster, flat)
    prices = unit_prices(captured, units, base, dtype)
    if layers is not None:
        prices = _repeat(prices, layers)
    cap_b = captured_batch or _first_batch(captured)
    n = len(prices.seconds)
    fixed = dict(fixed or {})
    found: list[Candidate] = []
    tightest = float("inf")
    for tp in _divisors(cluster.devices_per_node):
        for pp in _divisors(devices // tp):
            dp = devices // (tp * pp)
            if (
                pp > n
                or global_batch % dp
                or any(fixed.get(k, v) != v for k, v in (("pp", pp), ("dp", dp), ("tp", tp)))
            ):
                continue
            mesh = MeshSpec((("pp", pp), ("dp", dp), ("tp", tp)))
            cm = CostModel(cluster, mesh)
            budget = cm.memory_budget_bytes()
            per_replica = global_batch // dp
            ms = [m for m in _divisors(per_replica) if m <= (max_microbatches or per_replica)]
            # more microbatches only shrink the bubble and the activations in flight:
            # try the three largest counts that keep at least pp of them
            ms = [m for m in ms if m >= min(pp, per_replica)][-3:]
            if pp == 1:
                ms = [1]
            for m in ms:
                c = _price(cm, prices, n, pp, dp, tp, m, per_replica / m / cap_b, schedule,
                           bytes_per_param, act_factor)  # fmt: skip
                if c is None:
                    continue
                if memory_filter and c.memory_bytes > budget:
                    tightest = min(tightest, c.memory_bytes / budget)
                    continue
                found.append(c)
    if not found:
        raise InfeasibleError(
            f"no pp x dp x tp mesh of {cluster} fits the model in device memory at batch "
            f"{global_batch}; the best needs {tightest:.2f}x the budget. Use more devices, a "
            "smaller batch or activation checkpointing"
        )
    found.sort(key=lambda c: (c.step_s, c.pp, c.tp))
    return found[:top]


def _repeat(prices: UnitPrices, layers: int) -> UnitPrices:
    """Prices of the same model with ``layers`` blocks: a graph captured with fewer
    (identical) blocks gives the first block's price to every middle block; the last
    unit (last block + head) stays last."""
    if len(prices.seconds) < 3:
        raise ValueError("extending layers needs a graph captured with at least 2 blocks")

    def ext(xs: tuple[Any, ...]) -> tuple[Any, ...]:
        return (xs[0], *([xs[1]] * (layers - 1)), xs[-1])

    return UnitPrices(ext(prices.seconds), ext(prices.boundary_bytes), ext(prices.param_bytes))


def _first_batch(captured: Captured) -> int:
    for node in captured.graph_module.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if val is not None and getattr(val, "dim", lambda: 0)() > 0:
                return int(val.shape[0])
    return 1


def _price(cm, prices, n, pp, dp, tp, m, scale, schedule, bpp, act):  # type: ignore[no-untyped-def]
    """One candidate's step time and memory, or None when the pipeline cannot be cut."""
    comp = [s * scale / tp for s in prices.seconds]
    tp_comm = [0.0] * n
    if tp > 1:
        tp_comm = [
            4 * cm.collective_time("all_reduce", b * scale, "tp") for b in prices.boundary_bytes
        ]
    cost = uniform_cost([a + b for a, b in zip(comp, tp_comm)])

    def send(j: int) -> float:
        return cm.collective_time("send_recv", prices.boundary_bytes[j - 1] * scale / tp, "pp")

    p2p = send if pp > 1 else None
    param_prefix = [0.0]
    act_prefix = [0.0]
    for u in range(n):
        param_prefix.append(param_prefix[-1] + prices.param_bytes[u])
        act_prefix.append(act_prefix[-1] + act * prices.boundary_bytes[u] * scale / tp)

    def memory(i: int, j: int, s: int) -> float:
        static = (param_prefix[j] - param_prefix[i]) / tp * bpp / 4.0  # param_bytes are fp32
        return static + in_flight(schedule, s, pp, m) * (act_prefix[j] - act_prefix[i])

    try:
        part = partition(n, pp, m, cost, p2p=p2p)
    except InfeasibleError:
        return None
    step = part.step_s  # (m-1) x slowest + sum: the 1F1B/GPipe step without p2p stalls
    grad_s = 0.0
    if dp > 1:
        heaviest = max(param_prefix[j] - param_prefix[i] for i, j in part.bounds)
        ar = cm.collective_time("all_reduce", heaviest / tp, "dp")
        grad_s = max(ar - cm.overlap * step, 0.0)
    mem = max(memory(i, j, s) for s, (i, j) in enumerate(part.bounds))
    busy = m * sum(part.stage_s) / pp
    bubble = max(0.0, 1.0 - busy / step) if pp > 1 else 0.0
    return Candidate(pp, dp, tp, m, schedule if pp > 1 else "none", step + grad_s, bubble, mem,
                     part.bounds)  # fmt: skip

"""Price the layer units of a captured graph and choose the pipeline stages for it.

Contract:
- ``unit_prices(captured, units, cm)`` gives per unit the forward+backward seconds of
  one (micro)batch on one device (roofline of each op's FLOPs and bytes, backward 2x),
  the bytes of the activation that leaves the unit, and the parameter bytes it holds.
- ``choose_stages(captured, num_stages, microbatches, schedule, cm, chunks=1)`` cuts the
  units into ``num_stages * chunks`` contiguous stages with ``partition.partition`` and
  returns ``(units, Partition, pipeline_info)`` where ``pipeline_info`` is the JSON-able
  record stored in ``Plan.pipeline``: stages (layer ranges, rank in the pipeline),
  schedule, microbatches, predicted stage seconds, step seconds and bubble fraction
  (from ``schedule.simulate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from autopar.capture import Captured
from autopar.pipeline.partition import Partition, Units, find_units, partition, uniform_cost
from autopar.pipeline.schedule import make_schedule, simulate
from cost_models import CostModel

_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "linear", "matmul"}


@dataclass(frozen=True)
class UnitPrices:
    seconds: tuple[float, ...]
    boundary_bytes: tuple[int, ...]  # activation leaving unit i towards unit i+1
    param_bytes: tuple[int, ...]


def _nbytes(v: Any) -> int:
    return int(v.numel() * v.element_size()) if isinstance(v, torch.Tensor) else 0


def _work(node: fx.Node) -> tuple[float, float]:
    """(FLOPs, bytes) of one forward of ``node``."""
    out = node.meta.get("val")
    outs = out if isinstance(out, (tuple, list)) else (out,)
    ins: list[Any] = [a.meta.get("val") for a in node.all_input_nodes]
    nbytes = float(sum(_nbytes(v) for v in (*ins, *outs)))
    name = getattr(getattr(node.target, "overloadpacket", None), "__name__", "")
    first = outs[0] if outs and isinstance(outs[0], torch.Tensor) else None
    if first is None:
        return 0.0, 0.0
    if name in _MATMULS:
        a = ins[1] if name in ("addmm", "baddbmm") else ins[0]
        return 2.0 * first.numel() * int(a.shape[-1]), nbytes
    if name == "scaled_dot_product_attention":
        return 4.0 * ins[0].numel() * int(ins[1].shape[-2]), nbytes
    if name in ("view", "_unsafe_view", "reshape", "expand", "transpose", "unsqueeze", "t"):
        return 0.0, 0.0
    return float(first.numel()), nbytes


def unit_prices(captured: Captured, units: Units, cm: CostModel, dtype: str = "fp32") -> UnitPrices:
    gm = captured.graph_module
    n = units.count
    flops, moved = [0.0] * n, [0.0] * n
    params = [0] * n
    seen_params: set[str] = set()
    leaving = [0] * n
    crossing: dict[str, tuple[int, int]] = {}  # value -> (its unit, last unit reading it)
    sizes = {node.name: _nbytes(node.meta.get("val")) for node in gm.graph.nodes}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.name in units.const:
            continue
        u = units.unit[node.name]
        f, b = _work(node)
        flops[u] += f
        moved[u] += b
        for a in node.all_input_nodes:
            if a.op == "get_attr" and str(a.target) in captured.param_names:
                if str(a.target) not in seen_params:
                    seen_params.add(str(a.target))
                    params[u] += _nbytes(a.meta.get("val"))
            elif a.name in units.unit and units.unit[a.name] < u:
                crossing[a.name] = max(crossing.get(a.name, (0, 0)), (units.unit[a.name], u))
    for name, (src, dst) in crossing.items():
        for k in range(src, dst):  # crosses boundaries k -> k+1
            leaving[k] += sizes[name]
    seconds = tuple(cm.compute_time(3.0 * f, 3.0 * b, dtype) for f, b in zip(flops, moved))
    return UnitPrices(seconds, tuple(leaving), tuple(params))


def choose_stages(
    captured: Captured,
    num_stages: int,
    microbatches: int,
    schedule: str,
    cm: CostModel,
    chunks: int = 1,
    p2p_axis: str | None = None,
) -> tuple[Units, Partition, dict[str, Any]]:
    units = find_units(captured.graph_module, captured.param_names)
    prices = unit_prices(captured, units, cm)
    total = num_stages * chunks

    def p2p(j: int) -> float:
        nbytes = prices.boundary_bytes[j - 1]
        if p2p_axis is None or nbytes == 0:
            return 0.0
        return cm.collective_time("send_recv", nbytes, p2p_axis)

    part = partition(
        units.count, total, microbatches, uniform_cost(prices.seconds),
        p2p=p2p if p2p_axis else None,
    )  # fmt: skip
    fwd = [s / 3.0 for s in part.stage_s]
    bwd = [2.0 * s / 3.0 for s in part.stage_s]
    sim = simulate(make_schedule(schedule, num_stages, microbatches, chunks), fwd, bwd)
    info = {
        "schedule": schedule,
        "microbatches": microbatches,
        "num_stages": total,
        "chunks": chunks,
        "stages": [
            {
                "index": s,
                "rank": s % num_stages,
                "units": [i, j],
                "layers": [units.labels[i], units.labels[j - 1]],
                "predicted_s": part.stage_s[s],
            }
            for s, (i, j) in enumerate(part.bounds)
        ],
        "predicted_step_s": sim.step_s,
        "predicted_bubble": sim.bubble_fraction,
        "peak_in_flight": list(sim.peak_in_flight),
    }
    return units, part, info

"""Roofline compute time of one kernel.

Contract: ``compute_time(device, flops, bytes_moved, dtype)`` returns seconds:

    max(flops / (peak_flops[dtype] * matmul_efficiency),
        bytes_moved / (mem_bw * memory_efficiency)) + launch_floor_s

and exactly 0.0 when both ``flops`` and ``bytes_moved`` are 0. ``dtype`` is a
torch.dtype or a name ("bf16", "float32", ...). Integer and bool dtypes have no FLOP
rate: their time is the memory term alone. Negative or non-finite inputs raise
ValueError.
"""

from __future__ import annotations

from typing import Any

from cost_models import _validate as v
from cost_models.dtypes import dtype_key
from cost_models.hardware import DeviceSpec


def compute_time(
    device: DeviceSpec, flops: float, bytes_moved: float, dtype: Any = "fp32"
) -> float:
    """Seconds for a kernel doing ``flops`` FLOPs and moving ``bytes_moved`` bytes."""
    flops = v.non_negative("flops", flops)
    bytes_moved = v.non_negative("bytes_moved", bytes_moved)
    key = dtype_key(dtype)
    if flops == 0 and bytes_moved == 0:
        return 0.0
    memory_s = bytes_moved / (device.mem_bw * device.memory_efficiency)
    if key is None:
        return memory_s + device.launch_floor_s
    flops_s = flops / (device.peak_flops(key) * device.matmul_efficiency)
    return max(flops_s, memory_s) + device.launch_floor_s

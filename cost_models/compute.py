"""Roofline compute time of one kernel.

Contract: ``compute_time(device, flops, bytes_moved, dtype, special=None,
attention=False)`` returns seconds:

    max(flops / (peak_flops[dtype] * matmul_efficiency [* attention_efficiency]),
        bytes_moved / (mem_bw * memory_efficiency),
        sum over f of special[f] / special_rates[f]) + launch_floor_s

where ``special`` maps a special function ("exp", "tanh", ...) to the number of its
evaluations (a function the device has no rate for adds nothing), ``attention`` applies
the device's ``attention_efficiency`` to the FLOP term, and the result is exactly 0.0
when ``flops``, ``bytes_moved`` and ``special`` are all 0. ``dtype`` is a
torch.dtype or a name ("bf16", "float32", ...). Integer and bool dtypes have no FLOP
rate: their time is the memory term alone. Negative or non-finite inputs raise
ValueError. ``optimizer_step_time(device, param_bytes, num_tensors, optimizer)`` prices
one optimizer step over a rank's local parameters (memory bound, ``OPTIMIZER_TRAFFIC``
bytes per parameter byte, plus a launch floor per tensor).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cost_models import _validate as v
from cost_models.dtypes import dtype_key
from cost_models.hardware import DeviceSpec


def compute_time(
    device: DeviceSpec,
    flops: float,
    bytes_moved: float,
    dtype: Any = "fp32",
    special: Mapping[str, float] | None = None,
    attention: bool = False,
) -> float:
    """Seconds for a kernel doing ``flops`` FLOPs, moving ``bytes_moved`` bytes and
    evaluating ``special`` special functions."""
    flops = v.non_negative("flops", flops)
    bytes_moved = v.non_negative("bytes_moved", bytes_moved)
    special_s = 0.0
    for fn, count in (special or {}).items():
        rate = device.special_rates.get(fn)
        if rate is not None:
            special_s += v.non_negative(f"special[{fn!r}]", count) / rate
    key = dtype_key(dtype)
    if flops == 0 and bytes_moved == 0 and special_s == 0:
        return 0.0
    memory_s = max(bytes_moved / (device.mem_bw * device.memory_efficiency), special_s)
    if key is None:
        return memory_s + device.launch_floor_s
    rate = device.peak_flops(key) * device.matmul_efficiency
    if attention:
        rate *= device.attention_efficiency
    return max(flops / rate, memory_s) + device.launch_floor_s


# Bytes an optimizer step moves per byte of (local) parameters: SGD reads p and g and
# writes p; momentum also reads and writes its buffer; Adam/AdamW read p, g, m, v and
# write p, m, v.
OPTIMIZER_TRAFFIC = {"sgd": 3.0, "sgd_momentum": 5.0, "adam": 7.0, "adamw": 7.0}


def optimizer_step_time(
    device: DeviceSpec, param_bytes: float, num_tensors: int, optimizer: str = "sgd"
) -> float:
    """Seconds of one optimizer step over ``param_bytes`` bytes of local parameters held
    in ``num_tensors`` tensors: memory bound, plus one launch floor per tensor (the
    per-parameter loop of a non-fused optimizer)."""
    if optimizer not in OPTIMIZER_TRAFFIC:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; expected one of {sorted(OPTIMIZER_TRAFFIC)}"
        )
    param_bytes = v.non_negative("param_bytes", param_bytes)
    v.non_negative_int("num_tensors", num_tensors)
    if param_bytes == 0:
        return 0.0
    traffic = OPTIMIZER_TRAFFIC[optimizer] * param_bytes
    return (
        traffic / (device.mem_bw * device.memory_efficiency) + num_tensors * device.launch_floor_s
    )

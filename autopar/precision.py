"""Precision: how a program stores and computes (shared vocabulary).

Contract: ``PRECISIONS`` = ("fp32", "bf16-mixed", "bf16"):
- "fp32": parameters, gradients, optimizer state and compute in fp32;
- "bf16-mixed": fp32 master parameters and optimizer state, compute in bf16 under
  ``torch.autocast`` (matmuls and attention in bf16; norms, softmax and losses in fp32 as
  autocast decides), FSDP gathers parameters in bf16, gradients are reduced in
  ``REDUCE_DTYPE["bf16-mixed"]`` (fp32);
- "bf16": parameters (and so gradients and optimizer state) stored in bf16, no autocast.
``check(precision)`` raises ValueError naming the choices. ``default_for(device_kind)``:
"bf16-mixed" on GPUs (how large models are trained), "fp32" on CPUs.
"""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16-mixed", "bf16")
REDUCE_DTYPE = {"fp32": "fp32", "bf16-mixed": "fp32", "bf16": "bf16"}


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision {precision!r} is not known; use one of {', '.join(PRECISIONS)} "
            "(bf16-mixed keeps fp32 master weights and computes in bf16)"
        )
    return precision


def default_for(is_gpu: bool) -> str:
    return "bf16-mixed" if is_gpu else "fp32"

"""Activation recomputation of a layer, as the plan says (``Plan.recompute``).

Contract: ``recompute(module, mode, *args)`` calls ``module(*args)`` ("none", or with
gradients off) or checkpoints it with ``torch.utils.checkpoint.checkpoint(...,
use_reentrant=False)``: the layer keeps only its inputs for backward and runs its
forward again there. "full" recomputes every op; "selective" keeps the outputs of the
matmul and attention kernels (``SAVE_OPS``, torchtitan's selective list) through
``create_selective_checkpoint_contexts`` and recomputes the rest. The whole forward runs
again (``early_stop=False``), so every collective the layer issues in forward is issued
once more in backward: the program's ``RECOMPUTED`` counts them. RNG state and autocast
are restored for the recomputation (checkpoint's own behaviour), so dropout draws the
same masks. The module is called through ``__call__``: FSDP2's hooks on a layer skip
their gather during the recomputation (the pre-backward gather already ran).

``observe(fn)`` registers ``fn(storage)`` to be called with the storage of each selective
checkpoint made (the tensors it keeps; ``autopar.testing.memory`` measures them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

MODES = ("none", "selective", "full")
_SAVE_NAMES = (
    "mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
)  # fmt: skip
SAVE_OPS = frozenset(
    getattr(torch.ops.aten, n).default for n in _SAVE_NAMES if hasattr(torch.ops.aten, n)
)
_observers: list[Callable[[Any], None]] = []


def observe(fn: Callable[[Any], None]) -> Callable[[], None]:
    """Call ``fn`` with each selective checkpoint's storage; returns the un-register."""
    _observers.append(fn)
    return lambda: _observers.remove(fn)


def _policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if func in SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective() -> Any:
    caching, cached = create_selective_checkpoint_contexts(_policy)
    for fn in _observers:
        fn(caching.storage)
    return caching, cached


def recompute(module: Callable[..., Any], mode: str, *args: Any) -> Any:
    if mode not in MODES:
        raise ValueError(f"recompute mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "none" or not torch.is_grad_enabled():
        return module(*args)
    if mode == "selective":
        return checkpoint(module, *args, use_reentrant=False, context_fn=_selective,
                          early_stop=False)  # fmt: skip
    return checkpoint(module, *args, use_reentrant=False, early_stop=False)

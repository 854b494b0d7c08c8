"""Gradient buckets: which gradients are all-reduced together (shared vocabulary).

Contract: ``buckets(sizes)`` assigns each gradient to a bucket by DDP's rule (below); the
runtime's ``GradReducer`` fills its buckets with it and the planner prices one collective
per bucket with it, so the price is what runs.
"""

from __future__ import annotations

BUCKET_BYTES = 25 * 2**20  # DDP's bucket_cap_mb
FIRST_BUCKET_BYTES = 2**20  # DDP's first, smaller bucket


def buckets(
    sizes: list[tuple[object, int]],
    bucket_bytes: int = BUCKET_BYTES,
    first_bucket_bytes: int = FIRST_BUCKET_BYTES,
) -> list[int]:
    """The gradient bucket of each tensor, DDP's rule: ``sizes`` is ``(group key, bytes)``
    per tensor in the order backward produces the gradients; tensors of one key fill a
    bucket up to ``first_bucket_bytes`` for the first bucket made and ``bucket_bytes`` for
    the others (a tensor larger than a bucket gets one of its own). Returns bucket ids,
    numbered in the order buckets are opened. The runtime's reducer and the planner's
    price use this one rule."""
    out: list[int] = []
    open_: dict[object, int] = {}
    filled: list[int] = []
    for key, nbytes in sizes:
        b = open_.get(key)
        cap = first_bucket_bytes if b == 0 else bucket_bytes
        if b is None or (filled[b] and filled[b] + nbytes > cap):
            b = len(filled)
            filled.append(0)
            open_[key] = b
        filled[b] += nbytes
        out.append(b)
    return out

"""Compute micro-benchmarks of one rank: what ``cost_models.calibrate`` fits rates to.

Contract: ``compute_samples(budget_s, device, sync)`` returns raw timings (seconds per
call, each the median of a few timed batches, ``median_per_call``): ``matmul`` per
dtype key as (FLOPs, s) at ``MATMUL_SIZES``; ``elementwise`` as (bytes moved, s) of an
add at ``ELEMENTWISE_NUMEL`` elements on COLD operands (cycling through
``COLD_POOL_BYTES`` of tensors, as a step's activations are read long after they were
written); ``special`` per special function (s per call on ``SPECIAL_NUMEL`` cold
elements); ``attention`` (s per fused attention forward + backward of
``ATTENTION_SHAPE``, whose counted FLOPs are ``attention_flops``); ``tiny_op`` (one tiny
eager op) and ``op_overhead`` (a tiny op forward + backward under autograd). It spends
about ``budget_s`` seconds and needs no process group.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

MATMUL_SIZES = ((256, 256, 256), (512, 256, 768), (512, 512, 512), (1024, 512, 512))
ELEMENTWISE_NUMEL = (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22)
COLD_POOL_BYTES = 96 << 20  # > 2x the last-level cache of common CPUs
SPECIAL_NUMEL = 1 << 20
ATTENTION_SHAPE = (2, 4, 256, 64)  # (batch, heads, seq, head dim), fp32


def median_per_call(fn: Callable[[], object], budget_s: float, sync: Callable[[], None]) -> float:
    """Median seconds per call of ``fn`` over a few timed batches within ``budget_s``."""
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - start, 1e-7)
    per_batch = max(1, min(1000, int(budget_s / 5 / one)))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(per_batch):
            fn()
        sync()
        times.append((time.perf_counter() - start) / per_batch)
    return statistics.median(times)


def _cold_pool(numel: int, device: Any, positive: bool = False) -> list[Any]:
    """Tensors of ``numel`` fp32 elements, ``COLD_POOL_BYTES`` in all: cycling through
    them reads operands that left the caches long ago, as a training step's activations
    have (on this class of CPU a cached element-wise op runs 2-3x faster than a cold one)."""
    import torch

    count = max(3, COLD_POOL_BYTES // (4 * numel))
    make = torch.rand if positive else torch.randn
    return [make(numel, device=device) + (0.5 if positive else 0.0) for _ in range(count)]


def _cycling(pool: list[Any], op: Callable[..., object]) -> Callable[[], object]:
    import torch

    out = torch.empty_like(pool[0])
    state = {"k": 0}

    def call() -> None:
        k = state["k"]
        state["k"] = (k + 2) % (len(pool) - 1)
        op(pool[k], pool[k + 1], out)

    return call


def _unary(f: Callable[..., object]) -> Callable[..., object]:
    return lambda x, _y, z: f(x, out=z)


def compute_samples(budget_s: float, device: Any, sync: Callable[[], None]) -> dict[str, Any]:
    import torch

    from cost_models.hardware import SPECIAL_FUNCTIONS

    steps = len(MATMUL_SIZES) * 2 + len(ELEMENTWISE_NUMEL) + len(SPECIAL_FUNCTIONS) + 3
    each = budget_s / steps
    out: dict[str, Any] = {"matmul": {}}
    for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        samples = []
        for m, k, n in MATMUL_SIZES:
            a = torch.randn(m, k, device=device).to(dtype)
            b = torch.randn(k, n, device=device).to(dtype)
            samples.append((2.0 * m * k * n, median_per_call(lambda: a @ b, each, sync)))
        out["matmul"][key] = samples
    ew = []
    for numel in ELEMENTWISE_NUMEL:
        add = _cycling(_cold_pool(numel, device), lambda x, y, z: torch.add(x, y, out=z))
        ew.append((3.0 * 4 * numel, median_per_call(add, each, sync)))
    out["elementwise"] = ew
    pool = _cold_pool(SPECIAL_NUMEL, device, positive=True)
    out["special"] = {
        fn: median_per_call(_cycling(pool, _unary(getattr(torch, fn))), each, sync)
        for fn in SPECIAL_FUNCTIONS
    }
    del pool
    qkv = [torch.randn(*ATTENTION_SHAPE, device=device, requires_grad=True) for _ in range(3)]
    grad = torch.randn(*ATTENTION_SHAPE, device=device)

    def attention() -> None:
        o = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        o.backward(grad)
        for t in qkv:
            t.grad = None

    out["attention"] = median_per_call(attention, each, sync)
    s, t = torch.ones(1, device=device), torch.ones(1, device=device)
    out["tiny_op"] = median_per_call(lambda: torch.add(s, t), each, sync)
    leaf = torch.ones(1, device=device, requires_grad=True)

    def chain() -> None:
        y = leaf
        for _ in range(32):
            y = y * 1.0
        y.sum().backward()

    out["op_overhead"] = median_per_call(chain, each, sync) / 32
    return out


def attention_flops(shape: tuple[int, ...] = (1, 1, 1, 1)) -> float:
    """FLOPs ``autopar.cost`` counts for one fused attention forward + backward on
    q = k = v of ``shape`` (b, h, s, d): 4*b*h*s*s*d forward, 2.5x that backward."""
    b, h, seq, d = shape
    return 4.0 * b * h * seq * seq * d * 3.5

"""The runtime's own machinery on 2 gloo ranks: gradient buckets (accumulation, no_sync,
launches that overlap backward) and FSDP2 prefetch (the next layer's gather issued before
the current layer computes), read from a trace of the collectives issued."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

import autopar
from autopar.runtime.comm_count import CommCounter


class Deep(torch.nn.Module):
    """Enough parameters for several gradient buckets (1 MiB first bucket, then 25 MiB)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(512, 512) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x.pow(2).mean()


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def accumulate(rank: int, world: int) -> dict[str, float]:
    torch.manual_seed(0)
    model, x = Deep(), torch.randn(8, 512)
    ref = copy.deepcopy(model)
    compiled = autopar.compile(model, (x,), strategy="dp")
    out: dict[str, float] = {}
    for name, sync_first in (("accumulated", True), ("no_sync", False)):
        for p in (*compiled.parameters(), *ref.parameters()):
            p.grad = None
        for k in range(2):  # two backward calls into the same .grad
            xk = x * (k + 1)
            if sync_first or k == 1:
                compiled(xk).backward()
            else:
                with compiled.no_sync():
                    compiled(xk).backward()
            ref(xk).backward()
        want = _grads(ref)
        got = {k: p.grad for k, p in compiled.program.named_parameters()}  # dp: whole
        out[name] = max(float((got[k] - want[k]).abs().max()) for k in want)
    return out


def test_gradient_accumulation_reduces_once_per_contribution(pool2) -> None:
    for r in pool2.run(accumulate, timeout_s=120):
        assert r["accumulated"] < 1e-5 and r["no_sync"] < 1e-5, r


def bucket_trace(rank: int, world: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model, x = Deep(), torch.randn(8, 512)
    compiled = autopar.compile(model, (x,), strategy="dp")
    marks: list[float] = []
    weight = dict(compiled.program.named_parameters())["layers.0.weight"]
    weight.register_hook(lambda g: marks.append(time.perf_counter()))  # layer 0's grad ready
    ends: list[float] = []
    compiled.program.register_forward_hook(lambda *a: ends.append(time.perf_counter()))
    compiled.step(x)  # warm up
    for p in compiled.parameters():
        p.grad = None
    with CommCounter() as trace:
        start = time.perf_counter()
        compiled.step(x)
    reducer = compiled.program.grad_reducer
    backward = ends[-1] - start  # forward ended: what follows is backward
    launches = [t for kind, t in trace.events if kind == "all_reduce" and t > backward]
    return {
        "buckets": [len(b.params) for b in reducer.buckets],
        "events": trace.events,
        "launches": launches,
        "layer0_grad": marks[-1] - start,
    }


def test_bucket_reductions_launch_during_backward(pool2) -> None:
    r = pool2.run(bucket_trace, timeout_s=120)[0]
    assert len(r["buckets"]) >= 2, r  # 4 MiB of gradients: more than one bucket
    # the last layers' bucket is all-reduced before layer 0's gradient exists: the
    # reduction is issued while backward still has layer 0 to compute
    assert len(r["launches"]) == len(r["buckets"]), r
    assert r["launches"][0] < r["layer0_grad"], r


def fsdp_trace(rank: int, world: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model, x = Deep(), torch.randn(8, 512)
    compiled = autopar.compile(model, (x,), strategy="fsdp")
    counts: list[int] = []
    trace = CommCounter()

    def body_starts(module: Any, args: Any) -> None:  # runs after FSDP's own pre-forward
        counts.append(trace.counts["all_gather"])

    layers = compiled.program.layers
    for name in ("0", "1"):
        layers[name].register_forward_pre_hook(body_starts)
    compiled.step(x)
    counts.clear()
    with trace:
        compiled.step(x)
    return {"gathers_before_layer": counts, "modes": {k: v.mode for k, v in
                                                     compiled.params_spec.items()}}  # fmt: skip


def test_fsdp_prefetches_the_next_layer(pool2) -> None:
    r = pool2.run(fsdp_trace, timeout_s=120)[0]
    assert set(r["modes"].values()) == {"fsdp"}, r
    # before layer 0 computes: layer 0's gather and the prefetch of layer 1's
    before0, before1 = r["gathers_before_layer"][:2]
    assert before0 >= 2 and before1 >= before0 + 1, r

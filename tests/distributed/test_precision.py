"""bf16-mixed, run for real, on 2 gloo ranks: dp, tp, fsdp and pp against the single-process
model under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with fp32 parameters.

Tolerances, and why: bf16 keeps 8 significant bits (eps 2^-8 = 3.9e-3). A sharded program
rounds partial sums to bf16 in another order than the single process (a row-parallel
matmul rounds each rank's half before the all-reduce; FSDP hands autocast weights that are
already bf16), so gradients differ by a few bf16 ulps. Over 3 SGD steps that keeps
- the loss within 5e-4 relative (measured 1e-5..2e-4), and
- every parameter within 5% of how far it moved (|p - p_ref| <= 0.05 max|p_ref - p_0|;
  measured 0.8-1.7%).
On these tiny models the fp32 model lands inside the same tolerances (its loss is 4e-5
from the autocast one), so the test also watches what the program runs: every matmul and
attention op dispatched in a step produces bf16, FSDP gathers bf16 copies, and the
parameters (master weights) and their gradients stay fp32.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import autopar
from autopar.testing.parity import build_tiny

LOSS_RTOL, MOVE_RTOL, STEPS = 5e-4, 0.05, 3


class _Dtypes(TorchDispatchMode):
    """The output dtypes of matmul-like ops and the dtypes all-gathers move."""

    MATMUL = ("mm", "addmm", "bmm", "linear", "matmul", "_scaled_dot_product")

    def __init__(self) -> None:
        super().__init__()
        self.compute: set[str] = set()
        self.gathered: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        if name.startswith(self.MATMUL) and isinstance(out, torch.Tensor):
            self.compute.add(str(out.dtype))
        if "allgather" in name:
            self.gathered |= {str(a.dtype) for a in args if isinstance(a, torch.Tensor)}
        return out


def bf16_mixed(rank: int, world: int, example: str, kind: str) -> dict[str, Any]:
    model, args, kwargs = build_tiny(example)
    ref, ref32 = copy.deepcopy(model), copy.deepcopy(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opts: dict[str, Any] = {"mesh": {"pp": 2}} if kind == "pp" else {"strategy": kind}
    compiled = autopar.compile(model, args, kwargs, precision="bf16-mixed", **opts)
    opts_ = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (compiled, ref, ref32)]
    losses, ref_losses, fp32_losses = [], [], []
    seen = _Dtypes()
    for step in range(STEPS):
        for o in opts_:
            o.zero_grad()
        with seen if step == 0 else contextlib.nullcontext():
            losses.append(float(compiled.step(*args, **kwargs)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r = ref(*args, **kwargs).loss
        r.backward()
        r32 = ref32(*args, **kwargs).loss
        r32.backward()
        ref_losses.append(float(r))
        fp32_losses.append(float(r32))
        for o in opts_:
            o.step()
    full = compiled.full_state_dict()
    moved = {
        k: (float((full[k] - v).abs().max()), float((v - start[k]).abs().max()))
        for k, v in ref.state_dict().items()
    }
    return {"losses": losses, "ref": ref_losses, "fp32": fp32_losses, "moved": moved,
            "dtypes": sorted({str(p.dtype) for p in compiled.parameters()}),
            "grads": sorted({str(p.grad.dtype) for p in compiled.parameters()
                             if p.grad is not None}),
            "compute": sorted(seen.compute), "gathered": sorted(seen.gathered)}  # fmt: skip


@pytest.mark.parametrize("kind", ["dp", "tp", "fsdp", "pp"])
def test_bf16_mixed_parity(pool2, kind: str) -> None:
    r = pool2.run(bf16_mixed, "llama", kind, timeout_s=300)[0]
    assert r["dtypes"] == ["torch.float32"] == r["grads"], r  # fp32 master weights and grads
    assert r["compute"] == ["torch.bfloat16"], r["compute"]  # every matmul ran in bf16
    if kind == "fsdp":
        assert r["gathered"] == ["torch.bfloat16"], r["gathered"]
    for step, (a, b) in enumerate(zip(r["losses"], r["ref"])):
        assert abs(a - b) <= LOSS_RTOL * abs(b), f"step {step}: loss {a} vs autocast {b}"
    for key, (diff, move) in r["moved"].items():
        assert diff <= MOVE_RTOL * move + 1e-7, f"{key}: off by {diff}, moved {move}"

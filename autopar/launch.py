"""Launch a compiled model on N local processes (gloo on CPU, NCCL on GPUs).

Contract: ``launch(model, nproc, steps, strategy, mesh, check, timeout)`` spawns
``nproc`` ranks; each builds the model, compiles it, trains ``steps`` SGD steps on the
same batch (``compiled.step``: any plan kind, pipelines included) and rank 0 prints the
loss, milliseconds and tokens/s (global batch tokens / step time) per step (ranks are
spawned by ``runtime.ranks.spawn_ranks``). With ``check``, rank 0 also trains a single-process copy and compares the loss every step and every parameter after
the last step (rtol 1e-5, atol 4e-5). Returns True when every rank finished and the check
(if asked) passed. Any failing rank, or the timeout, ends every rank.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from autopar.runtime.ranks import RanksFailed, spawn_ranks

RTOL, ATOL = 1e-5, 4e-5


def _tokens(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Tokens in one global batch: the first integer tensor's elements (token ids), else
    the first tensor's batch size (samples)."""
    import torch

    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    for t in tensors:
        if not t.is_floating_point() and t.dim() >= 1:
            return int(t.numel())
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 0


def _train_rank(rank: int, nproc: int, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    import autopar
    from autopar.models import resolve

    torch.manual_seed(0)
    model, args, kwargs = resolve(cfg["model"])
    ref = copy.deepcopy(model) if cfg["check"] and rank == 0 else None
    compiled = autopar.compile(model, args, kwargs, strategy=cfg["strategy"], mesh=cfg["mesh"])
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1) if ref is not None else None
    report: dict[str, Any] = {"losses": [], "ref_losses": [], "seconds": [],
                              "tokens": _tokens(args, kwargs)}  # fmt: skip

    def loss_of(o: Any) -> torch.Tensor:
        return o if isinstance(o, torch.Tensor) else o.loss

    for _ in range(cfg["steps"]):
        start = time.perf_counter()
        opt.zero_grad()
        loss = compiled.step(*args, **kwargs)  # forward + backward, any plan kind
        opt.step()
        report["seconds"].append(time.perf_counter() - start)
        report["losses"].append(float(loss.detach()))
        if ref is not None and opt_ref is not None:
            opt_ref.zero_grad()
            r = loss_of(ref(*args, **kwargs))
            r.backward()
            opt_ref.step()
            report["ref_losses"].append(float(r.detach()))
    full = compiled.full_state_dict()
    if ref is not None:
        worst = 0.0
        for key, value in ref.state_dict().items():
            excess = float(((full[key] - value).abs() - RTOL * value.abs()).max())
            worst = max(worst, excess)
        report["param_excess"] = worst
    report["plan"] = compiled.plan.summary()
    return report


def launch(
    model: str, nproc: int, steps: int, strategy: str, mesh: Any, check: bool, timeout: float
) -> bool:
    cfg = {"model": model, "steps": steps, "strategy": strategy, "check": check,
           "mesh": dict(mesh.axes)}  # fmt: skip
    try:
        report = spawn_ranks(_train_rank, nproc, (cfg,), timeout_s=timeout)[0]
    except RanksFailed as err:
        print(err)
        return False
    print(report["plan"])
    ok = True
    for step, (loss, secs) in enumerate(zip(report["losses"], report["seconds"])):
        rate = report["tokens"] / secs if secs > 0 else 0.0
        line = f"step {step}: loss {loss:.6f}  {secs * 1e3:.1f} ms  {rate:,.0f} tokens/s"
        if check:
            ref = report["ref_losses"][step]
            good = abs(loss - ref) <= ATOL + RTOL * abs(ref)
            ok &= good
            line += f"  reference {ref:.6f}  {'ok' if good else 'MISMATCH'}"
        print(line)
    if check:
        good = report["param_excess"] <= ATOL
        ok &= good
        print(
            f"parameters after {steps} steps: {'match' if good else 'MISMATCH'} the single-process model"
        )
        print("check passed" if ok else "check FAILED")
    return ok

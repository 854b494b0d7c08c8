"""Launch a compiled model on N local processes (gloo on CPU, NCCL on GPUs).

Contract: ``launch(model, nproc, steps, strategy, mesh, check, timeout)`` spawns
``nproc`` ranks; each builds the model, compiles it, trains ``steps`` SGD steps on the
same batch (``compiled.step``: any plan kind, pipelines included) and rank 0 prints the
loss, milliseconds and tokens/s (global batch tokens / step time) per step. With ``check``, rank 0 also
trains a single-process copy and compares the loss every step and every parameter after
the last step (rtol 1e-5, atol 4e-5). Returns True when every rank finished and the check
(if asked) passed. Any failing rank, or the timeout, ends every rank.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback
from typing import Any

RTOL, ATOL = 1e-5, 4e-5


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tokens(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Tokens in one global batch: the first integer tensor's elements (token ids), else
    the first tensor's batch size (samples)."""
    import torch

    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    for t in tensors:
        if not t.is_floating_point() and t.dim() >= 1:
            return int(t.numel())
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 0


def _rank_main(rank: int, nproc: int, port: int, cfg: dict[str, Any], out: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    code = 0
    try:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=nproc)  # fmt: skip
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
        out.put((rank, "ok", report))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails every rank
        out.put((rank, "error", traceback.format_exc()))
        code = 1
    os._exit(code)


def launch(
    model: str, nproc: int, steps: int, strategy: str, mesh: Any, check: bool, timeout: float
) -> bool:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    cfg = {"model": model, "steps": steps, "strategy": strategy, "check": check,
           "mesh": dict(mesh.axes)}  # fmt: skip
    port = _port()
    procs = [ctx.Process(target=_rank_main, args=(r, nproc, port, cfg, out)) for r in range(nproc)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    results: dict[int, tuple[str, Any]] = {}
    try:
        while len(results) < nproc:
            try:
                rank, status, payload = out.get(
                    timeout=max(0.1, min(1.0, deadline - time.monotonic()))
                )
                results[rank] = (status, payload)
                if status == "error":
                    print(f"rank {rank} failed:\n{payload}")
                    return False
            except queue.Empty:
                if time.monotonic() > deadline:
                    print(
                        f"timed out after {timeout:.0f} s waiting for ranks {sorted(set(range(nproc)) - set(results))}"
                    )
                    return False
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    print(f"a rank exited with code {dead[0].exitcode} before reporting")
                    return False
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    report = results[0][1]
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

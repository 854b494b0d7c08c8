"""Launch a compiled model on N local processes (gloo on CPU, NCCL on GPUs).

Contract: ``launch(RunConfig(...))`` spawns ``cfg.nproc`` ranks
(``runtime.ranks.spawn_ranks``: a collective that waits longer than ``cfg.timeout``
seconds for its peers ends every rank; there is no limit on the whole run); each builds
the model, compiles it (``autopar.compile(timeout=cfg.timeout)``), trains ``cfg.steps``
SGD steps on the same batch (``compiled.step``: any plan kind, pipelines included) and
rank 0 prints the loss, milliseconds and tokens/s (global batch tokens / step time) per
step. With ``cfg.check``, rank 0 also trains a single-process copy and compares the loss
every step and every parameter after the last step (rtol 1e-5, atol 4e-5). Returns True
when the check (if asked) passed; a failing rank raises ``RanksFailed`` (the CLI's exit
3) naming that rank, its error and exit code. ``cfg.validate()`` refuses a config that
cannot run (ValueError) before any rank is spawned.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from autopar.timeouts import DEFAULT_TIMEOUT_S, check_timeout

RTOL, ATOL = 1e-5, 4e-5
LR = 0.1


@dataclass(frozen=True)
class RunConfig:
    """What ``autopar run`` trains: sent (pickled) to every rank."""

    model: str
    nproc: int = 2
    steps: int = 3
    strategy: str = "auto"
    mesh: dict[str, int] = field(default_factory=dict)  # axis -> size; empty: dp over all
    check: bool = False
    timeout: float = DEFAULT_TIMEOUT_S

    def validate(self) -> None:
        for name, value in (("--nproc", self.nproc), ("--steps", self.steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        check_timeout(self.timeout, "--timeout")


def _tokens(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Tokens in one global batch: the first integer tensor's elements (token ids), else
    the first tensor's batch size (samples)."""
    import torch

    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    for t in tensors:
        if not t.is_floating_point() and t.dim() >= 1:
            return int(t.numel())
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 0


def _loss_of(o: Any) -> Any:
    import torch

    return o if isinstance(o, torch.Tensor) else o.loss


def _train_rank(rank: int, nproc: int, cfg: RunConfig) -> dict[str, Any]:
    import torch

    import autopar
    from autopar.models import resolve

    torch.manual_seed(0)
    model, args, kwargs = resolve(cfg.model)
    ref = copy.deepcopy(model) if cfg.check and rank == 0 else None
    compiled = autopar.compile(model, args, kwargs, strategy=cfg.strategy,
                               mesh=cfg.mesh or None, timeout=cfg.timeout)  # fmt: skip
    opt = torch.optim.SGD(compiled.parameters(), lr=LR)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=LR) if ref is not None else None
    report: dict[str, Any] = {"losses": [], "ref_losses": [], "seconds": [],
                              "tokens": _tokens(args, kwargs)}  # fmt: skip
    for _ in range(cfg.steps):
        start = time.perf_counter()
        opt.zero_grad()
        loss = compiled.step(*args, **kwargs)  # forward + backward, any plan kind
        opt.step()
        report["seconds"].append(time.perf_counter() - start)
        report["losses"].append(float(loss.detach()))
        if ref is not None and opt_ref is not None:
            opt_ref.zero_grad()
            r = _loss_of(ref(*args, **kwargs))
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


def print_report(report: dict[str, Any], cfg: RunConfig) -> bool:
    """Rank 0's report, one line per step; True when the check (if asked) passed."""
    print(report["plan"])
    ok = True
    for step, (loss, secs) in enumerate(zip(report["losses"], report["seconds"])):
        rate = report["tokens"] / secs if secs > 0 else 0.0
        line = f"step {step}: loss {loss:.6f}  {secs * 1e3:.1f} ms  {rate:,.0f} tokens/s"
        if cfg.check:
            ref = report["ref_losses"][step]
            good = abs(loss - ref) <= ATOL + RTOL * abs(ref)
            ok &= good
            line += f"  reference {ref:.6f}  {'ok' if good else 'MISMATCH'}"
        print(line)
    if cfg.check:
        good = report["param_excess"] <= ATOL
        ok &= good
        print(f"parameters after {cfg.steps} steps: {'match' if good else 'MISMATCH'} "
              "the single-process model")  # fmt: skip
        print("check passed" if ok else "check FAILED")
    return ok


def launch(cfg: RunConfig) -> bool:
    from autopar.runtime.ranks import spawn_ranks

    cfg.validate()
    report = spawn_ranks(_train_rank, cfg.nproc, (cfg,), timeout_s=cfg.timeout, what="autopar run")[
        0
    ]
    return print_report(report, cfg)

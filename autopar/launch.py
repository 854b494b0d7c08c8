"""Launch a compiled model on N local processes (gloo on CPU, NCCL on GPUs).

Contract: ``launch(RunConfig(...))`` spawns ``cfg.nproc`` ranks
(``runtime.ranks.spawn_ranks``: a collective that waits longer than ``cfg.timeout``
seconds for its peers ends every rank; there is no limit on the whole run); each builds
the model, compiles it (``autopar.compile(timeout=cfg.timeout)``), trains ``cfg.steps``
SGD steps on the same batch (``compiled.step``: any plan kind, pipelines included) and
rank 0 prints the loss, milliseconds and tokens/s (global batch tokens / step time) per
step, then the measured step time (median after the first step) next to the plan's
predicted step time and their ratio. ``cfg.precision`` (fp32, bf16-mixed, bf16; None: the
devices' default) is how the program trains (bf16 casts the model to bf16 first). With
``cfg.check``, rank 0 also trains a single-process copy (under the same autocast) and
compares the loss every step and every parameter after the last step (fp32: rtol 1e-5,
atol 4e-5; bf16: rtol 2e-2, atol 2e-3). With
``cfg.resume`` (a checkpoint directory, saved on any number of processes under any plan)
every rank loads the model and SGD state into this run's plan (``load_checkpoint``
reshards) and the steps continue from the saved step (the reference too); with
``cfg.save`` the ranks write a checkpoint after the last step. Returns True
when the check (if asked) passed; a failing rank raises ``RanksFailed`` (the CLI's exit
3) naming that rank, its error and exit code. ``cfg.validate()`` refuses a config that
cannot run (ValueError) before any rank is spawned.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any

from autopar.timeouts import DEFAULT_TIMEOUT_S, check_timeout

RTOL, ATOL = 1e-5, 4e-5
BF16_RTOL, BF16_ATOL = 2e-2, 2e-3
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
    save: str | None = None  # checkpoint directory written after the last step
    resume: str | None = None  # checkpoint directory training continues from
    precision: str | None = None  # None: the plan's default for the devices

    def tolerance(self) -> tuple[float, float]:
        """(rtol, atol) of the check: fp32 is exact up to reduction order; bf16-mixed is
        compared with a single process under the same autocast, whose bf16 matmuls round
        differently on sharded operands."""
        return (RTOL, ATOL) if self.precision in (None, "fp32") else (BF16_RTOL, BF16_ATOL)

    def validate(self) -> None:
        for name, value in (("--nproc", self.nproc), ("--steps", self.steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        check_timeout(self.timeout, "--timeout")
        if self.precision is not None:
            from autopar.precision import check

            check(self.precision)
        if self.resume is not None:  # a CheckpointError (ValueError) names what is wrong
            from autopar.runtime.checkpoint_meta import read_metadata

            read_metadata(self.resume)
        if self.save is not None and os.path.exists(self.save) and not os.path.isdir(self.save):
            raise ValueError(
                f"--save {self.save} is a file; a checkpoint is a directory (one file per "
                "rank and a description): give a new or existing directory"
            )


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
    if cfg.precision == "bf16":  # pure bf16 trains the model as built in bf16
        model, args, kwargs = _to_bf16(model, args, kwargs)
    ref = copy.deepcopy(model) if cfg.check and rank == 0 else None
    compiled = autopar.compile(model, args, kwargs, strategy=cfg.strategy,
                               mesh=cfg.mesh or None, timeout=cfg.timeout,
                               precision=cfg.precision)  # fmt: skip
    autocast = _reference_autocast(compiled.plan.precision)
    opt = torch.optim.SGD(compiled.parameters(), lr=LR)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=LR) if ref is not None else None
    report: dict[str, Any] = {"losses": [], "ref_losses": [], "seconds": [],
                              "tokens": _tokens(args, kwargs), "first": 0}  # fmt: skip
    if cfg.resume is not None:  # re-planned for this many ranks; DCP reshards the pieces
        report["first"] = autopar.load_checkpoint(cfg.resume, compiled, opt)
        if ref is not None:  # the single-process reference resumes from the same state
            autopar.load_checkpoint(cfg.resume, ref, opt_ref)
        from autopar.runtime.checkpoint_meta import read_metadata

        saved = read_metadata(cfg.resume)
        report["resumed"] = {"world_size": saved["world_size"], "mesh": saved["mesh"],
                             "strategy": saved["strategy"]}  # fmt: skip
    for _ in range(cfg.steps):
        start = time.perf_counter()
        opt.zero_grad()
        loss = compiled.step(*args, **kwargs)  # forward + backward, any plan kind
        opt.step()
        report["seconds"].append(time.perf_counter() - start)
        report["losses"].append(float(loss.detach()))
        if ref is not None and opt_ref is not None:
            opt_ref.zero_grad()
            with autocast():
                r = _loss_of(ref(*args, **kwargs))
            r.backward()
            opt_ref.step()
            report["ref_losses"].append(float(r.detach()))
    if cfg.save is not None:
        autopar.save_checkpoint(cfg.save, compiled, opt, step=report["first"] + cfg.steps)
    full = compiled.full_state_dict()
    if ref is not None:
        worst = 0.0
        for key, value in ref.state_dict().items():
            rtol, _ = cfg.tolerance()
            excess = float(((full[key] - value).abs() - rtol * value.abs()).max())
            worst = max(worst, excess)
        report["param_excess"] = worst
    report["plan"] = compiled.plan.summary()
    report["predicted_s"] = compiled.plan.predicted.step_time_s
    report["precision"] = compiled.plan.precision
    return report


def _to_bf16(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import torch

    def cast(v: Any) -> Any:
        return v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    return model.to(torch.bfloat16), tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _reference_autocast(precision: str) -> Any:
    """What the single-process reference runs under: the program's autocast."""
    import contextlib
    import functools

    import torch

    if precision != "bf16-mixed":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)


def timing_line(seconds: list[float], predicted_s: float) -> str:
    """Measured step time (median of the steps after the first, which warms up) next to
    the plan's prediction and their ratio."""
    import statistics

    timed = seconds[1:] or seconds
    measured = statistics.median(timed)
    ratio = measured / predicted_s if predicted_s > 0 else float("inf")
    return (f"step time: measured {measured * 1e3:.2f} ms (median of {len(timed)} step"
            f"{'s' if len(timed) != 1 else ''}{' after the first' if len(seconds) > 1 else ''}),"
            f" predicted {predicted_s * 1e3:.2f} ms: measured / predicted = {ratio:.2f}")  # fmt: skip


def print_report(report: dict[str, Any], cfg: RunConfig) -> bool:
    """Rank 0's report, one line per step; True when the check (if asked) passed."""
    print(report["plan"])
    first = report.get("first", 0)
    rtol, atol = cfg.tolerance()
    if cfg.resume is not None:
        print(_resumed_line(report["resumed"], cfg, first))
    ok = True
    for step, (loss, secs) in enumerate(zip(report["losses"], report["seconds"]), start=first):
        rate = report["tokens"] / secs if secs > 0 else 0.0
        line = f"step {step}: loss {loss:.6f}  {secs * 1e3:.1f} ms  {rate:,.0f} tokens/s"
        if cfg.check:
            ref = report["ref_losses"][step - first]
            good = abs(loss - ref) <= atol + rtol * abs(ref)
            ok &= good
            line += f"  reference {ref:.6f}  {'ok' if good else 'MISMATCH'}"
        print(line)
    print(timing_line(report["seconds"], report["predicted_s"]))
    if cfg.check:
        good = report["param_excess"] <= atol
        ok &= good
        print(f"parameters after {cfg.steps} steps: {'match' if good else 'MISMATCH'} "
              "the single-process model")  # fmt: skip
        print("check passed" if ok else "check FAILED")
    if cfg.save is not None:
        print(f"saved step {first + cfg.steps} to {cfg.save} (resume with --resume {cfg.save}, "
              "on any number of processes)")  # fmt: skip
    return ok


def _resumed_line(saved: dict[str, Any], cfg: RunConfig, first: int) -> str:
    """Where training continues from: the saving run's processes and plan, and this one's."""
    axes = (saved.get("mesh") or {}).get("axes") or []
    mesh = (
        "(" + ", ".join(f"{a['name']}={a['size']}" for a in axes) + ")" if axes else "one process"
    )
    n = saved["world_size"]
    how = "the same number of processes" if n == cfg.nproc else f"re-planned for {cfg.nproc}"
    return (f"resumed at step {first} from {cfg.resume}: saved by {n} process"
            f"{'es' if n != 1 else ''} (strategy {saved.get('strategy')}, mesh {mesh}); {how}, "
            "the checkpoint resharded to this plan")  # fmt: skip


def launch(cfg: RunConfig) -> bool:
    from autopar.runtime.ranks import spawn_ranks

    cfg.validate()
    report = spawn_ranks(_train_rank, cfg.nproc, (cfg,), timeout_s=cfg.timeout, what="")[0]
    return print_report(report, cfg)

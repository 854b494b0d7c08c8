"""Parity driver shared by the distributed tests: compile, train, compare to a reference.

``train_parity(rank, world, example, strategy, mesh, optimizer, steps)`` builds the
example's tiny model twice from the same seed, trains the reference in this process and
the compiled model over the process group on the same global batch, and returns the
per-step losses and the largest differences of the final parameters, plus the
collectives the compiled model issued in one step (counted by CommDebugMode).
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch

import autopar
from autopar.runtime.comm_count import CommCounter


def _loss(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.loss


def _run_one(
    example: str,
    strategy: str,
    mesh: Any,
    optimizer: str,
    steps: int,
    cluster: str | None,
    memory_budget: float | None = None,
) -> dict[str, Any]:
    mod = importlib.import_module(f"examples.{example}")
    model, args, kwargs = mod.build("tiny")
    ref = copy.deepcopy(model)
    compiled = autopar.compile(
        model, args, kwargs, strategy=strategy, mesh=mesh, cluster=cluster,
        memory_budget=memory_budget, optimizer="sgd" if optimizer == "sgd" else "adamw",
    )  # fmt: skip

    def make(params: Any) -> torch.optim.Optimizer:
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.1)
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=False)

    opt_ref, opt = make(ref.parameters()), make(compiled.parameters())
    losses, ref_losses, comms = [], [], {}
    for step in range(steps):
        opt_ref.zero_grad()
        loss_ref = _loss(ref(*args, **kwargs))
        loss_ref.backward()
        opt_ref.step()
        opt.zero_grad()
        with CommCounter() as counter:
            loss = _loss(compiled(*args, **kwargs))
            loss.backward()
        if step == 0:
            comms = dict(counter.counts)
        opt.step()
        losses.append(float(loss.detach()))
        ref_losses.append(float(loss_ref.detach()))
    diffs, missing = state_diffs(compiled.full_state_dict(), ref.state_dict())
    return {
        "losses": losses, "ref_losses": ref_losses, "diffs": diffs,
        "missing": missing, "comms": comms,
        "planned": dict(compiled.plan.collectives()),
        "sharded": sum(1 for n in compiled.plan.nodes if n.kind == "op" and n.outs and any(
            str(p) != "R" for p in n.outs[0])),
        "modes": compiled.plan.param_modes(),
        "memory": dict(compiled.plan.predicted.memory),
        "held": held_bytes(compiled, opt),
    }  # fmt: skip


def state_diffs(
    full: dict[str, torch.Tensor], ref_sd: dict[str, torch.Tensor]
) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """Per key (max |full - ref|, max |ref|), and the reference keys ``full`` lacks."""
    diffs = {
        k: (float((full[k] - v).abs().max()), float(v.abs().max()))
        for k, v in ref_sd.items()
        if k in full
    }
    return diffs, sorted(set(ref_sd) - set(full))


def local_nbytes(t: Any) -> int:
    from torch.distributed.tensor import DTensor

    t = t.to_local() if isinstance(t, DTensor) else t
    return int(t.numel() * t.element_size())


def held_bytes(compiled: Any, opt: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds for parameters (and buffers), gradients and optimizer state,
    counted from the local tensors."""
    params = list(compiled.parameters())
    return {
        "params": sum(local_nbytes(p) for p in params)
        + sum(local_nbytes(b) for b in compiled.buffers()),
        "grads": sum(local_nbytes(p.grad) for p in params if p.grad is not None),
        "optimizer_state": sum(
            local_nbytes(v) for st in opt.state.values() for v in st.values()
            if isinstance(v, torch.Tensor)
        ),
    }  # fmt: skip


def train_parity(
    rank: int,
    world: int,
    example: str,
    strategy: str,
    mesh: dict[str, int] | None,
    optimizers: tuple[str, ...] = ("sgd", "adamw"),
    steps: int = 3,
    cluster: str | None = None,
    memory_budget: float | None = None,
) -> dict[str, Any]:
    return {
        opt: _run_one(example, strategy, mesh, opt, steps, cluster, memory_budget)
        for opt in optimizers
    }


TOLERANCE = {"sgd": (1e-5, 4e-5), "adamw": (1e-4, 1e-4)}  # (rtol, atol)


def check(result: dict[str, Any]) -> None:
    """Assert parity of one train_parity result (rank 0's)."""
    for opt, r in result.items():
        rtol, atol = TOLERANCE[opt]
        assert not r["missing"], f"{opt}: full_state_dict misses {r['missing']}"
        for step, (a, b) in enumerate(zip(r["losses"], r["ref_losses"])):
            assert abs(a - b) <= atol + rtol * abs(b), (
                f"{opt} step {step}: loss {a} vs reference {b}"
            )
        for key, (diff, scale) in r["diffs"].items():
            assert diff <= atol + rtol * scale, (
                f"{opt}: {key} differs by {diff} (max |ref| {scale})"
            )
        assert r["comms"] == r["planned"], (
            f"{opt}: collectives issued {r['comms']} differ from the plan's {r['planned']}"
        )

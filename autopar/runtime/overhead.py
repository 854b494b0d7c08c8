"""What the runtime's own calls cost: measured with the real ``rt.reshard`` on the live group.

Contract: ``runtime_overheads(group=None, budget_s=1.0)`` must be called on every rank of
an initialised process group (as ``cost_models.calibrate.run_calibration``); every rank
returns the same ``RuntimeOverheads`` (each figure the slowest rank's), in seconds per
call, forward plus backward, with no communication in them:

- ``param_use_s``: a parameter used in the layout it is stored in (a plain tensor read by
  the generated code; what remains is the post-accumulate-grad hook that feeds the
  gradient buckets);
- ``reshard_s``: a layout call on an activation (``rt.reshard``'s autograd node with its
  steps interpreted, no collective in it), the per-call framework cost of every move.

Each is the time of a chain of such calls minus the same chain without them, divided by
its length. ``calibrate_runtime(budget_s, path)`` runs ``run_calibration`` and then this,
and returns the ``Calibration`` whose profile carries both figures
(``Profile.param_use_s``, ``Profile.reshard_overhead_s``): what the planner prices a
generated program's calls with. They are the runtime's, so they are measured here, not in
``cost_models``, which must not depend on the runtime.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

CHAIN = 16  # calls per timed chain


@dataclass(frozen=True)
class RuntimeOverheads:
    param_use_s: float
    reshard_s: float


def runtime_overheads(group: Any = None, budget_s: float = 1.0) -> RuntimeOverheads:
    """Per-call seconds of the runtime's layout calls (see the module docstring)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

    from autopar.runtime.collectives import Axes, reshard
    from cost_models.microbench import median_per_call

    pg = group if group is not None else dist.group.WORLD
    if pg is None:
        raise RuntimeError("runtime_overheads needs an initialised process group")
    backend = str(dist.get_backend(pg))
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    mesh = DeviceMesh.from_group(pg, torch.device(device).type, mesh_dim_names=("x",))
    axes = Axes(mesh)
    hooked = [torch.nn.Parameter(torch.ones(4, device=device)) for _ in range(CHAIN)]
    plain = [torch.nn.Parameter(torch.ones(4, device=device)) for _ in range(CHAIN)]
    for p in hooked:
        p.register_post_accumulate_grad_hook(lambda t: None)

    def uses(through: bool) -> None:
        total = torch.zeros((), device=device)
        for p in hooked if through else plain:
            total = total + p.sum()
        total.backward()
        for p, q in zip(hooked, plain):
            p.grad = q.grad = None
        sync()

    leaf = torch.ones(2 * dist.get_world_size(pg), device=device, requires_grad=True)

    def moves(through: bool) -> None:
        y = leaf * 1.0
        if through:
            for _ in range(CHAIN):
                y = reshard(y, axes, (), ())
        y.sum().backward()
        leaf.grad = None
        sync()

    each = budget_s / 4
    dist.barrier(group=pg)
    figures = [
        (
            median_per_call(lambda: uses(True), each, sync)
            - median_per_call(lambda: uses(False), each, sync)
        )
        / CHAIN,
        (
            median_per_call(lambda: moves(True), each, sync)
            - median_per_call(lambda: moves(False), each, sync)
        )
        / CHAIN,
    ]
    agreed = torch.tensor(figures, dtype=torch.float64, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=pg)
    param_use, move = (max(0.0, float(x)) for x in agreed.cpu())
    return RuntimeOverheads(param_use, move)


def calibrate_runtime(budget_s: float = 8.0, path: str = "dtensor", group: Any = None) -> Any:
    """``run_calibration`` plus ``runtime_overheads``: the ``Calibration`` whose profile
    prices the generated program's calls. Call on every rank."""
    from cost_models.calibrate import run_calibration

    cal = run_calibration(group, budget_s, path)
    over = runtime_overheads(group, max(0.5, budget_s / 8))
    profile = dataclasses.replace(
        cal.profile, param_use_s=over.param_use_s, reshard_overhead_s=over.reshard_s
    )
    return dataclasses.replace(
        cal, profile=profile, reshard_overhead_s=over.reshard_s, param_use_s=over.param_use_s
    )

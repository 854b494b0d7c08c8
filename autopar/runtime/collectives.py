"""Collectives on local tensors: the steps a generated program issues between ops.

Contract:
- ``Axes(device_mesh)`` holds, per mesh axis name, the process group, this rank's index
  on the axis and the axis size (looked up once; the hot path reads attributes).
- Steps (``autopar.steps``: one operation on one named mesh axis, e.g.
  ``("all_gather", "tp", 1)``) are found between any two layouts by ``walk`` /
  ``transition_steps`` / ``plan_steps`` (re-exported here); ``cost.transition`` prices
  exactly those steps. ``run_steps(x, axes, steps)`` executes them on a local tensor.
- ``reshard(x, axes, fwd, bwd)`` runs the steps ``fwd`` on ``x`` in forward and the steps
  ``bwd`` on the incoming gradient in backward (one autograd node; either may be empty).
- ``general_reshard(x, axes, src, dst, grad)`` is the same for layouts given as text
  (``"S(0)S(0)"``): ``plan_steps`` run by ``reshard``.
Every collective is a blocking ``torch.distributed`` call on the axis' group.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from autopar.steps import Step, grad_layout, plan_steps, transition_steps, walk

__all__ = [
    "Axes", "Step", "general_reshard", "grad_layout", "plan_steps", "reshard", "run_steps",
    "transition_steps", "walk",
]  # fmt: skip


class Axes:
    """Process groups and coordinates of this rank on each named mesh axis."""

    def __init__(self, device_mesh: Any) -> None:
        self.mesh = device_mesh
        self.names: tuple[str, ...] = tuple(device_mesh.mesh_dim_names)
        self.group: dict[str, Any] = {}
        self.rank: dict[str, int] = {}
        self.size: dict[str, int] = {}
        for i, name in enumerate(self.names):
            self.group[name] = device_mesh.get_group(name)
            self.rank[name] = int(device_mesh.get_local_rank(name))
            self.size[name] = int(device_mesh.size(i))


# ---- primitive operations -----------------------------------------------------------


def _all_gather(x: torch.Tensor, group: Any, n: int, dim: int) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty((n * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_single(out, x, group=group)
    if dim == 0:
        return out
    # [n * a, ...] -> pieces along dim
    pieces = out.view(n, *x.shape)
    return torch.cat(pieces.unbind(0), dim=dim)


def _reduce_scatter(x: torch.Tensor, group: Any, n: int, dim: int) -> torch.Tensor:
    src = x.contiguous() if dim == 0 else torch.stack(x.chunk(n, dim), 0).contiguous()
    shape = list(x.shape)
    shape[dim] //= n
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    dist.reduce_scatter_single(out.view(-1), src.view(-1), group=group)
    return out


def _all_reduce(x: torch.Tensor, group: Any) -> torch.Tensor:
    y = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(y, group=group)
    return y


def _all_to_all(x: torch.Tensor, group: Any, n: int, src_dim: int, dst_dim: int) -> torch.Tensor:
    send = torch.stack(x.chunk(n, dst_dim), 0).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=src_dim)


def run_steps(x: torch.Tensor, axes: Axes, steps: tuple[Step, ...]) -> torch.Tensor:
    for step in steps:
        kind, axis = step[0], step[1]
        group, n = axes.group[axis], axes.size[axis]
        if kind == "all_reduce":
            x = _all_reduce(x, group)
        elif kind == "all_gather":
            x = _all_gather(x, group, n, step[2])
        elif kind == "reduce_scatter":
            x = _reduce_scatter(x, group, n, step[2])
        elif kind == "chunk":
            x = x.chunk(n, step[2])[axes.rank[axis]].contiguous()
        elif kind == "keep":
            x = x.clone() if axes.rank[axis] == 0 else torch.zeros_like(x)
        elif kind == "all_reduce_avg":
            x = _all_reduce(x, group).div_(n)
        elif kind == "scale":
            power = step[2] if len(step) > 2 else -1
            x = x / n if power == -1 else x * float(n) ** power
        elif kind == "all_to_all":
            x = _all_to_all(x, group, n, step[2], step[3])
        else:
            raise ValueError(f"unknown collective step {step!r}")
    return x


class _Reshard(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, axes: Axes, fwd: Any, bwd: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.axes, ctx.bwd = axes, bwd
        out = run_steps(x, axes, fwd)
        return out.view_as(out) if out is x else out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return run_steps(g, ctx.axes, ctx.bwd), None, None, None


def reshard(
    x: torch.Tensor, axes: Axes, fwd: tuple[Step, ...], bwd: tuple[Step, ...] = ()
) -> torch.Tensor:
    """Move ``x`` by ``fwd``; its gradient comes back through ``bwd``."""
    if not x.requires_grad:
        return run_steps(x, axes, fwd)
    return _Reshard.apply(x, axes, fwd, bwd)  # type: ignore[no-any-return]


def general_reshard(x: torch.Tensor, axes: Axes, src_text: str, dst_text: str,
                    grad_text: str) -> torch.Tensor:  # fmt: skip
    """Any layout change, layouts as text (e.g. ``"S(0)S(0)"``): ``plan_steps`` run by
    ``reshard`` (every pair of layouts has steps, ``P(avg)`` included)."""
    from autopar.runtime.layouts import parse_layout

    src, dst, grad = parse_layout(src_text), parse_layout(dst_text), parse_layout(grad_text)
    return reshard(x, axes, *plan_steps(src, dst, grad, axes.names))

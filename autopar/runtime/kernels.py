"""Custom local kernels a generated program calls where a rule names one.

Contract:
- ``vocab_embedding(weight, ids, axes, axis)``: ``embedding`` with the table's rows split
  over mesh axis ``axis``: each rank looks up the ids it owns and zeros the rest; the
  result is a partial sum over the axis (the plan all-reduces it where a whole value is
  needed).
- ``sharded_cross_entropy(logits, target, axes, names, ..., whole_target=None,
  pending=None)``: ``aten.cross_entropy_loss`` over a batch split on the mesh axes
  ``names``; the mean (or sum) equals the unsharded one, ``ignore_index`` included. The
  mean divides by the count of counted targets over the whole batch: counted locally in
  ``whole_target`` (the whole batch's targets, which every rank holds) when given, else
  summed over the axes with the local loss sum in ONE blocking all-reduce per axis. With
  ``whole_target`` each rank's share of the loss (its sum over the global count) is summed
  over the axes by one all-reduce, asynchronous when ``pending`` (a list) is given on one
  axis: its work is appended there and the returned value is final only once the caller
  has waited on it (``Context.settle``); backward never reads it. The gradient passes
  back unchanged (every rank holds the same loss).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from autopar.runtime.collectives import Axes


def vocab_embedding(
    weight: torch.Tensor, ids: torch.Tensor, axes: Axes, axis: str, *rest: Any
) -> torch.Tensor:
    rows = weight.shape[0]
    start = axes.rank[axis] * rows
    local = ids - start
    owned = (local >= 0) & (local < rows)
    out = torch.nn.functional.embedding(torch.where(owned, local, 0), weight)
    return out * owned.unsqueeze(-1).to(out.dtype)


class _SumOver(torch.autograd.Function):
    """(partial loss sum, partial count) -> their sums over ``names``; the gradient of a
    replicated sum reaches every partial term unchanged."""

    @staticmethod
    def forward(ctx: Any, total: torch.Tensor, count: torch.Tensor, axes: Axes, names: Any):  # type: ignore[no-untyped-def,override]
        both = torch.stack([total.detach(), count.to(total.dtype)])
        for name in names:
            dist.all_reduce(both, group=axes.group[name])
        return both[0].clone(), both[1].clone()

    @staticmethod
    def backward(ctx: Any, g_total: torch.Tensor, g_count: torch.Tensor):  # type: ignore[no-untyped-def,override]
        return g_total, None, None, None


class _Share(torch.autograd.Function):
    """A rank's share of the loss -> the sum of the shares over ``names`` (asynchronous
    when ``pending`` is a list); the gradient reaches every share unchanged."""

    @staticmethod
    def forward(ctx: Any, share: torch.Tensor, axes: Axes, names: Any, pending: Any):  # type: ignore[no-untyped-def,override]
        out = share.detach().clone()
        if pending is not None and len(names) == 1:
            pending.append(dist.all_reduce(out, group=axes.group[names[0]], async_op=True))
            return out
        for name in names:
            dist.all_reduce(out, group=axes.group[name])
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):  # type: ignore[no-untyped-def,override]
        return g, None, None, None


def sharded_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    axes: Axes,
    names: tuple[str, ...],
    weight: object = None,
    reduction: int = 1,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    *,
    whole_target: torch.Tensor | None = None,
    pending: list[Any] | None = None,
) -> torch.Tensor:
    total = torch.ops.aten.cross_entropy_loss(logits, target, None, 2, ignore_index, 0.0)
    if whole_target is not None:
        share = total if reduction == 2 else total / (whole_target != ignore_index).sum()
        return _Share.apply(share, axes, names, pending)  # type: ignore[no-any-return]
    count = (target != ignore_index).sum()
    total, count = _SumOver.apply(total, count, axes, names)
    if reduction == 2:
        return total  # type: ignore[no-any-return]
    return total / count  # type: ignore[no-any-return]

"""Custom local kernels a generated program calls where a rule names one.

Contract:
- ``vocab_embedding(weight, ids, axes, axis)``: ``embedding`` with the table's rows split
  over mesh axis ``axis``: each rank looks up the ids it owns and zeros the rest; the
  result is a partial sum over the axis (the plan all-reduces it where a whole value is
  needed).
- ``sharded_cross_entropy(logits, target, axes, names, ...)``: ``aten.cross_entropy_loss``
  over a batch split on the mesh axes ``names``; the mean (or sum) equals the unsharded
  one, ``ignore_index`` included. The local loss sum and the count of counted targets are
  summed over the axes in ONE all-reduce per axis; the gradient passes back unchanged
  (every rank holds the same loss).
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


def sharded_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    axes: Axes,
    names: tuple[str, ...],
    weight: object = None,
    reduction: int = 1,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    total = torch.ops.aten.cross_entropy_loss(logits, target, None, 2, ignore_index, 0.0)
    count = (target != ignore_index).sum()
    total, count = _SumOver.apply(total, count, axes, names)
    if reduction == 2:
        return total  # type: ignore[no-any-return]
    return total / count  # type: ignore[no-any-return]

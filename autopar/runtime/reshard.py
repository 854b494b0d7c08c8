"""Runtime pieces the generated program calls: the reshard and the custom kernels.

Contract:
- ``Reshard(mesh)(x, src, dst, grad)`` returns the local piece of ``x`` in layout ``dst``
  (short form, e.g. ``"S(0)R"``). ``x`` is a local tensor in layout ``src``, or a DTensor
  (a parameter), whose own placements are used. In backward the incoming local
  gradient is read as layout ``grad`` and moved back to ``src`` (``Partial`` read as
  replicated): a ``Partial`` gradient of a replicated value is all-reduced there; this
  is the data-parallel gradient reduction. The collectives are DTensor's redistribute.
- ``VocabEmbedding`` looks up only the rows a rank owns (vocabulary-parallel table).
- ``ShardedCrossEntropy`` computes a batch-sharded mean/sum cross-entropy whose value
  equals the unsharded one, ignore_index included.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from autopar.placement import (
    Layout,
    Partial,
    R,
    from_dtensor_placement,
    parse_placement,
    to_dtensor_placements,
)

_TOKEN = re.compile(r"S\(\d+\)|P\(avg\)|R|P")


@cache
def parse_layout(text: str) -> Layout:
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != text:
        raise ValueError(f"cannot parse layout {text!r}; expected e.g. 'S(0)R'")
    return tuple(parse_placement(t) for t in tokens)


class Reshard(torch.nn.Module):
    def __init__(self, mesh: object) -> None:
        super().__init__()
        self.mesh = mesh

    def forward(self, x: torch.Tensor, src: str, dst: str, grad: str) -> torch.Tensor:
        dst_l = parse_layout(dst)
        grad_p = to_dtensor_placements(parse_layout(grad))
        if isinstance(x, DTensor):  # a parameter: its gradient arrives in its own layout
            src_l = tuple(from_dtensor_placement(p) for p in x.placements)
            x = x.to_local(grad_placements=x.placements)
        else:
            src_l = parse_layout(src)
        avg = [a for a, p in enumerate(src_l) if p == Partial("avg") and dst_l[a] != p]
        if avg:  # the gradient of a mean over n ranks is 1/n of the mean's gradient
            n = 1
            for a in avg:
                n *= self.mesh.size(a)  # type: ignore[attr-defined]
            x = _ScaleGrad.apply(x, 1.0 / n)
        src_p = to_dtensor_placements(src_l)
        dt = DTensor.from_local(x, self.mesh, src_p, run_check=False)  # type: ignore[arg-type]
        # R -> P is local: rank 0 of the axis keeps the value, the others hold zeros
        to_partial = [
            a for a, (s, d) in enumerate(zip(src_l, dst_l)) if s == R and isinstance(d, Partial)
        ]
        mid = tuple(R if a in to_partial else d for a, d in enumerate(dst_l))
        mid_p = to_dtensor_placements(mid)
        if tuple(dt.placements) != mid_p:
            dt = dt.redistribute(self.mesh, mid_p)  # type: ignore[arg-type]
        local = dt.to_local(grad_placements=grad_p)  # type: ignore[arg-type]
        if to_partial:
            keep = all(self.mesh.get_local_rank(a) == 0 for a in to_partial)  # type: ignore[attr-defined]
            local = _KeepOnOneRank.apply(local, keep)
        return local


class _KeepOnOneRank(torch.autograd.Function):
    """Replicated value -> partial value (kept on one rank). The gradient of the summed
    value is replicated, so backward passes it through unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: bool) -> torch.Tensor:  # type: ignore[override]
        return x.clone() if keep else torch.zeros_like(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class VocabEmbedding(torch.nn.Module):
    """embedding(weight_shard, ids) with the table's rows split over ``axis``."""

    def __init__(self, mesh: object, axis: int) -> None:
        super().__init__()
        self.mesh, self.axis = mesh, axis

    def forward(self, weight: torch.Tensor, ids: torch.Tensor, *args: object) -> torch.Tensor:
        rank = self.mesh.get_local_rank(self.axis)  # type: ignore[attr-defined]
        rows = weight.shape[0]
        start = rank * rows
        local = ids - start
        owned = (local >= 0) & (local < rows)
        out = torch.nn.functional.embedding(torch.where(owned, local, 0), weight)
        return out * owned.unsqueeze(-1).to(out.dtype)


class ShardedCrossEntropy(torch.nn.Module):
    """cross_entropy_loss over a batch split on ``axes``; the result is replicated."""

    def __init__(self, mesh: object, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.mesh, self.axes = mesh, axes

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: object = None,
        reduction: int = 1,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        total = torch.ops.aten.cross_entropy_loss(logits, target, None, 2, ignore_index, 0.0)
        total = self._sum(total)
        if reduction == 2:
            return total
        count = (target != ignore_index).sum().to(logits.dtype)
        return total / self._sum(count.detach())

    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum a per-rank partial value over the kernel's axes; replicated result whose
        gradient passes straight back (each rank holds the same loss)."""
        from torch.distributed.tensor import Partial, Replicate

        ndim = self.mesh.ndim  # type: ignore[attr-defined]
        src = [Partial() if a in self.axes else Replicate() for a in range(ndim)]
        dt = DTensor.from_local(x, self.mesh, src, run_check=False)  # type: ignore[arg-type]
        return dt.redistribute(self.mesh, [Replicate()] * ndim).to_local()  # type: ignore[arg-type]


def world() -> tuple[int, int]:
    return dist.get_rank(), dist.get_world_size()

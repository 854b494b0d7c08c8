"""Runtime pieces the generated program calls: the reshard and the custom kernels.

Contract:
- ``Reshard(mesh)(x, src, dst, grad)`` returns the local piece of ``x`` in layout ``dst``
  (short form, e.g. ``"S(0)R"``). ``x`` is a local tensor in layout ``src``, or a DTensor
  (a parameter), whose own placements are used. In backward the incoming local
  gradient is read as layout ``grad`` and moved back to ``src`` (``Partial`` read as
  replicated): a ``Partial`` gradient of a replicated value is all-reduced there; this
  is the data-parallel gradient reduction. The collectives are DTensor's redistribute.
- With ``regather=True`` (a parameter under FSDP's reshard_after_forward) the gathered
  copy is not kept for backward: inside ``Reshard.saving()`` autograd's saved-tensor hooks
  replace it (or any view of it) by a token, and backward gathers the parameter again
  when it unpacks the token. Nothing else changes: values and gradients are the same.
- ``VocabEmbedding`` looks up only the rows a rank owns (vocabulary-parallel table).
- ``ShardedCrossEntropy`` computes a batch-sharded mean/sum cross-entropy whose value
  equals the unsharded one, ignore_index included.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _root(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


class _Gathered:
    """A parameter copy gathered in forward, to be gathered again in backward."""

    def __init__(self, anchor: torch.Tensor, gather: Callable[[], torch.Tensor]) -> None:
        self.anchor_offset = anchor.storage_offset()
        self.root = weakref.ref(_root(anchor))
        self.gather = gather
        self.again: Any = None  # weakref to the copy gathered in backward

    def get(self) -> torch.Tensor:
        t = self.again() if self.again is not None else None
        if t is None:
            t = self.gather()
            self.again = weakref.ref(t)
        return t


class _Token:
    """Stands in for a saved tensor that ``_Gathered`` can rebuild."""

    def __init__(self, entry: _Gathered, t: torch.Tensor) -> None:
        self.entry = entry
        self.geometry = (
            tuple(t.size()),
            tuple(t.stride()),
            t.storage_offset() - entry.anchor_offset,
        )

    def unpack(self) -> torch.Tensor:
        full = self.entry.get()
        size, stride, rel = self.geometry
        if size == tuple(full.size()) and stride == tuple(full.stride()) and rel == 0:
            return full
        return full.as_strided(size, stride, full.storage_offset() + rel)


class Reshard(torch.nn.Module):
    def __init__(self, mesh: object) -> None:
        super().__init__()
        self.mesh = mesh
        self._gathered: dict[int, _Gathered] = {}

    def forward(
        self, x: torch.Tensor, src: str, dst: str, grad: str, regather: bool = False
    ) -> torch.Tensor:
        dst_l = parse_layout(dst)
        grad_p = to_dtensor_placements(parse_layout(grad))
        param = x if isinstance(x, DTensor) else None
        if param is not None and dst_l == tuple(
            from_dtensor_placement(p) for p in param.placements
        ):
            return _UseInPlace.apply(param, grad_p)  # the common case, one cheap call
        if param is not None:  # a parameter: its gradient arrives in its own layout
            src_l = tuple(from_dtensor_placement(p) for p in param.placements)
            x = param.to_local(grad_placements=param.placements)
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
        moved = tuple(dt.placements) != mid_p
        if moved:
            dt = dt.redistribute(self.mesh, mid_p)  # type: ignore[arg-type]
        local = dt.to_local(grad_placements=grad_p)  # type: ignore[arg-type]
        if to_partial:
            keep = all(self.mesh.get_local_rank(a) == 0 for a in to_partial)  # type: ignore[attr-defined]
            local = _KeepOnOneRank.apply(local, keep)
        elif regather and moved and param is not None:
            self._gathered[id(_root(local))] = _Gathered(local, self._gather_fn(param, mid_p))
        return local

    def _gather_fn(self, param: DTensor, placements: Any) -> Callable[[], torch.Tensor]:
        mesh = self.mesh

        def gather() -> torch.Tensor:
            with torch.no_grad():
                return param.detach().redistribute(mesh, placements).to_local()  # type: ignore[arg-type,attr-defined]

        return gather

    @contextmanager
    def saving(self) -> Iterator[None]:
        """Run a forward pass whose re-gathering parameters are not kept for backward."""
        self._gathered.clear()
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield
        finally:
            self._gathered.clear()

    def _pack(self, t: torch.Tensor) -> Any:
        if not self._gathered:
            return t
        root = _root(t)
        entry = self._gathered.get(id(root))
        if entry is None or entry.root() is not root:
            return t
        return _Token(entry, t)

    @staticmethod
    def _unpack(obj: Any) -> torch.Tensor:
        return obj.unpack() if isinstance(obj, _Token) else obj


class _UseInPlace(torch.autograd.Function):
    """A parameter used in the layout it is stored in: forward hands out its local
    tensor; backward reads the local gradient as layout ``grad`` and moves it to the
    parameter's own layout (a ``Partial`` axis is all-reduced, or reduce-scattered onto a
    shard), which is what the general path's three DTensor wraps do, at a fraction of
    their per-call cost."""

    @staticmethod
    def forward(ctx: Any, param: DTensor, grad: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.param_spec = (param.device_mesh, param.placements, param.shape, param.stride())
        ctx.grad = grad
        local = param.to_local()
        return local.view_as(local)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[DTensor, None]:  # type: ignore[override]
        mesh, placements, shape, stride = ctx.param_spec
        if tuple(ctx.grad) != tuple(placements):
            moved = DTensor.from_local(
                g, mesh, ctx.grad, run_check=False, shape=shape, stride=stride
            )
            return moved.redistribute(mesh, placements), None
        out = DTensor.from_local(g, mesh, placements, run_check=False, shape=shape, stride=stride)
        return out, None


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

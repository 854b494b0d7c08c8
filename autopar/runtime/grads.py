"""Bucketed gradient reduction launched from backward (DDP's design, for any mesh axes).

Contract: ``reduce_gradients(program, ctx, params)`` installs a ``GradReducer`` on the
parameters whose plan entry names reduction axes (``Param.reduce``: their gradients are
partial sums over those axes). Parameters are bucketed in the order backward produces
their gradients (the reverse of their order in ``params``, which is the forward's), one
bucket list per (axes, dtype), the first bucket ``first_bucket_bytes`` and the others up
to ``bucket_bytes`` (DDP's defaults: 1 MiB and 25 MiB; ``autopar.buckets.buckets``, the
rule the planner prices with). When the last gradient of a bucket
is accumulated (a post-accumulate-grad hook), the bucket is flattened and its all-reduce
(SUM, in ``ctx.reduce_dtype``) is launched asynchronously; a callback queued on the
autograd engine waits for every bucket at the end of backward and copies the sums back
into ``.grad``. A parameter that got no gradient contributes zeros.
A backward that accumulates into gradients already reduced (gradient accumulation
without ``zero_grad``) reduces only what it added: each bucket keeps its last reduced
values (as DDP keeps its bucket buffers) and subtracts them first.
``with reducer.no_sync():`` accumulates without reducing (pipeline microbatches, or to
save the communication); ``reduce_all()`` then reduces what was accumulated.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from autopar.buckets import BUCKET_BYTES, FIRST_BUCKET_BYTES, buckets
from autopar.runtime.program import Context, Param


@dataclass(eq=False)
class Bucket:
    params: list[torch.nn.Parameter]
    group: Any
    dtype: torch.dtype
    ready: int = 0
    work: Any = None
    flat: torch.Tensor | None = None
    last: torch.Tensor | None = None  # the sums last written into .grad
    carried: list[bool] = field(default_factory=list)  # .grad held `last` at launch


class GradReducer:
    def __init__(
        self,
        named: list[tuple[str, torch.nn.Parameter, tuple[str, ...]]],
        ctx: Context,
        bucket_bytes: int = BUCKET_BYTES,
        first_bucket_bytes: int = FIRST_BUCKET_BYTES,
    ) -> None:
        self.ctx = ctx
        self.buckets: list[Bucket] = []
        self.sync = True
        self._armed = False
        self._reduced: dict[int, Any] = {}
        self.launched: list[str] = []  # bucket launches of the last backward, in order
        order = list(reversed(named))  # backward produces the last layers' gradients first
        ids = buckets([((axes, p.dtype), p.numel() * p.element_size()) for _, p, axes in order],
                      bucket_bytes, first_bucket_bytes)  # fmt: skip
        for (_, p, axes), b in zip(order, ids):
            if b == len(self.buckets):
                self.buckets.append(Bucket([], _group(ctx, axes), p.dtype))
            self.buckets[b].params.append(p)
        self._bucket_of: dict[int, Bucket] = {}
        for bucket in self.buckets:
            for p in bucket.params:
                self._bucket_of[id(p)] = bucket
                p.register_post_accumulate_grad_hook(self._hook)

    # ---- backward ----------------------------------------------------------------------
    def _hook(self, p: torch.Tensor) -> None:
        if not self.sync:
            return
        if not self._armed:
            self._armed = True
            self.launched = []
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
        b = self._bucket_of[id(p)]
        b.ready += 1
        if b.ready == len(b.params):
            self._launch(b)

    def _launch(self, b: Bucket) -> None:
        dtype = self.ctx.reduce_dtype or b.dtype
        parts, b.carried, offset = [], [], 0
        for p in b.params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            prev = self._reduced.get(id(p))
            carried = prev is not None and prev() is p.grad and b.last is not None
            if carried:  # only what this backward added is reduced
                assert b.last is not None
                g = g - b.last[offset : offset + p.numel()].view_as(p).to(g.dtype)
            b.carried.append(carried)
            parts.append(g.reshape(-1).to(dtype))
            offset += p.numel()
        b.flat = torch.cat(parts)
        b.work = dist.all_reduce(b.flat, group=b.group, async_op=True)
        self.launched.append(f"{len(b.params)} tensors")

    def _finish(self) -> None:
        for b in self.buckets:
            if b.work is None:
                self._launch(b)
        for b in self.buckets:
            b.work.wait()
            assert b.flat is not None
            offset = 0
            for p, carried in zip(b.params, b.carried):
                n = p.numel()
                piece = b.flat[offset : offset + n].view_as(p)
                if carried:
                    assert b.last is not None
                    piece += b.last[offset : offset + n].view_as(p)
                if p.grad is None:
                    p.grad = piece.to(p.dtype)
                else:
                    p.grad.copy_(piece)
                self._reduced[id(p)] = weakref.ref(p.grad)
                offset += n
            b.last, b.work, b.flat, b.ready = b.flat, None, None, 0
        self._armed = False

    # ---- accumulation --------------------------------------------------------------------
    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        old, self.sync = self.sync, False
        try:
            yield
        finally:
            self.sync = old

    def reduce_all(self) -> None:
        """Reduce the gradients accumulated under ``no_sync`` (blocking)."""
        self.launched = []
        for b in self.buckets:
            self._launch(b)
        self._finish()


def _group(ctx: Context, axes: tuple[str, ...]) -> Any:
    if len(axes) == 1:
        return ctx.axes.group[axes[0]]
    return ctx.mesh[axes]._flatten().get_group()


def reduce_gradients(
    program: torch.nn.Module, ctx: Context, params: Mapping[str, Param]
) -> GradReducer:
    named = [(fqn, p, params[fqn].reduce) for fqn, p in program.named_parameters()
             if params[fqn].reduce]  # fmt: skip
    order = {fqn: i for i, fqn in enumerate(params)}
    named.sort(key=lambda x: order[x[0]])
    reducer = GradReducer(named, ctx)
    program.grad_reducer = reducer  # type: ignore[assignment]
    return reducer

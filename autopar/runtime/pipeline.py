"""A pipeline of generated stage programs, run by ``torch.distributed.pipelining``.

Contract: ``PipelineModel(stages, indices, num_stages, schedule, microbatches, pp_group,
pp, device, shared=..., in_spec=None, out_spec=None, info=None)`` holds this rank's stage
programs (``CompiledModel``s, one per stage index in ``indices``; each program's
``INPUT_META``/``OUTPUT_META`` and layouts give the local shapes it receives and sends:
each rank sends its own piece of a stage boundary value to the same rank of the next
stage, ``solve.graph.boundary_layout``) and the schedule
(``"1f1b"`` | ``"gpipe"`` | ``"interleaved_1f1b"``) over the ``pp_group``.
``step(*args, target=None, loss_fn=None, **kwargs)`` is one training step on the GLOBAL
batch: the schedule splits every batched input on dim 0 into ``microbatches``, runs
forward and backward, and leaves in ``.grad`` of ``parameters()`` the gradients of the
mean loss over the batch (the schedule averages the microbatch gradients). Gradient
reduction over a stage's data axes waits for the last microbatch: every bucketed
reducer is held (``no_sync``) during the schedule and reduces once after it; FSDP2 stage
programs are driven by the schedule itself. Gradients of a parameter read by several
stages (``shared``: FQN -> global shape; tied embeddings) are summed across them. The loss
is the last stage program's loss output, or ``loss_fn(out, target)`` on the outputs
rebuilt with ``out_spec``. ``step`` returns the detached mean loss on every rank.
``full_state_dict()`` gathers every stage's full tensors on every rank. It imports no
planner module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree
from torch.distributed.tensor import DTensor, distribute_tensor

from autopar.runtime.compiled import CompiledModel, loss_of

SCHEDULES = ("1f1b", "gpipe", "interleaved_1f1b")


def _meta_tensors(meta: Any, device: torch.device, grad: bool) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=device).requires_grad_(
            grad and getattr(torch, dtype).is_floating_point
        )
        for shape, dtype in meta
    )  # fmt: skip


def _batch_size(values: tuple[Any, ...]) -> int:
    for leaf in pytree.tree_leaves(values):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    raise ValueError("a pipeline needs at least one batched tensor input to split into microbatches")


class PipelineModel(torch.nn.Module):
    def __init__(
        self,
        stages: list[CompiledModel],
        indices: tuple[int, ...],
        num_stages: int,
        schedule: str,
        microbatches: int,
        pp_group: Any,
        pp: int,
        device: torch.device,
        *,
        shared: dict[str, tuple[int, ...]] | None = None,
        in_spec: Any = None,
        out_spec: Any = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleGPipe,
            ScheduleInterleaved1F1B,
        )

        if schedule not in SCHEDULES:
            raise ValueError(f"pipeline schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.stages = torch.nn.ModuleList(stages)
        self._models = list(stages)
        self.stage_indices = tuple(indices)
        self.microbatches = microbatches
        self.pipeline = info or {}
        self.plan: Any = None
        self._pp_group, self._pp = pp_group, pp
        self._shared = dict(shared or {})
        self._in_spec, self._out_spec = in_spec, out_spec
        self._loss_fn: Callable[..., torch.Tensor] | None = None
        pstages = [
            PipelineStage(
                m.program, index, num_stages, device, group=pp_group,
                input_args=_meta_tensors(m.module_meta("INPUT_META", False), device, index > 0),
                output_args=_meta_tensors(m.module_meta("OUTPUT_META", False), device, True),
            )
            for m, index in zip(stages, indices)
        ]  # fmt: skip
        self.schedule: Any
        if schedule == "interleaved_1f1b":
            self.schedule = ScheduleInterleaved1F1B(list[Any](pstages), microbatches,
                                                    loss_fn=self._loss)  # fmt: skip
        else:
            cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
            self.schedule = cls(pstages[0], microbatches, loss_fn=self._loss)
        self._last = next((m for m, i in zip(stages, indices) if i == num_stages - 1), None)

    def _loss(self, output: Any, target: Any) -> torch.Tensor:
        leaves = list(output) if isinstance(output, (tuple, list)) else [output]
        if self._loss_fn is None and self._last is not None and self._last.loss_index is not None:
            return leaves[self._last.loss_index]  # type: ignore[no-any-return]
        out = pytree.tree_unflatten(leaves, self._out_spec) if self._out_spec else output
        if self._loss_fn is not None:
            return self._loss_fn(out, target)
        return loss_of(out)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "a pipeline-parallel model trains through model.step(*inputs, target=...) "
            "(forward and backward of every microbatch in one schedule); call step() "
            "instead of model(...) and loss.backward()"
        )

    def _flat(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if self._in_spec is not None:
            from torch.fx._pytree import tree_flatten_spec

            return list(tree_flatten_spec((args, kwargs), self._in_spec))
        first = self._models[0]
        return first._flat(args, kwargs)

    def step(
        self,
        *args: Any,
        target: torch.Tensor | None = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        first = 0 in self.stage_indices
        flat = self._flat(args, kwargs) if first else []
        if target is None:
            batch = _batch_size((args, kwargs))
            target = torch.zeros(batch)
        self._loss_fn = loss_fn
        losses: list[torch.Tensor] = []
        reducers = [r for r in (getattr(m.program, "grad_reducer", None) for m in self._models)
                    if r is not None]  # fmt: skip
        try:
            with contextlib.ExitStack() as stack:
                for r in reducers:  # reduce once, after the last microbatch
                    stack.enter_context(r.no_sync())
                if first:
                    self.schedule.step(*flat, target=target, losses=losses, return_outputs=False)
                else:
                    self.schedule.step(target=target, losses=losses, return_outputs=False)
        finally:
            self._loss_fn = None
        for r in reducers:
            r.reduce_all()
        self._sync_shared_grads()
        loss = torch.stack([x.detach() for x in losses]).mean() if losses else torch.zeros(())
        dist.broadcast(loss, group=self._pp_group, group_src=self._pp - 1)
        return loss

    def _sync_shared_grads(self) -> None:
        """Sum the gradients of a parameter read by several stages (tied weights): each
        stage's copy is made whole, summed over the pipeline, and put back in place."""
        from autopar.runtime.program import local_piece

        for fqn in sorted(self._shared):
            total = torch.zeros(self._shared[fqn])
            copies = []
            for m in self._models:
                p = _param(m.program, fqn)
                if p is None:
                    continue
                copies.append((m, p))
                if p.grad is not None:
                    total += m.whole(fqn, p.grad)
            dist.all_reduce(total, group=self._pp_group)
            for m, p in copies:
                held = m.params_spec[fqn].held(m.ctx.axes.names)
                piece = local_piece(total, held, m.ctx.axes).clone()
                if isinstance(p, DTensor):
                    p.grad = distribute_tensor(piece, p.device_mesh, p.placements,
                                               src_data_rank=None)  # fmt: skip
                else:
                    p.grad = piece

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        mine: dict[str, torch.Tensor] = {}
        for m in self._models:
            mine.update(m.full_state_dict())
        gathered: list[Any] = [None] * self._pp
        dist.all_gather_object(gathered, mine, group=self._pp_group)
        out: dict[str, torch.Tensor] = {}
        for part in gathered:
            out.update(part)
        return out


def _param(root: torch.nn.Module, fqn: str) -> Any:
    obj: Any = root
    for part in fqn.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def build_pipeline_program(
    modules: dict[int, Any],
    mesh_axes: tuple[tuple[str, int], ...],
    num_stages: int,
    schedule: str,
    microbatches: int,
    state: dict[str, torch.Tensor],
    *,
    precision: str = "fp32",
    shared: dict[str, tuple[int, ...]] | None = None,
    timeout: float | None = None,
    aliases: dict[str, list[str]] | None = None,
    in_spec: Any = None,
    out_spec: Any = None,
    info: dict[str, Any] | None = None,
) -> PipelineModel:
    """The pipeline on this rank from generated stage modules (``modules``: stage index ->
    module, at least this rank's stages; stage ``s`` runs on pipeline rank ``s % pp``) on
    the full mesh ``mesh_axes`` (a ``pp`` axis, then the stage submesh's axes)."""
    from autopar.runtime.compiled import build_program
    from autopar.runtime.program import Context
    from autopar.runtime.ranks import timed_device_mesh
    from autopar.timeouts import DEFAULT_TIMEOUT_S

    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
    names = tuple(n for n, _ in mesh_axes)
    sizes = tuple(s for _, s in mesh_axes)
    cuda = torch.cuda.is_available() and dist.get_backend() == "nccl"
    mesh = timed_device_mesh("cuda" if cuda else "cpu", sizes, names, timeout)
    sub = tuple(n for n in names if n != "pp")
    ctx = Context(mesh[sub if len(sub) > 1 else sub[0]], precision)
    pp = mesh.size(names.index("pp"))
    rank = mesh.get_local_rank("pp")
    mine = tuple(s for s in range(num_stages) if s % pp == rank)
    stages = [build_program(modules[s], ctx, state, aliases=aliases) for s in mine]
    return PipelineModel(stages, mine, num_stages, schedule, microbatches, mesh.get_group("pp"),
                         pp, ctx.device, shared=shared, in_spec=in_spec, out_spec=out_spec,
                         info=info)  # fmt: skip

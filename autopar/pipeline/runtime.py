"""Pipeline runtime: stage programs run by ``torch.distributed.pipelining`` schedules.

Contract: ``compile_pipeline(model, args, kwargs, mesh, strategy, cluster, options)``
runs on every rank of a mesh with a ``"pp"`` axis. It captures the model at the
microbatch shape, cuts it into stages (``stages.choose_stages``, ``split``), plans each
of the stages on the stage submesh (the mesh without ``pp``; a size-1 ``dp`` axis when
nothing else is left) with the ordinary planner (rank 0 solves, every rank receives the
plans), generates each of this rank's stages as a program (``codegen.program_source``,
the same code path as ``autopar.compile``), wraps it in a ``PipelineStage`` and returns
a ``PipelineModel``. Gradient reduction over the stage's data axes waits for the last
microbatch (``no_sync`` during the schedule, then one bucketed reduction).

``PipelineModel.step(*args, target=None, loss_fn=None, **kwargs)`` is one training
step on the GLOBAL batch: the schedule splits every positional/keyword tensor on dim 0
into microbatches, runs forward and backward, and leaves in ``.grad`` of
``parameters()`` the gradients of the mean loss over the batch (schedules average the
microbatch gradients, ``scale_grads=True``; gradients of parameters shared by several
stages, such as tied embeddings, are summed across them). The loss is the model's
own (``out.loss`` or a tensor output) or ``loss_fn(out, target)``, which must average
over its microbatch. It returns the detached mean loss on every rank. Options:
``schedule`` ("1f1b" | "gpipe" | "interleaved_1f1b"), ``microbatches``, ``chunks``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.fx._pytree import tree_flatten_spec

from autopar.capture import capture
from autopar.mesh import MeshSpec
from autopar.pipeline.loss import loss_of
from autopar.pipeline.split import Split, split_stages
from autopar.pipeline.stages import choose_stages
from autopar.plan import Plan
from autopar.runtime.compiled import CompiledModel, instantiate
from autopar.runtime.program import Context
from autopar.solve.planner import make_plan

SCHEDULES = ("1f1b", "gpipe", "interleaved_1f1b")


def _batch_size(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    for leaf in pytree.tree_leaves((args, dict(kwargs))):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    raise ValueError(
        "a pipeline needs at least one batched tensor input to split into microbatches"
    )


def default_microbatches(batch: int, pp: int, inner_dp: int, chunks: int) -> int:
    """The most microbatches up to 2 x stages that divide the batch evenly (and leave
    every microbatch divisible by the stage's data-parallel degree)."""
    best = 1
    for m in range(1, 2 * pp * chunks + 1):
        if batch % m == 0 and (batch // m) % inner_dp == 0 and (chunks == 1 or m % pp == 0):
            best = m
    return best


def _submesh(spec: MeshSpec) -> MeshSpec:
    rest = tuple((n, s) for n, s in spec.axes if n != "pp")
    return MeshSpec(rest or (("dp", 1),))


def compile_pipeline(
    model: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    spec: MeshSpec,
    strategy: str = "auto",
    cluster: str | None = None,
    options: Mapping[str, Any] | None = None,
    precision: str = "fp32",
) -> PipelineModel:
    from cost_models import ClusterSpec, CostModel

    opts = dict(options or {})
    unknown = set(opts) - {"schedule", "microbatches", "chunks"}
    if unknown:
        raise ValueError(
            f"unknown pipeline options {sorted(unknown)}; use schedule, microbatches, chunks"
        )
    kind = opts.get("schedule", "1f1b")
    if kind not in SCHEDULES:
        raise ValueError(f"pipeline schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    chunks = int(opts.get("chunks", 2 if kind == "interleaved_1f1b" else 1))
    kwargs = dict(kwargs or {})
    pp = spec.size("pp")
    sub = _submesh(spec)
    inner_dp = sub.size("dp") if "dp" in sub.names else 1
    batch = _batch_size(args, kwargs)
    m = int(opts.get("microbatches") or default_microbatches(batch, pp, inner_dp, chunks))
    if batch % m:
        raise ValueError(
            f"batch size {batch} does not split into {m} equal microbatches; pick a divisor of {batch}"
        )
    mb = batch // m

    def cut(x: Any) -> Any:
        return x[:mb] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == batch else x

    captured = capture(model, pytree.tree_map(cut, tuple(args)), pytree.tree_map(cut, kwargs))
    full_cluster = ClusterSpec.parse(cluster) if cluster else ClusterSpec.cpu(spec.num_devices)
    cm = CostModel(full_cluster, spec)
    units, part, info = choose_stages(captured, pp, m, kind, cm, chunks, p2p_axis="pp")
    split = split_stages(captured, units, part.bounds)

    pp_only = spec.names == ("pp",)
    full_names = ("pp", "dp") if pp_only else spec.names
    full_sizes = (pp, 1) if pp_only else spec.sizes
    device_type = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    from torch.distributed.device_mesh import init_device_mesh

    full = init_device_mesh(device_type, full_sizes, mesh_dim_names=full_names)
    sub_mesh = full[sub.names if len(sub.names) > 1 else sub.names[0]]
    pp_rank = full.get_local_rank("pp")
    pp_group = full.get_group("pp")
    sub_cm = CostModel(ClusterSpec.cpu(sub.num_devices), sub) if not cluster else None
    stage_strategy = "auto" if strategy == "pp" else strategy

    def solve_all() -> list[Plan]:
        return [make_plan(st.captured, sub, stage_strategy, sub_cm, precision=precision)
                for st in split.stages]  # fmt: skip

    plans = plans_on_rank0(solve_all)
    mine = [s for s in split.stages if s.index % pp == pp_rank]
    device = torch.device(device_type)
    ctx = Context(sub_mesh, precision)
    state = {**model.state_dict(keep_vars=True), **dict(model.named_buffers())}
    models: list[CompiledModel] = []
    examples = []
    from autopar.api import state_keys

    keys = state_keys(captured, model)
    for st in mine:
        plan = _with_pipeline(plans[st.index], dict(info, stage=st.index,
                                                    submesh=sub.to_json(), mesh=spec.to_json()))  # fmt: skip
        compiled = build_stage(st.captured, plan, state, ctx, f"autopar_stage{st.index}", keys)
        models.append(compiled)
        examples.append((_examples(st.captured, "placeholder", device, st.index > 0),
                         _outputs_meta(st.captured, compiled, device)))  # fmt: skip
    return PipelineModel(split, models, mine, examples, kind, m, pp_group, pp, device, info)


def plans_on_rank0(solve: Any) -> list[Plan]:
    import json

    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", [p.dumps() for p in solve()])
        except Exception as err:  # noqa: BLE001 - re-raised on every rank
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return [Plan.from_json(json.loads(v)) for v in value]


def build_stage(captured: Any, plan: Plan, state: dict[str, torch.Tensor], ctx: Context,
                name: str, keys: dict[str, list[str]]) -> CompiledModel:  # fmt: skip
    from autopar.codegen import program_source

    source = program_source(captured, plan, ctx.precision, f"autopar pipeline stage {name}")
    for b in captured.buffer_names:
        if b not in state:
            state[b] = _param(captured.graph_module, b)
    compiled = instantiate(source, ctx, state, name=name, aliases=keys)
    compiled.plan = plan
    return compiled


def _outputs_meta(
    captured: Any, compiled: CompiledModel, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Empty tensors shaped like the stage program's outputs on this rank (whole where
    the plan sends them, local pieces of the last stage's outputs other than the loss)."""
    from autopar.placement import local_shape
    from autopar.runtime.layouts import parse_layout

    sizes = tuple(compiled.ctx.axes.size[n] for n in compiled.ctx.axes.names)
    full = _examples(captured, "output", device, True)
    return tuple(
        torch.empty(local_shape(tuple(t.shape), parse_layout(lay), sizes), dtype=t.dtype,
                    device=device).requires_grad_(t.requires_grad)
        for t, (_, lay) in zip(full, compiled.outputs)
    )  # fmt: skip


def _with_pipeline(plan: Plan, info: dict[str, Any]) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, pipeline=info)


class PipelineModel(torch.nn.Module):
    """This rank's pipeline stages; train with ``step``; see the module docstring."""

    def __init__(
        self, split: Split, models, mine, examples, kind, microbatches, pp_group, pp, device, info
    ):  # type: ignore[no-untyped-def]
        super().__init__()
        from torch.distributed.pipelining import (
            PipelineStage,
            Schedule1F1B,
            ScheduleGPipe,
            ScheduleInterleaved1F1B,
        )

        self.split = split
        self.stages = torch.nn.ModuleList(models)
        self._models: list[CompiledModel] = list(models)
        self.stage_indices = tuple(s.index for s in mine)
        self.pipeline = info
        self.plan: Plan = models[0].plan
        self.microbatches = microbatches
        self._pp_group, self._pp = pp_group, pp
        self._loss_fn: Callable[..., torch.Tensor] | None = None
        n = len(split.stages)
        pstages: list[Any] = [
            PipelineStage(
                dm.program, s.index, n, device, group=pp_group,
                input_args=ex[0], output_args=ex[1],
            )
            for dm, s, ex in zip(models, mine, examples)
        ]  # fmt: skip
        self.schedule: Any
        if kind == "interleaved_1f1b":
            self.schedule = ScheduleInterleaved1F1B(pstages, microbatches, loss_fn=self._loss)
        else:
            cls = ScheduleGPipe if kind == "gpipe" else Schedule1F1B
            self.schedule = cls(pstages[0], microbatches, loss_fn=self._loss)

    def _loss(self, output: Any, target: Any) -> torch.Tensor:
        leaves = list(output) if isinstance(output, (tuple, list)) else [output]
        out = pytree.tree_unflatten(leaves, self.split.out_spec) if self.split.out_spec else output
        if self._loss_fn is not None:
            return self._loss_fn(out, target)
        return loss_of(out)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "a pipeline-parallel model trains through model.step(*inputs, target=...) "
            "(forward and backward of every microbatch in one schedule); call step() "
            "instead of model(...) and loss.backward()"
        )

    def step(
        self,
        *args: Any,
        target: torch.Tensor | None = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        flat = (
            tree_flatten_spec((args, kwargs), self.split.in_spec)
            if self.split.in_spec
            else list(args)
        )
        batch = _batch_size(tuple(flat), {})
        if target is None:
            target = torch.zeros(batch)
        self._loss_fn = loss_fn
        losses: list[torch.Tensor] = []
        first = 0 in self.stage_indices
        reducers = [r for r in (getattr(dm.program, "grad_reducer", None) for dm in self._models)
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

        for fqn in sorted(self.split.shared_params):
            total = torch.zeros(_shape(self.split, fqn))
            copies = []
            for dm in self._models:
                p = _param(dm.program, fqn)
                if p is None:
                    continue
                copies.append((dm, p))
                if p.grad is not None:
                    total += _whole_grad(dm, fqn, p.grad)
            dist.all_reduce(total, group=self._pp_group)
            for dm, p in copies:
                held = dm.params_spec[fqn].held(dm.ctx.axes.names)
                piece = local_piece(total, held, dm.ctx.axes).clone()
                if isinstance(p, DTensor):
                    p.grad = distribute_tensor(piece, p.device_mesh, p.placements,
                                               src_data_rank=None)  # fmt: skip
                else:
                    p.grad = piece

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        mine: dict[str, torch.Tensor] = {}
        for dm in self._models:
            mine.update(dm.full_state_dict())
        gathered: list[Any] = [None] * self._pp
        dist.all_gather_object(gathered, mine, group=self._pp_group)
        out: dict[str, torch.Tensor] = {}
        for part in gathered:
            out.update(part)
        return out


def _examples(captured: Any, op: str, device: torch.device, grad: bool) -> tuple[torch.Tensor, ...]:
    """Empty tensors shaped like a stage's inputs or outputs (static stage metadata, so
    the pipeline never runs a stage on uninitialised buffers to infer shapes)."""
    graph = captured.graph_module.graph
    if op == "placeholder":
        vals = [n.meta["val"] for n in graph.nodes if n.op == "placeholder"]
    else:
        out = next(n for n in graph.nodes if n.op == "output")
        vals = [a.meta["val"] for a in pytree.tree_leaves(out.args) if isinstance(a, torch.fx.Node)]
    return tuple(
        torch.empty(tuple(v.shape), dtype=v.dtype, device=device).requires_grad_(
            grad and v.dtype.is_floating_point
        )
        for v in vals
    )


def _whole_grad(dm: CompiledModel, fqn: str, g: torch.Tensor) -> torch.Tensor:
    from autopar.runtime.collectives import general_reshard

    g = g.full_tensor() if isinstance(g, DTensor) else g
    held = dm.params_spec[fqn].held(dm.ctx.axes.names)
    text = "".join(str(x) for x in held)
    return general_reshard(g, dm.ctx.axes, text, "R" * len(held), "R" * len(held))


def _param(root: torch.nn.Module, fqn: str) -> Any:
    obj: Any = root
    for part in fqn.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _shape(split: Split, fqn: str) -> tuple[int, ...]:
    for st in split.stages:
        for node in st.captured.graph_module.graph.nodes:
            if node.op == "get_attr" and str(node.target) == fqn:
                return tuple(node.meta["val"].shape)
    raise KeyError(fqn)

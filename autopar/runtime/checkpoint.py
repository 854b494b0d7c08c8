"""Distributed checkpoints that move between plans (``torch.distributed.checkpoint``).

Contract:
- ``save_checkpoint(path, model, optimizer=None, *, step=0)`` (call on every rank) writes
  directory ``path``: each rank writes only the pieces it holds (DCP; nothing is gathered)
  and rank 0 writes ``autopar.json`` (the model's keys, shapes, dtypes and tied keys, the
  optimizer's type, hyperparameters and state kinds, the training ``step``, the world size
  and the saving plan's summary). Parameters are stored under the original model's keys
  (a tied weight once, under the program's FQN, with every key of it in the JSON);
  optimizer tensors under ``optim.<fqn>.<name>`` (``exp_avg``, ``step``...); buffers under
  their FQN. A parameter and every optimizer tensor shaped like it are DTensors on the
  program's mesh with the placements the program holds them in: the stored layout
  (``Param.held``) of a plain local tensor; for an FSDP2 parameter (a DTensor on one data
  axis of the mesh wrapping the tensor-parallel piece) that layout with the FSDP axis set
  to its shard, a ``_StridedShard`` where later axes already split the same dim (FSDP
  shards last, as in FSDP2 + TP). Non-tensor optimizer values (numbers, None) go in the
  JSON, never through pickle.
- ``load_checkpoint(path, model, optimizer=None) -> step`` (every rank) fills the
  parameters, buffers and optimizer state in place from a checkpoint saved under any plan,
  mesh or world size: DCP reads each rank's pieces for the target layout. A model whose
  keys or shapes differ from the checkpoint's, or an optimizer of another type, raises
  ``CheckpointError`` (one paragraph: what was found, what is required, how to fix it)
  on every rank before any collective.
- ``model`` is a ``CompiledModel``, a ``PipelineModel`` (this rank's stages, ``_models``)
  or a plain ``nn.Module`` (one process: full tensors, read and written without
  collectives, e.g. a single-process reference).
- ``read_metadata(path)`` returns the JSON (``autopar.runtime.checkpoint_meta``).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import Placement, _StridedShard

from autopar.runtime.checkpoint_meta import (
    FORMAT,
    VERSION,
    CheckpointError,
    describe_plan,
    jsonable,
    match_keys,
    read_metadata,
    restore_groups,
    write_metadata,
)

__all__ = ["CheckpointError", "global_view", "load_checkpoint", "read_metadata", "save_checkpoint"]


@dataclass
class _Entry:
    """One parameter of the model: its key in the checkpoint and how the program holds it."""

    key: str  # the program FQN (the saved key)
    names: list[str]  # every original key of this tensor (tied weights)
    param: torch.Tensor
    spec: Any = None  # rt.Param, None for a plain module
    ctx: Any = None


def _programs(model: torch.nn.Module) -> list[Any] | None:
    """The CompiledModels this rank runs (None: a plain single-process module)."""
    from autopar.runtime.compiled import CompiledModel

    if isinstance(model, CompiledModel):
        return [model]
    stages = getattr(model, "_models", None)
    if isinstance(stages, list) and all(isinstance(m, CompiledModel) for m in stages):
        return stages
    if isinstance(model, torch.nn.Module):
        return None
    raise CheckpointError(
        f"a checkpoint is saved from or loaded into a model, but a {type(model).__name__} was "
        "given; pass what autopar.compile returned (or a plain torch.nn.Module in a single "
        "process)"
    )


def _entries(model: torch.nn.Module) -> tuple[list[_Entry], list[_Entry], dict[str, Any]]:
    """(this rank's parameters, other local copies of a tied one, buffers by FQN)."""
    programs = _programs(model)
    first: dict[str, _Entry] = {}
    copies: list[_Entry] = []
    buffers: dict[str, Any] = {}
    if programs is None:
        keys: dict[int, list[str]] = {}
        for k, t in model.state_dict(keep_vars=True).items():
            keys.setdefault(id(t), []).append(k)
        for fqn, p in model.named_parameters():
            first[fqn] = _Entry(fqn, keys.get(id(p), [fqn]), p)
        persistent = model.state_dict()
        buffers = {k: b for k, b in model.named_buffers() if k in persistent}
        return list(first.values()), copies, buffers
    for prog in programs:
        for fqn, p in prog.program.named_parameters():
            entry = _Entry(fqn, list(prog._aliases.get(fqn, [fqn])), p, prog.params_spec[fqn],
                           prog.ctx)  # fmt: skip
            (copies.append(entry) if fqn in first else first.__setitem__(fqn, entry))
        for fqn, b in prog.program.named_buffers():
            buffers.setdefault(fqn, b)
    return list(first.values()), copies, buffers


def global_view(t: torch.Tensor, spec: Any, ctx: Any) -> DTensor:
    """``t`` (a parameter as the program holds it, or a tensor shaped like it) as a
    DTensor on the program's whole mesh sharing ``t``'s storage (see the docstring)."""
    from autopar import placement as ap

    names = ctx.axes.names
    placements: list[Placement] = []
    for p in spec.held(names):
        if not isinstance(p, (ap.Shard, ap.Replicate)):
            raise CheckpointError(
                f"a parameter of shape {spec.shape} is held as {spec.layout} ({p} is a partial "
                "value), which a checkpoint cannot store; plan its parameters sharded or "
                "replicated"
            )
        placements.append(Shard(p.dim) if isinstance(p, ap.Shard) else Replicate())
    local = t
    if isinstance(t, DTensor):  # FSDP2: sharded over one data axis of the mesh
        local = t.to_local()
        (shard,) = t.placements
        axis = (t.device_mesh.mesh_dim_names or (None,))[0]
        if not isinstance(shard, Shard) or axis is None or axis not in names:
            raise CheckpointError(f"{spec!r}: an FSDP shard {t.placements} on {axis!r} that "
                                  "the checkpoint cannot describe")  # fmt: skip
        a = names.index(axis)
        later = math.prod(
            ctx.axes.size[n] for i, n in enumerate(names)
            if i > a and isinstance(placements[i], Shard) and placements[i].dim == shard.dim  # type: ignore[attr-defined]
        )  # fmt: skip
        placements[a] = _StridedShard(shard.dim, split_factor=later) if later > 1 else shard
    shape = torch.Size(spec.shape)
    want, _ = compute_local_shape_and_global_offset(shape, ctx.mesh, placements)
    if tuple(local.shape) != tuple(want):
        raise CheckpointError(
            f"a parameter of global shape {tuple(shape)} held as {placements} should have the "
            f"local shape {tuple(want)} on this rank, but holds {tuple(local.shape)}"
        )
    stride = tuple(torch.empty(shape, device="meta").stride())
    return DTensor.from_local(local.detach(), ctx.mesh, placements, run_check=False,
                              shape=shape, stride=stride)  # fmt: skip


def _view(entry: _Entry, t: torch.Tensor) -> torch.Tensor:
    return t.detach() if entry.spec is None else global_view(t, entry.spec, entry.ctx)


def _like_param(v: Any, p: torch.Tensor) -> bool:
    return isinstance(v, torch.Tensor) and v.shape == p.shape and (
        isinstance(v, DTensor) == isinstance(p, DTensor)
    )  # fmt: skip


def _optimizer_items(
    optimizer: torch.optim.Optimizer, entries: list[_Entry], skip: list[_Entry]
) -> Iterator[tuple[_Entry, int, dict[str, Any]]]:
    """(entry, group index, state) for every parameter of ``entries`` the optimizer steps;
    CheckpointError for a tensor it steps that is no parameter of the model."""
    by_id = {id(e.param): e for e in entries}
    others = {id(e.param) for e in skip}
    for gi, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) in by_id:
                yield by_id[id(p)], gi, optimizer.state.get(p, {})
            elif id(p) not in others:
                raise CheckpointError(
                    f"the optimizer steps a tensor of shape {tuple(p.shape)} that is not a "
                    "parameter of the model given; build the optimizer over the model's "
                    "parameters (compiled.parameters()) and pass that model"
                )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
) -> None:
    path = os.fspath(path)
    params, copies, buffers = _entries(model)
    distributed = _programs(model) is not None
    rank = dist.get_rank() if distributed else 0
    state: dict[str, Any] = {}
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "step": int(step),
                            "world_size": dist.get_world_size() if distributed else 1,
                            "params": {}, "buffers": {}, "optimizer": None}  # fmt: skip
    with torch.no_grad():
        for e in params:
            state[e.key] = _view(e, e.param)
            meta["params"][e.key] = {"shape": list(e.spec.shape if e.spec else e.param.shape),
                                     "dtype": str(e.param.dtype).removeprefix("torch."),
                                     "keys": e.names}  # fmt: skip
        for fqn, b in buffers.items():
            state[fqn] = b.detach()
            meta["buffers"][fqn] = {"shape": list(b.shape)}
        if optimizer is not None:
            meta["optimizer"] = _save_optimizer(optimizer, params, copies, state)
    describe_plan(model, _programs(model), meta)
    clash = sorted(k for k in state if k.startswith("optim.") and k in meta["params"])
    if clash:
        raise CheckpointError(f"model keys {clash} collide with the optimizer's 'optim.' keys")
    if rank == 0:
        write_metadata(path, None)  # a half-written save is no checkpoint
    with _quiet():
        dcp.save(state, checkpoint_id=path, no_dist=not distributed)
    if rank == 0:
        write_metadata(path, meta)
    if distributed:
        dist.barrier()  # every rank returns once the checkpoint is complete


def _save_optimizer(
    optimizer: torch.optim.Optimizer, params: list[_Entry], copies: list[_Entry],
    state: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    kinds: dict[str, dict[str, Any]] = {}
    groups: list[dict[str, Any]] = [
        {k: jsonable(v) for k, v in g.items() if k != "params"} | {"params": []}
        for g in optimizer.param_groups
    ]
    for e, gi, st in _optimizer_items(optimizer, params, copies):
        groups[gi]["params"].append(e.key)
        kinds[e.key] = {}
        for name, v in st.items():
            key = f"optim.{e.key}.{name}"
            if _like_param(v, e.param):
                state[key], kinds[e.key][name] = _view(e, v), "param"
            elif isinstance(v, torch.Tensor) and not isinstance(v, DTensor):
                state[key], kinds[e.key][name] = v.detach(), "tensor"
            elif v is None or isinstance(v, (bool, int, float, str)):
                kinds[e.key][name] = {"value": v}
            else:
                raise CheckpointError(
                    f"the optimizer state {name!r} of {e.key} is a {type(v).__name__}; a "
                    "checkpoint stores tensors shaped like their parameter, other whole "
                    "tensors, numbers, strings and None; use an optimizer whose state is those"
                )
    return {"type": type(optimizer).__name__, "param_groups": groups, "state": kinds}


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    path = os.fspath(path)
    meta = read_metadata(path)
    params, copies, buffers = _entries(model)
    distributed = _programs(model) is not None
    shapes = [(e.key, e.names, list(e.spec.shape if e.spec is not None else e.param.shape))
              for e in params + copies]  # fmt: skip
    source = match_keys(meta, shapes, path)
    saved_opt = meta.get("optimizer")
    if optimizer is not None and (
        saved_opt is None or saved_opt["type"] != type(optimizer).__name__
    ):
        had = f"{saved_opt['type']} state" if saved_opt else "no optimizer state"
        raise CheckpointError(
            f"the checkpoint {path!r} holds {had}, but a {type(optimizer).__name__} was given; "
            f"pass {'an ' + saved_opt['type'] if saved_opt else 'optimizer=None'} (state is "
            "restored only into an optimizer of the type that saved it)"
        )
    tensor_meta = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    restored: list[tuple[torch.Tensor, int, dict[str, Any]]] = []
    passes = [params, copies] if hasattr(model, "_models") and _any_rank(bool(copies)) else [params]
    with torch.no_grad():
        for i, entries in enumerate(passes):
            state: dict[str, Any] = {source[e.key]: _view(e, e.param) for e in entries}
            if i == 0:
                for fqn, b in buffers.items():
                    if meta["buffers"].get(fqn, {}).get("shape") == list(b.shape):
                        state[fqn] = b
            if optimizer is not None and saved_opt is not None:
                others = copies if i == 0 else params
                for e, gi, _ in _optimizer_items(optimizer, entries, others):
                    group = optimizer.param_groups[gi]
                    new = _optimizer_targets(e, source[e.key], saved_opt, group, tensor_meta,
                                             state)  # fmt: skip
                    restored.append((e.param, gi, new))
            with _quiet():
                dcp.load(state, checkpoint_id=path, no_dist=not distributed)
    if optimizer is not None and saved_opt is not None:
        for p, _, new in restored:
            optimizer.state[p] = new
        restore_groups(optimizer, saved_opt, {id(e.param): source[e.key] for e in params + copies})
    return int(meta.get("step", 0))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that a save or load without a process group is single-process; a plain
    module's is meant to be."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _any_rank(flag: bool) -> bool:
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, flag)
    return any(every)


def _optimizer_targets(
    e: _Entry, key: str, saved: dict[str, Any], group: dict[str, Any], tensor_meta: Any,
    state: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The fresh optimizer state of one parameter, its tensors added to ``state``."""
    on_device = bool(group.get("capturable") or group.get("fused"))
    new: dict[str, Any] = {}
    for name, kind in saved["state"].get(key, {}).items():
        item = f"optim.{key}.{name}"
        if kind == "param":
            t = torch.zeros_like(e.param.detach())
            state[item], new[name] = _view(e, t), t
        elif kind == "tensor":
            md = tensor_meta[item]
            device = e.param.device if on_device else torch.device("cpu")
            t = torch.zeros(tuple(md.size), dtype=md.properties.dtype, device=device)
            state[item], new[name] = t, t
        else:
            new[name] = kind["value"]
    return new

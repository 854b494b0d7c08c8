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
- ``read_metadata(path)`` returns the JSON (``CheckpointError`` if it is not a checkpoint).
"""

from __future__ import annotations

import contextlib
import json
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

FORMAT, VERSION, META_FILE = "autopar-checkpoint", 1, "autopar.json"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model or optimizer it is loaded into."""


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
        buffers = {k: b for k, b in model.named_buffers() if k in model.state_dict()}
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


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not isinstance(v, DTensor):
        return v.item()
    return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)


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
    meta.update(_plan_info(model, distributed))
    clash = sorted(k for k in state if k.startswith("optim.") and k in meta["params"])
    if clash:
        raise CheckpointError(f"model keys {clash} collide with the optimizer's 'optim.' keys")
    if rank == 0:
        os.makedirs(path, exist_ok=True)
        if os.path.exists(os.path.join(path, META_FILE)):  # a half-written save is no checkpoint
            os.remove(os.path.join(path, META_FILE))
    with _quiet():
        dcp.save(state, checkpoint_id=path, no_dist=not distributed)
    if rank == 0:
        tmp = os.path.join(path, META_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, os.path.join(path, META_FILE))
    if distributed:
        dist.barrier()  # every rank returns once the checkpoint is complete


def _save_optimizer(
    optimizer: torch.optim.Optimizer, params: list[_Entry], copies: list[_Entry],
    state: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    kinds: dict[str, dict[str, Any]] = {}
    groups: list[dict[str, Any]] = [
        {k: _jsonable(v) for k, v in g.items() if k != "params"} | {"params": []}
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


def _plan_info(model: torch.nn.Module, distributed: bool) -> dict[str, Any]:
    if not distributed:
        return {"mesh": None, "strategy": None, "plan": "one process (no plan)"}
    programs = _programs(model) or []
    if not hasattr(model, "_models"):
        plan = programs[0].plan
        return {"mesh": plan.mesh.to_json(), "strategy": plan.strategy, "plan": plan.summary()}
    mine = {int(p.plan.pipeline["stage"]): p.plan.summary() for p in programs}
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)  # a few lines of text per stage, no tensors
    stages = {k: v for part in every for k, v in part.items()}
    first = programs[0].plan
    return {"mesh": first.pipeline.get("mesh"), "strategy": "pp",
            "pipeline": json.loads(json.dumps(getattr(model, "pipeline", {}), default=str)),
            "plan": "\n".join(f"stage {k}:\n{stages[k]}" for k in sorted(stages))}  # fmt: skip


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON (see the module docstring)."""
    path = os.fspath(path)
    file = os.path.join(path, META_FILE)
    if not os.path.isfile(file):
        raise CheckpointError(
            f"{path!r} is not an autopar checkpoint: it has no {META_FILE} (save_checkpoint "
            "writes it last, after every rank has written its pieces, so a save that did not "
            "finish has none); pass a directory that save_checkpoint (or autopar run --save) "
            "wrote"
        )
    try:
        with open(file) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file} cannot be read as JSON ({err}); the checkpoint is "
                              "damaged: save it again") from None  # fmt: skip
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an autopar checkpoint description (no "
                              f"'format': {FORMAT!r}); pass a directory save_checkpoint wrote")  # fmt: skip
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{file} has format version {meta.get('version')!r}; this "
                              f"autopar reads version {VERSION}: load it with the autopar "
                              "that saved it")  # fmt: skip
    return meta


def _sources(meta: dict[str, Any], entries: list[_Entry], path: str) -> dict[str, str]:
    """Each entry's key in the checkpoint (tied weights found under any of their keys)."""
    saved = meta["params"]
    by_name: dict[str, str] = {}
    for key, m in saved.items():
        for n in (key, *m["keys"]):
            by_name.setdefault(n, key)
    out: dict[str, str] = {}
    missing, wrong = [], []
    for e in entries:
        k = next((by_name[n] for n in (e.key, *e.names) if n in by_name), None)
        shape = list(e.spec.shape if e.spec is not None else e.param.shape)
        if k is None:
            missing.append(e.key)
        elif saved[k]["shape"] != shape:
            wrong.append(f"{e.key} {tuple(shape)} (saved {tuple(saved[k]['shape'])})")
        else:
            out[e.key] = k
    if missing or wrong:
        said = [f"{len(missing)} parameters of the model are not in it ({', '.join(missing[:4])}"
                f"{', ...' if len(missing) > 4 else ''})" if missing else "",
                f"{len(wrong)} have other shapes ({', '.join(wrong[:3])})" if wrong else ""]  # fmt: skip
        raise CheckpointError(
            f"the checkpoint {path!r} holds {len(saved)} parameters of another model: "
            f"{' and '.join(x for x in said if x)}. A checkpoint loads into the model it was "
            "saved from (same architecture and sizes) under any plan, mesh or world size; "
            "build that model, or save a new checkpoint from this one"
        )
    return out


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    path = os.fspath(path)
    meta = read_metadata(path)
    params, copies, buffers = _entries(model)
    distributed = _programs(model) is not None
    source = _sources(meta, params + copies, path)
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
        _restore_groups(optimizer, restored, saved_opt, source, params + copies)
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


def _restore_groups(
    optimizer: torch.optim.Optimizer, restored: list[Any], saved: dict[str, Any],
    source: dict[str, str], entries: list[_Entry],
) -> None:  # fmt: skip
    """Hyperparameters (lr, betas, ...) of each group from the saved group holding its
    first parameter."""
    key_of = {id(e.param): source[e.key] for e in entries}
    for group in optimizer.param_groups:
        first = next((key_of[id(p)] for p in group["params"] if id(p) in key_of), None)
        old = next((g for g in saved["param_groups"] if first in g["params"]), None)
        if old is None:
            continue
        for k, v in old.items():
            now = group.get(k)
            if k == "params" or k not in group or isinstance(now, torch.Tensor):
                continue
            if isinstance(now, (tuple, list)) and isinstance(v, list):
                group[k] = type(now)(v)
            elif isinstance(now, bool) or isinstance(v, bool):
                group[k] = v if isinstance(now, bool) and isinstance(v, bool) else now
            elif isinstance(now, (int, float)) and isinstance(v, (int, float)):
                group[k] = v

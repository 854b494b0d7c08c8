"""The description a checkpoint carries (``autopar.json``): what it holds and how it was
planned; read, written and matched against the model it is loaded into.

Contract:
- ``read_metadata(path)`` returns the JSON of checkpoint directory ``path``:
  ``{"format": "autopar-checkpoint", "version": 1, "step", "world_size", "mesh",
  "strategy", "plan" (the saving plan's summary, per stage for a pipeline), "params":
  {key: {"shape", "dtype", "keys" (every original key: tied weights)}}, "buffers",
  "optimizer": {"type", "param_groups" (hyperparameters and the keys of their
  parameters), "state": {key: {name: "param" | "tensor" | {"value": v}}}} or None}``;
  ``CheckpointError`` (one paragraph) when it is missing, damaged or of another version.
- ``write_metadata(path, meta)`` writes it atomically (``None`` removes it).
- ``describe_plan(model, programs, meta)`` adds the saving plan; a pipeline's ranks hold
  different stages, so their descriptions are merged (a collective on small Python
  objects, never tensors).
- ``match_keys(meta, params, path)`` maps each ``(key, original keys, global shape)`` of
  the target model to its key in the checkpoint, or raises ``CheckpointError`` naming the
  missing and misshapen parameters.
- ``restore_groups(optimizer, saved, key_of)`` sets each group's numbers and tuples (lr,
  betas, ...) from the saved group holding its first parameter.
"""

from __future__ import annotations

import json
import os
from typing import Any

FORMAT, VERSION, META_FILE = "autopar-checkpoint", 1, "autopar.json"


class CheckpointError(ValueError):
    """A checkpoint that is damaged or does not fit the model or optimizer given."""


def jsonable(v: Any) -> Any:
    """A hyperparameter as JSON (a one-element tensor as its number, others as text)."""
    import torch

    if isinstance(v, (tuple, list)):
        return [jsonable(x) for x in v]
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not hasattr(v, "device_mesh"):
        return v.item()
    return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
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
        raise CheckpointError(
            f"{file} cannot be read as JSON ({err}); the checkpoint is damaged: save it again"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is not an autopar checkpoint description (it lacks 'format': "
            f"{FORMAT!r}); pass a directory that save_checkpoint wrote"
        )
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{file} has format version {meta.get('version')!r}, but this autopar reads "
            f"version {VERSION}; load it with the autopar that saved it"
        )
    return meta


def write_metadata(path: str, meta: dict[str, Any] | None) -> None:
    file = os.path.join(path, META_FILE)
    if meta is None:
        os.makedirs(path, exist_ok=True)
        if os.path.exists(file):
            os.remove(file)
        return
    with open(file + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(file + ".tmp", file)


def describe_plan(model: Any, programs: list[Any] | None, meta: dict[str, Any]) -> None:
    if programs is None:
        meta.update(mesh=None, strategy=None, plan="one process (no plan)")
        return
    if not hasattr(model, "_models"):
        plan = programs[0].plan
        meta.update(mesh=plan.mesh.to_json(), strategy=plan.strategy, plan=plan.summary())
        return
    import torch.distributed as dist

    indices = getattr(model, "stage_indices", range(len(programs)))
    mine = {"stages": {int(i): p.plan.summary() for i, p in zip(indices, programs)},
            "params": meta["params"], "buffers": meta["buffers"], "optimizer": meta["optimizer"]}  # fmt: skip
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    stages: dict[int, str] = {}
    opt = meta["optimizer"]
    for part in every:
        stages.update(part["stages"])
        for k, v in part["params"].items():
            meta["params"].setdefault(k, v)
        meta["buffers"].update(part["buffers"])
        if opt is not None and part["optimizer"] is not None:
            for k, v in part["optimizer"]["state"].items():
                opt["state"].setdefault(k, v)
            for group, theirs in zip(opt["param_groups"], part["optimizer"]["param_groups"]):
                group["params"] += [k for k in theirs["params"] if k not in group["params"]]
    info = json.loads(json.dumps(getattr(model, "pipeline", None) or {}, default=str))
    meta.update(mesh=_mesh_json(info.get("mesh")), strategy="pp", pipeline=info,
                plan="\n".join(f"stage {k}:\n{stages[k]}" for k in sorted(stages)))  # fmt: skip


def _mesh_json(mesh: Any) -> Any:
    """``{"axes": [{"name", "size"}]}`` from that form or from ``{name: size}``."""
    if isinstance(mesh, dict) and "axes" not in mesh:
        return {"axes": [{"name": n, "size": int(s)} for n, s in mesh.items()]}
    return mesh


def match_keys(
    meta: dict[str, Any], params: list[tuple[str, list[str], list[int]]], path: str
) -> dict[str, str]:
    saved = meta["params"]
    by_name: dict[str, str] = {}
    for key, m in saved.items():
        for n in (key, *m["keys"]):
            by_name.setdefault(n, key)
    out: dict[str, str] = {}
    missing, wrong = [], []
    for key, names, shape in params:
        k = next((by_name[n] for n in (key, *names) if n in by_name), None)
        if k is None:
            missing.append(key)
        elif saved[k]["shape"] != shape:
            wrong.append(f"{key} {tuple(shape)} (saved {tuple(saved[k]['shape'])})")
        else:
            out[key] = k
    if missing or wrong:
        n = len({key for key, _, _ in params})
        said = [f"{len(missing)} of this model's {n} parameters are not in it "
                f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})" if missing else "",
                f"{len(wrong)} have other shapes ({', '.join(wrong[:3])})" if wrong else ""]  # fmt: skip
        raise CheckpointError(
            f"the checkpoint {path!r} ({len(saved)} parameters) was saved from another model: "
            f"{' and '.join(x for x in said if x)}. A checkpoint loads into the model it was "
            "saved from (same architecture and sizes) under any plan, mesh or world size; "
            "build that model, or save a new checkpoint from this one"
        )
    return out


def restore_groups(optimizer: Any, saved: dict[str, Any], key_of: dict[int, str]) -> None:
    for group in optimizer.param_groups:
        first = next((key_of[id(p)] for p in group["params"] if id(p) in key_of), None)
        old = next((g for g in saved["param_groups"] if first in g["params"]), None)
        for k, v in (old or {}).items():
            now = group.get(k)
            if k == "params" or k not in group:
                continue
            if isinstance(now, (tuple, list)) and isinstance(v, list):
                group[k] = type(now)(v)
            elif isinstance(now, bool) or isinstance(v, bool):
                group[k] = v if isinstance(now, bool) and isinstance(v, bool) else now
            elif isinstance(now, (int, float)) and isinstance(v, (int, float)):
                group[k] = v

"""Strategy presets as restrictions of the search space.

Contract: ``restrict(graph, preset)`` removes strategies in place. Each preset gives every
mesh axis a role, "data" or "tensor":
- ``"dp"``, ``"fsdp"``, ``"zero"``: every axis is a data axis;
- ``"tp"``: an axis named ``tp`` is a tensor axis and the others are data axes (Megatron:
  tensor parallel inside, data parallel across); on a mesh without a ``tp`` axis every
  axis is a tensor axis.
On a data axis every graph input is sharded on dim 0 (an input whose batch does not divide
raises ValueError saying so) and every op that depends on the inputs keeps dim 0 (the
batch) split, scalars excepted (an op that cannot runs replicated there); parameters are
replicated (``"dp"``, ``"tp"``) or stored sharded on some dim that divides, gathered for
use and their gradients reduce-scattered (``"fsdp"`` frees the gathered copy after
forward and gathers it again in backward: ZeRO-3 / FSDP's reshard_after_forward;
``"zero"`` keeps it until backward: ZeRO-2 memory and traffic). On a tensor axis every
parameter of rank >= 2 is sharded and used where it is stored (Megatron's column/row
pairs are then the cheapest way to connect them), vectors (biases, norm weights) are
left to the solver, and inputs are replicated. A matrix parameter that cannot be sharded
there (no dim divides, or no op using it has a strategy taking it sharded: an op with no
sharding rule, say) stays replicated on the tensor axes; an op that cannot take a
parameter sharded while other ops do gathers it. One warning names each such parameter
and op, and why.
``"auto"`` removes nothing. A node left without strategies raises ValueError naming it.
"""

from __future__ import annotations

import warnings

from autopar.placement import Layout, Replicate, Shard
from autopar.solve.graph import PlanGraph, PNode
from autopar.strategies.types import Strategy

PRESETS = ("auto", "dp", "tp", "fsdp", "zero")
DATA_PARALLEL = ("dp", "fsdp", "zero")


def axis_roles(graph: PlanGraph, preset: str) -> tuple[str, ...]:
    names = graph.mesh.names
    if preset in DATA_PARALLEL:
        return tuple("data" for _ in names)
    if "tp" in names:
        return tuple("tensor" if n == "tp" else "data" for n in names)
    return tuple("tensor" for _ in names)


def _on(layout: Layout, axes: list[int], ok) -> bool:  # type: ignore[no-untyped-def]
    return all(ok(layout[a]) for a in axes)


def _param(
    node: PNode, preset: str, data: list[int], tensor: list[int], whole: bool = False
) -> list[Strategy]:
    """A parameter's layouts; ``whole``: replicated on the tensor axes too."""
    matrix = len(node.out_metas[0].shape) >= 2
    keep = []
    for s in node.strategies:
        lay = s.outs[0]
        if whole and not _on(lay, tensor, lambda p: isinstance(p, Replicate)):
            continue
        if not whole and tensor and matrix and not _on(lay, tensor, lambda p: isinstance(p, Shard)):
            continue
        if preset in ("fsdp", "zero"):
            if not _on(lay, data, lambda p: isinstance(p, Shard)):
                continue
            if s.regather != (preset == "fsdp"):
                continue
        elif not _on(lay, data, lambda p: isinstance(p, Replicate)):
            continue
        keep.append(s)
    if not keep and preset in ("fsdp", "zero"):  # no dim divides: the parameter stays whole
        return _param(node, "dp", data, tensor, whole)
    return keep


def _takes_sharded(s: Strategy, slots: list[int], tensor: list[int]) -> bool:
    return all(_on(s.ins[k], tensor, lambda p: isinstance(p, Shard)) for k in slots)


def _matrix_params(graph: PlanGraph, node: PNode) -> list[int]:
    return [
        k for k, (src, _) in enumerate(node.inputs)
        if graph.nodes[src].kind == "param" and len(graph.nodes[src].out_metas[0].shape) >= 2
    ]  # fmt: skip


def _tensor_plan(
    graph: PlanGraph, ops: dict[str, list[Strategy]], preset: str, data: list[int],
    tensor: list[int],
) -> tuple[dict[str, list[int]], dict[str, str], list[str]]:  # fmt: skip
    """Which matrix parameters each op must take sharded on the tensor axes, and which
    parameters stay whole (each with the reason). A parameter with no dim that divides
    stays whole; so does one that no op using it can take sharded (an op with no rule,
    say). Each op takes as many of its parameters sharded as one of its strategies can,
    in slot order; an op that cannot take some parameter sharded while another op does
    gathers it (listed in the third value)."""
    whole: dict[str, str] = {}
    for node in graph.nodes.values():
        if node.kind == "param" and len(node.out_metas[0].shape) >= 2:
            if not _param(node, preset, data, tensor):
                dims = list(node.out_metas[0].shape)
                whole[node.name] = f"no dim of its shape {dims} divides by the tensor axes"
    required: dict[str, list[int]] = {}
    refused: dict[str, list[str]] = {}  # parameter -> the ops that cannot take it sharded
    for name, strategies in ops.items():
        chosen: list[int] = []
        for k in _matrix_params(graph, graph.nodes[name]):
            src = graph.nodes[name].inputs[k][0]
            if src in whole:
                continue
            if any(_takes_sharded(s, [*chosen, k], tensor) for s in strategies):
                chosen.append(k)
            else:
                refused.setdefault(src, []).append(f"{name!r} ({graph.nodes[name].target})")
        required[name] = chosen
    used_sharded = {graph.nodes[n].inputs[k][0] for n, slots in required.items() for k in slots}
    gathers = []
    for param, users in sorted(refused.items()):
        if param in used_sharded:
            gathers += [f"{u} gathers {param}" for u in users]
        else:
            whole[param] = f"no node using it can take it sharded: {', '.join(users)}"
    return required, whole, gathers


def restrict(graph: PlanGraph, preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"strategy must be one of {PRESETS}, got {preset!r}")
    if preset == "auto":
        return
    roles = axis_roles(graph, preset)
    data = [a for a, r in enumerate(roles) if r == "data"]
    tensor = [a for a, r in enumerate(roles) if r == "tensor"]
    derived = set()
    for node in graph.nodes.values():
        if node.kind == "input" or any(src in derived for src, _ in node.inputs):
            derived.add(node.name)
    ops: dict[str, list[Strategy]] = {}
    for node in graph.nodes.values():
        if node.kind != "op":
            continue
        kept = node.strategies
        if data and node.name in derived:
            kept = [
                s
                for s in kept
                if all(
                    m.ndim == 0 or _on(lay, data, lambda p: p == Shard(0))
                    for m, lay in zip(node.out_metas, s.outs)
                )
            ] or kept  # an op that cannot keep the batch split runs replicated there
        ops[node.name] = kept
    required: dict[str, list[int]] = {}
    whole: dict[str, str] = {}
    if tensor:
        required, whole, gathers = _tensor_plan(graph, ops, preset, data, tensor)
        if whole or gathers:
            notes = [f"{p} ({why})" for p, why in sorted(whole.items())]
            whole_msg = f"keeps these parameters replicated: {'; '.join(notes)}" if notes else ""
            gather_msg = f"these nodes gather a parameter: {'; '.join(gathers)}" if gathers else ""
            warnings.warn(
                f"strategy={preset!r} on the tensor axes of mesh {graph.mesh} "
                + "; and ".join(t for t in (whole_msg, gather_msg) if t),
                stacklevel=3,
            )
    for node in graph.nodes.values():
        keep: list[Strategy] | None = None
        if node.kind == "param":
            keep = _param(node, preset, data, tensor, whole=node.name in whole)
        elif node.kind == "input":
            meta = node.out_metas[0]
            keep = [
                s for s in node.strategies
                if _on(s.outs[0], data, lambda p: p == Shard(0))
                and _on(s.outs[0], tensor, lambda p: isinstance(p, Replicate))
            ]  # fmt: skip
            if not keep and data:
                raise ValueError(
                    f"strategy={preset!r} shards every input on dim 0, but input {node.name!r} has "
                    f"shape {list(meta.shape)} and the mesh {graph.mesh} needs dim 0 to divide "
                    f"by {graph.mesh.num_devices}; use a batch size that divides, or "
                    "strategy='auto'"
                )
        elif node.kind == "op":
            keep = ops[node.name]
            if tensor:
                slots = required[node.name]
                keep = [s for s in keep if _takes_sharded(s, slots, tensor)]
        if keep is None:
            continue
        if not keep:
            raise ValueError(
                f"strategy={preset!r} leaves node {node.name!r} ({node.target}, module "
                f"{node.module or '<top>'}) without a valid layout on mesh {graph.mesh}: its "
                f"dims {[list(m.shape) for m in node.out_metas]} do not divide. "
                "Use strategy='auto'"
            )
        node.strategies = keep

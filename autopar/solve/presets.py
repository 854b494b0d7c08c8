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
left to the solver, and inputs are replicated.
``"auto"`` removes nothing. A node left without strategies raises ValueError naming it.
"""

from __future__ import annotations

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


def _param(node: PNode, preset: str, data: list[int], tensor: list[int]) -> list[Strategy]:
    matrix = len(node.out_metas[0].shape) >= 2
    keep = []
    for s in node.strategies:
        lay = s.outs[0]
        if tensor and matrix and not _on(lay, tensor, lambda p: isinstance(p, Shard)):
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
        return _param(node, "dp", data, tensor)
    return keep


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
    for node in graph.nodes.values():
        keep: list[Strategy] | None = None
        if node.kind == "param":
            keep = _param(node, preset, data, tensor)
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
            keep = node.strategies
            if data and node.name in derived:
                keep = [
                    s
                    for s in keep
                    if all(
                        m.ndim == 0 or _on(lay, data, lambda p: p == Shard(0))
                        for m, lay in zip(node.out_metas, s.outs)
                    )
                ] or keep  # an op that cannot keep the batch split runs replicated there
            if tensor:
                params = [
                    k for k, (src, _) in enumerate(node.inputs)
                    if graph.nodes[src].kind == "param"
                    and len(graph.nodes[src].out_metas[0].shape) >= 2
                ]  # fmt: skip
                keep = [
                    s for s in keep
                    if all(_on(s.ins[k], tensor, lambda p: isinstance(p, Shard)) for k in params)
                ]  # fmt: skip
        if keep is None:
            continue
        if not keep:
            why = (
                "autopar has no sharding rule for this op"
                if node.family == "unknown"
                else f"its dims {[list(m.shape) for m in node.out_metas]} do not divide"
            )
            raise ValueError(
                f"strategy={preset!r} leaves node {node.name!r} ({node.target}, module "
                f"{node.module or '<top>'}) without a valid layout on mesh {graph.mesh}: {why}. "
                "Use strategy='auto'"
            )
        node.strategies = keep

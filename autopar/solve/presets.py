"""Strategy presets as restrictions of the search space.

Contract: ``restrict(graph, preset, axes)`` removes strategies in place:
- ``"dp"``: every parameter replicated; every graph input sharded on dim 0 on each axis
  (an input whose batch does not divide raises ValueError saying so); every op that
  depends on the inputs keeps dim 0 (the batch) sharded (scalars excepted), so
  the batch stays split and parameter gradients are all-reduced.
- ``"tp"``: every parameter of rank >= 2 sharded on each axis and used where it is stored
  (Megatron's column/row pairs are then the cheapest way to connect them); inputs
  replicated.
- ``"fsdp"`` / ``"zero"``: data parallel as ``"dp"``, but every parameter is stored
  sharded on each axis (on some dim that divides; a parameter with none stays
  replicated), gathered for use and its gradient reduce-scattered. ``"fsdp"`` frees the
  gathered copy after forward and gathers it again in backward (ZeRO-3, FSDP's
  reshard_after_forward); ``"zero"`` keeps it until backward (ZeRO-2 memory for
  gradients and optimizer state, FSDP2's reshard_after_forward=False).
- ``"auto"``: nothing removed.
A node left without strategies raises ValueError naming it.
"""

from __future__ import annotations

from autopar.placement import Replicate, Shard
from autopar.solve.graph import PlanGraph

PRESETS = ("auto", "dp", "tp", "fsdp", "zero")
DATA_PARALLEL = ("dp", "fsdp", "zero")


def restrict(graph: PlanGraph, preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"strategy must be one of {PRESETS}, got {preset!r}")
    if preset == "auto":
        return
    data = set()
    for node in graph.nodes.values():
        if node.kind == "input" or any(src in data for src, _ in node.inputs):
            data.add(node.name)
    dp_like = preset in DATA_PARALLEL
    for node in graph.nodes.values():
        if node.kind == "op" and dp_like and node.name in data:
            keep = [
                s
                for s in node.strategies
                if all(
                    m.ndim == 0 or all(p == Shard(0) for p in lay)
                    for m, lay in zip(node.out_metas, s.outs)
                )
            ] or node.strategies  # an op that cannot keep the batch split runs replicated
        elif node.kind == "param":
            replicated = [
                s for s in node.strategies if all(isinstance(p, Replicate) for p in s.outs[0])
            ]
            if preset == "dp":
                keep = replicated
            elif dp_like:
                keep = [
                    s
                    for s in node.strategies
                    if all(isinstance(p, Shard) for p in s.outs[0])
                    and s.regather == (preset == "fsdp")
                ] or replicated
            elif len(node.out_metas[0].shape) >= 2:
                keep = [s for s in node.strategies if all(isinstance(p, Shard) for p in s.outs[0])]
            else:
                keep = node.strategies
        elif node.kind == "input":
            meta = node.out_metas[0]
            if dp_like:
                keep = [s for s in node.strategies if all(p == Shard(0) for p in s.outs[0])]
                if not keep:
                    raise ValueError(
                        f"strategy={preset!r} shards every input on dim 0, but input {node.name!r} has "
                        f"shape {list(meta.shape)} and the mesh {graph.mesh} needs dim 0 to divide "
                        f"by {graph.mesh.num_devices}; use a batch size that divides, or "
                        "strategy='auto'"
                    )
            else:
                keep = [
                    s for s in node.strategies if all(isinstance(p, Replicate) for p in s.outs[0])
                ]
        elif node.kind == "op" and preset == "tp":
            params = {
                k for k, (src, _) in enumerate(node.inputs)
                if graph.nodes[src].kind == "param" and len(graph.nodes[src].out_metas[0].shape) >= 2
            }  # fmt: skip
            keep = [
                s for s in node.strategies
                if all(all(isinstance(p, Shard) for p in s.ins[k]) for k in params)
            ]  # fmt: skip
        else:
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

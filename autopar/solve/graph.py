"""The planning graph: captured fx graph -> nodes with candidate strategies and edges.

Contract: ``build_graph(captured, mesh)`` returns a ``PlanGraph`` with one ``PNode`` per
tensor-producing fx node (inputs, parameters, buffers, ops, and the output sink: the
sink needs the scalar outputs (the loss) replicated, and every output in
``boundary_layout`` when ``captured.whole_outputs``: a pipeline stage sends its outputs
point to point, each rank its own piece). Graph inputs arrive whole (any layout is a local
slice) except in a stage that receives them (``captured.input_grads``): there each input
arrives in ``boundary_layout`` (``arrival_layout``), its only strategy, and carries a
gradient back when it is a float.
``getitem`` on a tuple-returning op is transparent: consumers read slot ``i`` of the
producer directly. Every op gets its strategies from the rule registry; an op with no
rule, or on a dtype no rule covers, is replicated and reported in ``unknown_ops``. Each
consumer slot is an ``Edge`` from ``(producer, out_index)``. Nodes inside repeated
layers (``<prefix>.<int>`` in the module path) carry ``layer = (prefix, index)`` for
``solve.layers`` to merge.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from autopar.capture import Captured
from autopar.mesh import MeshSpec
from autopar.placement import Layout, R, Shard
from autopar.strategies.enumerate import free_strategies, node_strategies
from autopar.strategies.registry import Registry, op_name
from autopar.strategies.types import Arg, OpView, Strategy, TensorMeta


@dataclass(frozen=True)
class Edge:
    src: str
    out_index: int
    dst: str
    slot: int


@dataclass
class PNode:
    name: str
    kind: str  # input | param | buffer | op | output
    target: str
    family: str
    out_metas: tuple[TensorMeta, ...]
    inputs: list[tuple[str, int]]
    strategies: list[Strategy]
    requires_grad: bool
    module: str
    layer: tuple[str, int] | None = None
    op: OpView | None = None
    fx_node: fx.Node | None = field(default=None, repr=False)


@dataclass
class PlanGraph:
    mesh: MeshSpec
    nodes: dict[str, PNode]
    edges: list[Edge]
    unknown_ops: list[str]

    def consumers(self) -> dict[str, list[Edge]]:
        out: dict[str, list[Edge]] = {n: [] for n in self.nodes}
        for e in self.edges:
            out[e.src].append(e)
        return out


def tensor_meta(val: Any) -> TensorMeta | None:
    if isinstance(val, torch.Tensor):
        return TensorMeta(tuple(int(s) for s in val.shape), val.dtype)
    return None


def module_path(node: fx.Node) -> str:
    """The innermost module path of an exported node ("transformer.h.0.attn"), "" at top."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    path = path[0] if isinstance(path, tuple) else str(path)
    return re.sub(r"^L__self__\.?", "", str(path))


_LAYER = re.compile(r"^(?P<prefix>.*?)\.(?P<idx>\d+)(?:\.|$)")


def layer_of(path: str) -> tuple[str, int] | None:
    m = _LAYER.match(path)
    return (m.group("prefix"), int(m.group("idx"))) if m else None


def input_slots(node: fx.Node) -> list[fx.Node]:
    """fx.Node arguments in slot order (the order codegen rewrites them in)."""
    found: list[fx.Node] = []

    def visit(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg((node.args, node.kwargs), visit)
    return found


def _op_view(node: fx.Node, in_metas: tuple[TensorMeta, ...], metas: list[TensorMeta]) -> OpView:
    """The node as its rule sees it: fx.Node args replaced by Arg(slot, meta)."""
    counter = iter(range(len(in_metas)))

    def arg(n: fx.Node) -> Any:
        return Arg(next(counter), tensor_meta(n.meta["val"]))  # type: ignore[arg-type]

    view_args = fx.node.map_arg(node.args, arg)
    view_kwargs = fx.node.map_arg(node.kwargs, arg)
    return OpView(node.target, tuple(view_args), dict(view_kwargs), in_metas, tuple(metas))


DATA_AXIS = "dp"  # the stage submesh's data axis (planning.pipeline.stage_mesh)


def boundary_layout(meta: TensorMeta, names: tuple[str, ...], sizes: tuple[int, ...],
                    batch: int) -> Layout:  # fmt: skip
    """The layout a pipeline stage sends a value in and the next stage receives it in:
    split on dim 0 over the data axis when dim 0 is the stage's microbatch ``batch`` (and
    it divides), whole on every other axis (each tensor-parallel rank sends it all)."""
    batched = bool(meta.shape) and meta.shape[0] == batch > 0
    return tuple(
        Shard(0) if n == DATA_AXIS and k > 1 and batched and batch % k == 0 else R
        for n, k in zip(names, sizes, strict=True)
    )


def arrival_layout(captured: Captured, meta: TensorMeta, names: tuple[str, ...],
                   sizes: tuple[int, ...]) -> Layout:  # fmt: skip
    """How a graph input reaches this program: whole, or (a stage that receives it)
    in the boundary layout."""
    if captured.input_grads:
        return boundary_layout(meta, names, sizes, captured.stage_batch)
    return tuple(R for _ in sizes)


def build_graph(captured: Captured, mesh: MeshSpec, registry: Registry | None = None) -> PlanGraph:
    registry = registry or Registry()
    sizes = mesh.sizes
    gm = captured.graph_module
    params = set(captured.param_names)
    nodes: dict[str, PNode] = {}
    edges: list[Edge] = []
    alias: dict[str, tuple[str, int]] = {}
    unknown: list[str] = []
    memo: dict[object, list[Strategy]] = {}  # repeated layers' ops enumerated once

    def source(n: fx.Node) -> tuple[str, int]:
        return alias.get(n.name, (n.name, 0))

    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op in ("placeholder", "get_attr"):
            meta = tensor_meta(val)
            if meta is None:
                continue
            target = str(node.target)
            if node.op == "placeholder":
                kind, grad, shard = "input", captured.input_grads and meta.is_float, True
            elif target in params:
                kind, grad, shard = "param", True, True
            else:
                kind, grad, shard = "buffer", False, False
            path = target if kind != "input" else ""
            if kind == "input" and captured.input_grads:  # received: it arrives as it was sent
                lay = arrival_layout(captured, meta, mesh.names, sizes)
                strategies = [Strategy((), (lay,), (), 1, ())]
            else:
                strategies = free_strategies(meta, sizes, allow_shard=shard, param=kind == "param")
            nodes[node.name] = PNode(
                node.name, kind, target, kind, (meta,), [], strategies, grad, path,
                layer_of(path) if kind == "param" else None, fx_node=node,
            )  # fmt: skip
        elif node.op == "call_function" and node.target is operator.getitem:
            src = node.args[0]
            assert isinstance(src, fx.Node)
            alias[node.name] = (source(src)[0], int(node.args[1]))  # type: ignore[arg-type]
        elif node.op == "call_function":
            outs = val if isinstance(val, (tuple, list)) else (val,)
            metas = [tensor_meta(v) for v in outs]
            if not metas or any(m is None for m in metas):
                raise NotImplementedError(
                    f"node {node.name} ({op_name(node.target)}) returns non-tensor values; "
                    "autopar plans graphs whose ops return tensors"
                )
            slots = input_slots(node)
            in_metas = tuple(tensor_meta(s.meta.get("val")) for s in slots)
            if any(m is None for m in in_metas):
                raise NotImplementedError(f"node {node.name} takes a non-tensor fx value")
            op = _op_view(node, in_metas, metas)  # type: ignore[arg-type]
            family, rule = registry.lookup(node.target, op)
            if family == "unknown":
                unknown.append(registry.unknown_name(node.target, op))
            strategies = node_strategies(op, sizes, rule, memo)
            inputs = [source(s) for s in slots]
            grad = any(nodes[p].requires_grad for p, _ in inputs if p in nodes) and any(
                m is not None and m.is_float for m in metas
            )  # (topk, sort: float values carry a gradient beside their integer indices)
            path = module_path(node)
            nodes[node.name] = PNode(
                node.name, "op", op_name(node.target), family, tuple(metas), inputs,  # type: ignore[arg-type]
                strategies, grad, path, layer_of(path), op, node,
            )  # fmt: skip
            edges += [Edge(p, i, node.name, k) for k, (p, i) in enumerate(inputs)]
        elif node.op == "output":
            slots = [s for s in input_slots(node) if tensor_meta(s.meta.get("val")) is not None]
            if not captured.whole_outputs:  # training reads the loss; the rest on demand
                slots = [s for s in slots if s.meta["val"].dim() == 0]
            inputs = [source(s) for s in slots]
            out_metas = tuple(tensor_meta(s.meta["val"]) for s in slots)
            if captured.whole_outputs:  # sent to the next stage
                need = tuple(boundary_layout(m, mesh.names, sizes, captured.stage_batch)  # type: ignore[arg-type]
                             for m in out_metas)  # fmt: skip
            else:
                need = tuple(tuple(R for _ in sizes) for _ in inputs)
            sink = Strategy(need, (), need, 1, ())
            nodes["output"] = PNode(
                "output", "output", "output", "output", (), inputs, [sink], False, "",
                fx_node=node, op=OpView("output", (), {}, out_metas, ()),  # type: ignore[arg-type]
            )  # fmt: skip
            edges += [Edge(p, i, "output", k) for k, (p, i) in enumerate(inputs)]
    return PlanGraph(mesh, nodes, edges, sorted(set(unknown)))

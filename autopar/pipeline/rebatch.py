"""The same captured (stage) graph at another batch size, for pricing only.

Contract: ``rebatch(captured, batch)`` returns a ``Captured`` whose graph computes the
same ops as ``captured``'s on inputs whose batch (dim 0 of every batched placeholder,
the size ``batch_of(captured)`` reads) is ``batch``, with every node's ``meta["val"]``
recomputed on the meta device (no memory, no data). Shape arguments that name the old
batch as their leading size (``view``/``reshape``/``expand``/``new_*``/``full``... with
``size[0] == old``, ``arange(old)``) are rewritten to the new batch; a flattened
``batch * k`` leading size is rescaled when the op's input carries the batch. The graph
is new (parameters and buffers are shared with the original, which stays unchanged) and
is meant for the planner's prices, not for running. ``RebatchError`` (a ValueError)
when the shapes cannot be propagated, naming the node, so a caller can fall back.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from autopar.capture import Captured

_aten = torch.ops.aten
_SIZED = {
    _aten.view.default, _aten._unsafe_view.default, _aten.reshape.default,
    _aten.expand.default, _aten.new_empty.default, _aten.new_zeros.default,
    _aten.new_ones.default, _aten.new_full.default,
}  # fmt: skip
_FACTORIES = {
    _aten.full.default,
    _aten.zeros.default,
    _aten.ones.default,
    _aten.empty.memory_format,
}


class RebatchError(ValueError):
    """The graph's shapes could not be propagated at the new batch."""


def batch_of(captured: Captured) -> int:
    for node in captured.graph_module.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and isinstance(val, torch.Tensor) and val.dim() > 0:
            return int(val.shape[0])
    raise RebatchError("the graph has no batched tensor input to rebatch")


def _meta(val: Any, old: int | None = None, new: int | None = None) -> Any:
    if not isinstance(val, torch.Tensor):
        return val
    shape = [int(d) for d in val.shape]
    if old is not None and new is not None and shape and shape[0] == old:
        shape[0] = new
    return torch.empty(shape, dtype=val.dtype, device="meta")


def _carries_batch(node: fx.Node, old: int) -> bool:
    src = node.args[0] if node.args else None
    val = src.meta.get("val") if isinstance(src, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.numel() % old == 0 and val.dim() > 0


def _size_arg(node: fx.Node, size: Any, old: int, new: int) -> Any:
    if not isinstance(size, (list, tuple)) or not size or not isinstance(size[0], int):
        return size
    first = size[0]
    if first == old:
        first = new
    elif first > old and first % old == 0 and node.target in _SIZED and _carries_batch(node, old):
        out = node.meta.get("val")
        if isinstance(out, torch.Tensor) and out.dim() > 0 and int(out.shape[0]) == first:
            first = first // old * new  # a flattened batch x k leading size
    return type(size)([first, *size[1:]])


def _rewrite(node: fx.Node, old: int, new: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = list(node.args), dict(node.kwargs)
    if node.target in _SIZED and len(args) > 1:
        args[1] = _size_arg(node, args[1], old, new)
    elif node.target in _FACTORIES and args:
        args[0] = _size_arg(node, args[0], old, new)
    elif node.target is _aten.arange.default and args and args[0] == old:
        args[0] = new
    elif node.target is _aten.arange.start and len(args) > 1 and args[1] == old and args[0] == 0:
        args[1] = new
    return tuple(args), kwargs


def rebatch(captured: Captured, batch: int) -> Captured:
    old = batch_of(captured)
    gm = captured.graph_module
    if batch == old:
        return captured
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    vals: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        new_node = graph.node_copy(node, lambda a: env[a])
        new_node.meta = dict(node.meta)
        env[node] = new_node
        if node.op == "placeholder":
            vals[new_node] = _meta(node.meta.get("val"), old, batch)
        elif node.op == "get_attr":
            vals[new_node] = _meta(node.meta.get("val"))
        elif node.op == "call_function":
            args, kwargs = _rewrite(node, old, batch)
            new_node.args = fx.node.map_arg(args, lambda a: env[a])
            new_node.kwargs = fx.node.map_arg(kwargs, lambda a: env[a])
            run_args = pytree.tree_map(
                lambda a: vals[env[a]] if isinstance(a, fx.Node) else a, (args, kwargs)
            )
            try:
                if node.target is operator.getitem:
                    out = run_args[0][0][run_args[0][1]]
                else:
                    meta = torch.device("meta")  # every value here lives on meta
                    kw = {k: meta if isinstance(v, torch.device) else v
                          for k, v in run_args[1].items()}  # fmt: skip
                    pos = [meta if isinstance(v, torch.device) else v for v in run_args[0]]
                    out = node.target(*pos, **kw)  # type: ignore[operator]
            except Exception as err:
                raise RebatchError(
                    f"cannot recompute {node.name} ({node.target}) at batch {batch}: {err}"
                ) from err
            vals[new_node] = out
        if node.op != "output":
            new_node.meta["val"] = vals[new_node]
    new_gm = fx.GraphModule(gm, graph)
    example = tuple(_meta(v, old, batch) for v in captured.example_args)
    return Captured(
        new_gm,
        captured.param_names,
        captured.buffer_names,
        example,
        {},
        whole_outputs=captured.whole_outputs,
        input_grads=captured.input_grads,
        stage_batch=batch if captured.stage_batch == old else captured.stage_batch,
    )

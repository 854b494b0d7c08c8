"""Code generation: a captured graph + a Plan -> the per-rank distributed program.

Contract: ``lower(captured, plan, device_mesh)`` rewrites the captured GraphModule in
place so that every op runs on LOCAL tensors:
- before each op input, a ``self.reshard(x, src=..., dst=..., grad=...)`` call moves
  the value from its producer's layout to the layout the op's strategy needs (and
  declares the layout of the gradient the op will produce for it);
- shape arguments of view/reshape/expand become the local shapes;
- ops whose strategy needs a custom kernel call it (``self.vocab_embedding_<axis>``,
  ``self.sharded_cross_entropy``);
- graph outputs are made whole (replicated) so callers see the original values.
The result's ``.code`` is plain, readable Python. Parameters are not touched here.
"""

from __future__ import annotations

import operator
from typing import Any

import torch.fx as fx

from autopar.capture import Captured
from autopar.cost import grad_of
from autopar.placement import Layout, R, layout_str, local_shape
from autopar.plan import Plan, PlanError
from autopar.runtime.reshard import Reshard, ShardedCrossEntropy, VocabEmbedding
from autopar.solve.graph import input_slots

SIZE_ARG_OPS = {"view", "_unsafe_view", "reshape", "expand"}


def _short(layout: Layout) -> str:
    return "".join(str(p) for p in layout)


def lower(captured: Captured, plan: Plan, device_mesh: Any) -> fx.GraphModule:
    gm = captured.graph_module
    graph = gm.graph
    sizes = plan.mesh.sizes
    gm.add_submodule("reshard", Reshard(device_mesh))
    by_name = {n.name: n for n in plan.nodes}
    alias: dict[str, tuple[str, int]] = {}

    def source(n: fx.Node) -> tuple[str, int]:
        return alias.get(n.name, (n.name, 0))

    def reshard(before: fx.Node, arg: fx.Node, dst: Layout, grad: Layout) -> fx.Node:
        src_name, idx = source(arg)
        if src_name not in by_name:
            raise PlanError(f"plan has no node {src_name!r}; it was made for another model")
        src = by_name[src_name].outs[idx]
        if by_name[src_name].kind == "input":  # callers pass whole tensors; slicing is local
            src = tuple(R for _ in sizes)
        is_param = by_name[src_name].kind == "param"
        if src == dst and grad == grad_of(dst) and not is_param and src == grad_of(src):
            return arg  # nothing to move, and the gradient comes back as it should
        kwargs: dict[str, Any] = {"src": _short(src), "dst": _short(dst), "grad": _short(grad)}
        if is_param and by_name[src_name].reshard_after_forward and src != dst:
            kwargs["regather"] = True
        with graph.inserting_before(before):
            return graph.call_module("reshard", (arg,), kwargs)

    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is operator.getitem:
            alias[node.name] = (source(node.args[0])[0], int(node.args[1]))  # type: ignore[arg-type]
            continue
        if node.op == "call_function":
            if node.name not in by_name:
                raise PlanError(f"plan has no node {node.name!r}; it was made for another model")
            np = by_name[node.name]
            slots = input_slots(node)
            if len(slots) != len(np.ins):
                raise PlanError(
                    f"plan node {node.name!r} has {len(np.ins)} inputs, graph has {len(slots)}"
                )
            counter = iter(range(len(slots)))

            def swap(a: fx.Node, np=np, node=node) -> fx.Node:  # type: ignore[no-untyped-def]
                k = next(counter)
                return reshard(node, a, np.ins[k], np.grads[k])

            node.args = fx.node.map_arg(node.args, swap)  # type: ignore[assignment]
            node.kwargs = fx.node.map_arg(node.kwargs, swap)  # type: ignore[assignment]
            name = getattr(getattr(node.target, "overloadpacket", None), "__name__", "")
            if name in SIZE_ARG_OPS and np.outs[0] != tuple(R for _ in sizes):
                shape = tuple(int(s) for s in node.meta["val"].shape)
                node.args = (node.args[0], list(local_shape(shape, np.outs[0], sizes)))
            if np.kernel:
                _use_kernel(gm, node, np.kernel, np, device_mesh)
        elif node.op == "output":

            def whole(a: fx.Node) -> fx.Node:
                if a.name not in by_name and a.name not in alias:
                    return a
                src_name, idx = source(a)
                layout = by_name[src_name].outs[idx]
                full = tuple(R for _ in sizes)
                return a if layout == full else reshard(node, a, full, full)

            node.args = fx.node.map_arg(node.args, whole)  # type: ignore[assignment]
    graph.lint()
    gm.recompile()
    return gm


def _use_kernel(gm: fx.GraphModule, node: fx.Node, kernel: str, np: Any, mesh: Any) -> None:
    axes = tuple(a for a in range(len(np.ins[0])) if _kernel_axis(kernel, np, a))
    if kernel == "vocab_embedding":
        axis = axes[0]
        target = f"vocab_embedding_{axis}"
        if not hasattr(gm, target):
            gm.add_submodule(target, VocabEmbedding(mesh, axis))
    elif kernel == "sharded_cross_entropy":
        target = "sharded_cross_entropy_" + "_".join(map(str, axes))
        if not hasattr(gm, target):
            gm.add_submodule(target, ShardedCrossEntropy(mesh, axes))
    else:
        raise PlanError(f"unknown kernel {kernel!r} in plan node {node.name!r}")
    node.op, node.target = "call_module", target


def _kernel_axis(kernel: str, np: Any, axis: int) -> bool:
    from autopar.placement import Shard

    first = np.ins[0][axis]
    if kernel == "vocab_embedding":
        return isinstance(first, Shard) and first.dim == 0
    return isinstance(first, Shard)


def describe(gm: fx.GraphModule) -> str:
    """The generated per-rank program as Python source."""
    return gm.code


__all__ = ["lower", "describe", "layout_str"]

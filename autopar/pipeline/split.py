"""Split a captured graph into pipeline stage programs at layer boundaries.

Contract: ``split_stages(captured, units, bounds)`` returns one ``StageGraph`` per
stage, each holding a ``Captured`` that the intra-op planner (``make_plan``) and the
runtime (``DistributedModel``) take unchanged:
- stage 0's placeholders are the original graph inputs, in the original order;
  stage ``s > 0``'s placeholders are the values stage ``s-1`` sends, in graph order;
- a stage's outputs are every value produced at or before it and read after it
  (values a later stage needs pass through the stages between); the last stage
  returns the original graph's output leaves, in order (``out_spec`` rebuilds them);
- ``const`` nodes (``partition.find_units``) and buffers are copied into every stage
  that reads them; a parameter read by several stages (tied embeddings) is referenced
  by each, under its original FQN, and listed in ``shared_params``;
- each stage's ``Captured`` has ``stage_batch`` = the graph's batch (``rebatch.batch_of``):
  a stage after the first receives its inputs, and every stage but the last sends its
  outputs, in ``solve.graph.boundary_layout`` (split over ``dp`` on that batch dim).
Every node keeps its name and ``meta`` (``val``, ``nn_module_stack``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from autopar.capture import Captured
from autopar.pipeline.partition import Units
from autopar.pipeline.rebatch import batch_of


@dataclass(frozen=True)
class StageGraph:
    index: int
    captured: Captured
    inputs: tuple[str, ...]  # original value names received (placeholders, in order)
    outputs: tuple[str, ...]  # original value names sent (last stage: the output leaves)
    units: tuple[int, int]


@dataclass(frozen=True)
class Split:
    stages: tuple[StageGraph, ...]
    shared_params: dict[str, tuple[int, ...]]  # FQN -> stages that read it (2 or more)
    out_spec: Any  # pytree spec of the original outputs (None: a flat tuple)
    in_spec: Any


def _set(root: torch.nn.Module, fqn: str, value: torch.Tensor, is_param: bool) -> None:
    *path, leaf = fqn.split(".")
    mod = root
    for p in path:
        if not hasattr(mod, p):
            mod.add_module(p, torch.nn.Module())
        mod = getattr(mod, p)
    if is_param:
        assert isinstance(value, torch.nn.Parameter)
        mod.register_parameter(leaf, value)
    else:
        mod.register_buffer(leaf, value)


def _get(root: torch.nn.Module, fqn: str) -> Any:
    obj: Any = root
    for part in fqn.split("."):
        obj = getattr(obj, part)
    return obj


def split_stages(captured: Captured, units: Units, bounds: tuple[tuple[int, int], ...]) -> Split:
    gm = captured.graph_module
    nodes = list(gm.graph.nodes)
    last = len(bounds) - 1
    stage_of_unit = {u: s for s, (i, j) in enumerate(bounds) for u in range(i, j)}
    if sorted(stage_of_unit) != list(range(units.count)):
        raise ValueError(f"stage bounds {bounds} do not cover units 0..{units.count - 1}")
    output = next(n for n in nodes if n.op == "output")
    leaves = _flat_nodes(output.args)

    def stage(n: fx.Node) -> int | None:
        if n.op == "output":
            return last
        if n.name in units.const or n.op == "get_attr":
            return None
        return stage_of_unit[units.unit[n.name]]

    produced = {n.name: stage(n) for n in nodes if n.op in ("placeholder", "call_function")}
    last_use: dict[str, int] = {}
    for n in nodes:
        s = stage(n)
        if s is None:
            continue
        for a in n.all_input_nodes:
            if produced.get(a.name) is not None:
                last_use[a.name] = max(last_use.get(a.name, -1), s)
    order = {n.name: i for i, n in enumerate(nodes)}
    batch = batch_of(captured)  # what the schedule splits into microbatches
    params = set(captured.param_names)
    readers: dict[str, set[int]] = {}
    stages: list[StageGraph] = []
    prev_out: tuple[str, ...] = tuple(n.name for n in nodes if n.op == "placeholder")
    for s, (i, j) in enumerate(bounds):
        inputs = prev_out
        if s == last:
            outputs = tuple(a.name for a in leaves)
        else:
            live = [name for name, p in produced.items()
                    if p is not None and p <= s and last_use.get(name, -1) > s]  # fmt: skip
            outputs = tuple(sorted(live, key=order.__getitem__))
        own = [n for n in nodes if n.op == "call_function" and stage(n) == s]
        needed = _const_closure(own + ([output] if s == last else []), units.const)
        g = fx.Graph()
        root = torch.nn.Module()
        env: dict[str, fx.Node] = {}
        by_name = {n.name: n for n in nodes}
        for name in inputs:
            ph = g.placeholder(name)
            ph.meta = dict(by_name[name].meta)
            env[name] = ph
        keep = {n.name for n in own} | needed
        attrs = {a.name for n in nodes if n.name in keep for a in n.all_input_nodes
                 if a.op == "get_attr"}  # fmt: skip
        for n in nodes:
            if n.op == "get_attr" and n.name in attrs:
                fqn = str(n.target)
                _set(root, fqn, _get(gm, fqn), fqn in params)
                env[n.name] = g.get_attr(fqn)
                env[n.name].meta = dict(n.meta)
                if fqn in params:
                    readers.setdefault(fqn, set()).add(s)
            elif n.op == "call_function" and n.name in keep:
                env[n.name] = g.node_copy(n, lambda a: env[a.name])
        missing = [o for o in outputs if o not in env]
        if missing:
            raise ValueError(
                f"stage {s} cannot produce {missing}; the layer split is not contiguous"
            )
        out = tuple(env[o] for o in outputs)
        g.output(out)
        g.lint()
        sgm = fx.GraphModule(root, g)
        got = {str(a.target) for a in sgm.graph.nodes if a.op == "get_attr"}
        sparams = tuple(p for p in captured.param_names if p in got)
        sbufs = tuple(b for b in captured.buffer_names if b in got)
        vals = tuple(by_name[name].meta.get("val") for name in inputs)
        stages.append(
            StageGraph(
                s,
                Captured(
                    sgm,
                    sparams,
                    sbufs,
                    vals,
                    {},
                    whole_outputs=s != last,
                    input_grads=s > 0,
                    stage_batch=batch,
                ),
                inputs,
                outputs,
                (i, j),
            )
        )
        prev_out = outputs
    codegen = getattr(gm.graph, "_codegen", None)
    info = getattr(codegen, "pytree_info", None)
    shared = {k: tuple(sorted(v)) for k, v in readers.items() if len(v) > 1}
    return Split(
        tuple(stages), shared, getattr(info, "out_spec", None), getattr(info, "in_spec", None)
    )


def _flat_nodes(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, lambda a: found.append(a) or a)  # type: ignore[func-returns-value]
    return found


def _const_closure(consumers: list[fx.Node], const: frozenset[str]) -> set[str]:
    """Names of the const nodes the given nodes read, directly or through other consts."""
    out: set[str] = set()
    stack = [a for n in consumers for a in n.all_input_nodes if a.name in const]
    while stack:
        n = stack.pop()
        if n.name in out:
            continue
        out.add(n.name)
        stack += [a for a in n.all_input_nodes if a.name in const]
    return out

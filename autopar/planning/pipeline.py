"""Pipeline plans: the searched stages planned node by node on their submesh.

Contract:
- ``stage_graphs(captured_mb, bounds)`` cuts a graph captured at the MICROBATCH shape into
  stage graphs at layer boundaries (``pipeline.partition.find_units`` +
  ``pipeline.layers.split_head`` + ``pipeline.split.split_stages``); the planner and every
  program built from a plan (``autopar.compile``, ``autopar emit``) cut the same way, so a
  stage's nodes are the plan's.
- ``pipeline_plan(ranked, captured, captured_mb, cluster, ...)`` turns the best candidate of
  the 3D search (``pipeline.plan3d.search``) into a ``Plan`` that describes the whole
  program: ``stages`` holds one full ``Plan`` per stage (every node, its reshards, its
  parameter modes, on the stage submesh ``dp x tp``, solved by the ordinary ILP under the
  device budget less the activations the schedule keeps in flight, chosen for the whole
  step of microbatches as the layers were: ``pipeline.pricing.plan_for_pipeline``), ``nodes`` and
  ``reshards`` are their union (a node copied into several stages — a constant, a tied
  weight, a received boundary value — once, as the first stage has it, with the reshards
  between nodes kept from the same stage), ``pipeline`` the schedule record (``plan3d.to_plan``: mesh, schedule,
  microbatches, chunks, stages with their layers and modules, predicted step and bubble,
  runners-up), ``predicted`` the whole pipelined step.
  Stages whose graphs agree up to names (``stage_signature``: ops, shapes, wiring, module
  paths with layer indices ranked) are solved once, largest budget first; the plan is
  carried onto another such stage (``rename_plan``) when it fits that stage's budget
  (then it is optimal there too), else that stage is solved.
- ``full_mesh(pp, dp, tp)`` / ``stage_mesh(...)``: the runtime meshes a pipeline runs on.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from autopar.capture import Captured
from autopar.mesh import MeshSpec
from autopar.plan import Plan, PlanError


def full_mesh(pp: int, dp: int, tp: int) -> MeshSpec:
    axes = [("pp", pp)] + [(n, s) for n, s in (("dp", dp), ("tp", tp)) if s > 1]
    return MeshSpec(tuple(axes) if len(axes) > 1 else (("pp", pp), ("dp", 1)))


def stage_mesh(mesh: MeshSpec) -> MeshSpec:
    rest = tuple((n, s) for n, s in mesh.axes if n != "pp")
    return MeshSpec(rest or (("dp", 1),))


def stage_graphs(captured_mb: Captured, bounds: tuple[tuple[int, int], ...]) -> Any:
    from autopar.pipeline.layers import split_head
    from autopar.pipeline.partition import find_units
    from autopar.pipeline.split import split_stages

    units = split_head(find_units(captured_mb.graph_module, captured_mb.param_names), captured_mb)
    if bounds and bounds[-1][1] != units.count:
        raise PlanError(
            f"the plan's stages cover {bounds[-1][1]} layer units but the model has "
            f"{units.count}; the plan was made for another model or batch"
        )
    return split_stages(captured_mb, units, bounds)


def pipeline_plan(
    ranked: Any,
    captured: Captured,
    captured_mb: Captured,
    cluster: Any,
    *,
    strategy: str = "auto",
    optimizer: str = "adamw",
    precision: str = "fp32",
    profile: Any = None,
) -> Plan:
    from autopar.pipeline.layers import sub_cluster
    from autopar.pipeline.plan3d import to_plan
    from autopar.pipeline.pricing import plan_for_pipeline
    from cost_models import CostModel

    best = ranked.best
    base = to_plan(ranked, captured, cluster)
    mesh = full_mesh(best.pp, best.dp, best.tp)
    sub = stage_mesh(mesh)
    split = stage_graphs(captured_mb, best.bounds)
    cm = CostModel(sub_cluster(cluster, best.dp * best.tp), sub, profile=profile)
    budgets: list[float] = []
    for st in split.stages:
        rank = st.index % best.pp
        held = best.peak_in_flight[rank] if best.peak_in_flight else 1
        i, j = best.bounds[st.index]
        act = sum(c.act_bytes for c in best.costs[i:j])
        budgets.append(max(ranked.budget - max(0, held - 1) * act, ranked.budget / 4))
    # stages whose graphs are the same up to names (the middle stages of a deep model)
    # are solved once: largest budget first; a plan that fits a smaller budget too is
    # optimal there as well (optimal on a superset of the plans that fit), so it is
    # renamed onto that stage instead of solving it again
    solved: dict[Any, list[tuple[Captured, Plan]]] = {}
    done_stages: list[Plan | None] = [None] * len(split.stages)
    for k in sorted(range(len(split.stages)), key=lambda k: -budgets[k]):
        st, budget = split.stages[k], budgets[k]
        sig = stage_signature(st.captured)
        plan = None
        for done, got in solved.get(sig, []):
            if got.predicted.solve_status in ("optimal", "trivial") and (
                    got.predicted.memory_per_device_bytes <= budget):  # fmt: skip
                plan = rename_plan(got, done, st.captured, budget)
                break
        if plan is None:  # priced for the whole step of microbatches, as the layers were
            plan, _ = plan_for_pipeline(st.captured, sub, cm, strategy, best.microbatches,
                                        budget=budget, optimizer=optimizer,
                                        precision=precision)  # fmt: skip
            solved.setdefault(sig, []).append((st.captured, plan))
        rank = st.index % best.pp
        done_stages[k] = dataclasses.replace(plan, source={"stage": st.index, "rank": rank},
                                             _index={})  # fmt: skip
    stages = [p for p in done_stages if p is not None]
    owner: dict[str, int] = {}  # node name -> the stage whose node the union keeps
    nodes, reshards = [], []
    for k, plan in enumerate(stages):
        for n in plan.nodes:
            if n.name not in owner:
                owner[n.name] = k
                nodes.append(n)
        # a reshard between two nodes the union keeps from this stage: one reading a
        # value another stage produced (its received copy) stays in that stage's plan
        reshards += [r for r in plan.reshards if owner[r.src] == k and owner[r.dst] == k]
    info = dict(base.pipeline or {}, mesh=dict(mesh.axes), submesh=sub.to_json())
    return dataclasses.replace(
        base, mesh=sub, nodes=tuple(nodes), reshards=_unique(reshards), pipeline=info,
        stages=tuple(stages), precision=precision, unknown_ops=tuple(sorted(
            {u for p in stages for u in p.unknown_ops})),
    )  # fmt: skip


def _unique(reshards: list[Any]) -> tuple[Any, ...]:
    out, keys = [], set()
    for r in reshards:
        key = (r.src, r.out_index, r.dst, r.slot)
        if key not in keys:
            keys.add(key)
            out.append(r)
    return tuple(out)


_NUMBER = re.compile(r"(?<=\.)(\d+)(?=\.|$)")


def _path_ranks(captured: Captured) -> dict[tuple[str, int], int]:
    """(prefix, index) -> the rank of ``index`` among the indices under ``prefix`` that
    this graph's module paths and parameter names use ("model.layers" 5..9 -> 0..4)."""
    found: dict[str, set[int]] = {}
    for node in captured.graph_module.graph.nodes:
        for path in (_module_path(node), str(node.target) if node.op == "get_attr" else ""):
            for m in _NUMBER.finditer(path):
                found.setdefault(path[: m.start()], set()).add(int(m.group(1)))
    return {(p, v): r for p, vs in found.items() for r, v in enumerate(sorted(vs))}


def _relative(path: str, ranks: dict[tuple[str, int], int]) -> str:
    return _NUMBER.sub(lambda m: f"#{ranks[(path[: m.start()], int(m.group(1)))]}", path)


def _module_path(node: Any) -> str:
    from autopar.solve.graph import module_path

    return module_path(node)


def _value_key(val: Any) -> Any:
    import torch

    if isinstance(val, torch.Tensor):
        return ("T", tuple(int(d) for d in val.shape), str(val.dtype), bool(val.requires_grad))
    if isinstance(val, (tuple, list)):
        return tuple(_value_key(v) for v in val)
    return repr(val)


def stage_signature(captured: Captured) -> tuple[Any, ...]:
    """What planning a stage graph depends on, with node names left out and layer
    indices made relative (ranked): two stages with equal signatures get the same plan
    up to names."""
    import torch.fx as fx

    ranks = _path_ranks(captured)
    params, buffers = set(captured.param_names), set(captured.buffer_names)
    index: dict[str, int] = {}
    sig: list[Any] = [captured.whole_outputs, captured.input_grads]
    for k, node in enumerate(captured.graph_module.graph.nodes):
        index[node.name] = k
        args = fx.node.map_arg((node.args, node.kwargs), lambda a: index[a.name])  # type: ignore[arg-type,return-value]
        if node.op == "get_attr":
            t = str(node.target)
            target: Any = ("param" if t in params else "buffer" if t in buffers else "attr",
                           _relative(t, ranks))  # fmt: skip
        elif node.op == "call_function":
            target = str(node.target)
        else:
            target = node.op
        sig.append((node.op, target, repr(args), _value_key(node.meta.get("val")),
                    _relative(_module_path(node), ranks)))  # fmt: skip
    return tuple(sig)


def rename_plan(plan: Plan, planned: Captured, other: Captured, budget: float) -> Plan:
    """``plan`` (made for the graph ``planned``) carried onto ``other``, a graph with the
    same ``stage_signature``: node names, parameter names and module paths mapped node
    by node in graph order; its prices stay (the graphs are the same up to names)."""
    a_nodes = list(planned.graph_module.graph.nodes)
    b_nodes = list(other.graph_module.graph.nodes)
    names = {a.name: b.name for a, b in zip(a_nodes, b_nodes, strict=True)}
    strs: dict[str, str] = {}
    for a, b in zip(a_nodes, b_nodes, strict=True):
        if a.op in ("get_attr", "placeholder"):
            strs[str(a.target)] = str(b.target)
        pa, pb = _module_path(a), _module_path(b)
        while pa and pb and pa not in strs:
            strs[pa] = pb
            pa, pb = pa.rpartition(".")[0], pb.rpartition(".")[0]

    def path(p: str) -> str:
        return strs.get(p, p)

    nodes = tuple(
        dataclasses.replace(n, name=names.get(n.name, n.name), module=path(n.module),
                            op=path(n.op) if n.kind in ("param", "buffer", "input") else n.op)
        for n in plan.nodes
    )  # fmt: skip
    reshards = tuple(
        dataclasses.replace(r, src=names.get(r.src, r.src), dst=names.get(r.dst, r.dst))
        for r in plan.reshards
    )
    recompute = tuple((path(p), mode) for p, mode in plan.recompute)
    predicted = dataclasses.replace(plan.predicted, memory_budget_bytes=int(budget))
    return dataclasses.replace(plan, nodes=nodes, reshards=reshards, recompute=recompute,
                               predicted=predicted, _index={})  # fmt: skip

"""Plans are untrusted data: the checks a plan passes before anything runs it.

Contract:
- ``_str``/``_int``/``_float``/``_list``/``_node``/``_reshard``: the strict field parsers
  ``Plan.from_json`` uses (a string, a whole number >= 0, a finite number >= 0, a list;
  the message names the field).
- ``check_fields(plan)`` (called by ``Plan.from_json``/``Plan.load``): the strategy, every
  node kind, kernel, collective kind, phase and axis is one autopar knows; node names are
  unique; leaves (inputs, parameters, buffers) have one output and no inputs; op nodes
  have one gradient layout per input; every reshard names existing nodes, slots and
  outputs, carries exactly the layouts those nodes have, and no edge is resharded twice.
  (Costs, counts and types are checked while parsing.) Every ``recompute`` entry names a
  layer once, with a mode of ``plan.RECOMPUTE_MODES``. Raises ``PlanError`` naming the
  node, reshard or layer and what it must be.
- ``check_against(plan, captured)``: the plan against a captured graph
  (``solve.graph.build_graph(captured, plan.mesh)``): the same node names, kinds and ops;
  every ``Shard`` dim within its tensor's rank; each node's (ins, outs, grads, kernel,
  regather) one of the strategies its op's rule allows; each node's kernel collectives and
  the set of reshards (with their collectives) exactly what those layouts imply; every
  recomputed layer one of the layer submodules the program has (``codegen.units.assign``). A
  tampered plan is refused with ``PlanError`` naming the node, before any step runs.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from autopar.placement import Layout, Shard, layout_str
from autopar.plan import RECOMPUTE_MODES, CollectivePlan, NodePlan, Plan, PlanError, ReshardPlan

NODE_KINDS = ("input", "param", "buffer", "op", "output")
COLLECTIVE_KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
PHASES = ("forward", "backward")
KERNELS = ("vocab_embedding", "sharded_cross_entropy")  # autopar.runtime.kernels
STRATEGIES = ("auto", "dp", "tp", "fsdp", "zero", "pp", "3d")
LEAVES = ("input", "param", "buffer")


# ---- parsing (used by Plan.from_json): strict types, finite non-negative numbers ----
def _str(x: Any, where: str) -> str:
    if not isinstance(x, str):
        raise PlanError(f"{where} must be a string, got {x!r}")
    return x


def _int(x: Any, where: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise PlanError(f"{where} must be a whole number >= 0, got {x!r}")
    return x


def _float(x: Any, where: str) -> float:
    """A cost or figure: finite and >= 0 (JSON lets NaN and Infinity through)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        raise PlanError(f"{where} must be a finite number >= 0, got {x!r}")
    return float(x)


def _list(x: Any, where: str) -> list[Any]:
    if not isinstance(x, list):
        raise PlanError(f"{where} must be a list, got {type(x).__name__}")
    return x


def _collective(c: Any, where: str) -> CollectivePlan:
    if not isinstance(c, dict):
        raise PlanError(f"{where}: a collective must be an object, got {c!r}")
    return CollectivePlan(_str(c["kind"], f"{where} kind"), _str(c["axis"], f"{where} axis"),
                          _int(c["nbytes"], f"{where} nbytes"), _str(c["phase"], f"{where} phase"))  # fmt: skip


def _node(n: Any, lay: Any) -> NodePlan:
    if not isinstance(n, dict):
        raise PlanError(f"each plan node must be an object, got {n!r}")
    w = f"node {n.get('name')!r}"
    kernel = n["kernel"]
    return NodePlan(
        _str(n["name"], f"{w} name"), _str(n["op"], f"{w} op"), _str(n["kind"], f"{w} kind"),
        _str(n["module"], f"{w} module"),
        tuple(lay(x, f"{w} ins") for x in _list(n["ins"], f"{w} ins")),
        tuple(lay(x, f"{w} outs") for x in _list(n["outs"], f"{w} outs")),
        tuple(lay(x, f"{w} grads") for x in _list(n["grads"], f"{w} grads")),
        None if kernel is None else _str(kernel, f"{w} kernel"),
        _float(n["compute_s"], f"{w} compute_s"),
        tuple(_collective(c, f"{w} collective") for c in _list(n.get("collectives", []), w)),
        bool(n.get("reshard_after_forward", False)),
    )  # fmt: skip


def _reshard(r: Any, lay: Any) -> ReshardPlan:
    if not isinstance(r, dict):
        raise PlanError(f"each reshard must be an object, got {r!r}")
    w = f"reshard {r.get('src')!r}->{r.get('dst')!r}"
    return ReshardPlan(
        _str(r["src"], f"{w} src"), _int(r["out_index"], f"{w} out_index"),
        _str(r["dst"], f"{w} dst"), _int(r["slot"], f"{w} slot"),
        lay(r["src_layout"], f"{w} src_layout"), lay(r["dst_layout"], f"{w} dst_layout"),
        lay(r["grad_layout"], f"{w} grad_layout"),
        tuple(_collective(c, f"{w} collective") for c in _list(r["collectives"], w)),
        _float(r["seconds"], f"{w} seconds"),
    )  # fmt: skip


def _recompute(x: Any) -> tuple[tuple[str, str], ...]:
    """[[layer path, mode], ...] -> the plan's ``recompute`` ("none" entries dropped)."""
    out = []
    for e in _list(x, "recompute"):
        if not isinstance(e, list) or len(e) != 2:
            raise PlanError(f"each recompute entry must be [layer path, mode], got {e!r}")
        path, mode = _str(e[0], "recompute layer"), _str(e[1], f"recompute mode of {e[0]!r}")
        _check_mode(path, mode)
        if mode != "none":
            out.append((path, mode))
    return tuple(out)


def _check_mode(path: str, mode: str) -> None:
    if mode not in RECOMPUTE_MODES:
        raise PlanError(
            f"layer {path!r} has recompute mode {mode!r}; the modes are "
            f"{', '.join(RECOMPUTE_MODES)}"
        )


def _check_recompute(plan: Plan) -> None:
    seen: set[str] = set()
    for path, mode in plan.recompute:
        _check_mode(path, mode)
        if path in seen:
            raise PlanError(f"layer {path!r} appears twice in recompute; list each layer once")
        seen.add(path)


def _lays(layouts: tuple[Layout, ...]) -> str:
    return " ".join(layout_str(x) for x in layouts) or "-"


def _where(n: NodePlan) -> str:
    return f"node {n.name!r} ({n.kind} {n.op}{', module ' + n.module if n.module else ''})"


def _check_collectives(colls: tuple[CollectivePlan, ...], axes: tuple[str, ...], w: str) -> None:
    for c in colls:
        if c.kind not in COLLECTIVE_KINDS:
            raise PlanError(
                f"{w} issues a collective of unknown kind {c.kind!r}; the kinds are "
                f"{', '.join(COLLECTIVE_KINDS)}"
            )
        if c.phase not in PHASES:
            raise PlanError(f"{w}: collective phase must be forward or backward, got {c.phase!r}")
        if c.axis not in axes:
            raise PlanError(
                f"{w} issues a collective on axis {c.axis!r}, which the mesh "
                f"({', '.join(axes)}) does not have"
            )


def check_fields(plan: Plan) -> None:
    axes = plan.mesh.names
    if plan.strategy not in STRATEGIES:
        raise PlanError(
            f"strategy {plan.strategy!r} is not known; it must be one of {', '.join(STRATEGIES)}"
        )
    counts = Counter(n.name for n in plan.nodes)
    dups = sorted(name for name, c in counts.items() if c > 1)
    if dups:
        raise PlanError(f"node names must be unique, but {', '.join(map(repr, dups[:5]))} repeat")
    for n in plan.nodes:
        w = _where(n)
        if n.kind not in NODE_KINDS:
            raise PlanError(f"{w} has unknown kind {n.kind!r}; kinds are {', '.join(NODE_KINDS)}")
        if n.kernel is not None and n.kernel not in KERNELS:
            raise PlanError(
                f"{w} names kernel {n.kernel!r}, which autopar does not have; kernels are "
                f"{', '.join(KERNELS)} or null"
            )
        if n.kind in LEAVES and (n.ins or n.grads or len(n.outs) != 1):
            raise PlanError(f"{w} must have no inputs and exactly one output layout")
        if n.kind == "output" and n.outs:
            raise PlanError(f"{w}: the output sink has no output layouts")
        if n.kind in ("op", "output") and len(n.grads) != len(n.ins):
            raise PlanError(
                f"{w} has {len(n.ins)} input layouts but {len(n.grads)} gradient layouts; "
                "it needs one gradient layout per input"
            )
        _check_collectives(n.collectives, axes, w)
    _check_reshards(plan)
    _check_recompute(plan)


def _check_reshards(plan: Plan) -> None:
    by = {n.name: n for n in plan.nodes}
    seen: set[tuple[str, int, str, int]] = set()
    for r in plan.reshards:
        w = f"reshard {r.src!r}[{r.out_index}] -> {r.dst!r}[{r.slot}]"
        if r.src not in by or r.dst not in by:
            raise PlanError(f"{w} names a node the plan does not have")
        src, dst = by[r.src], by[r.dst]
        if r.out_index >= len(src.outs) or r.slot >= len(dst.ins):
            raise PlanError(
                f"{w}: {r.src!r} has {len(src.outs)} outputs and {r.dst!r} {len(dst.ins)} inputs"
            )
        key = (r.src, r.out_index, r.dst, r.slot)
        if key in seen:
            raise PlanError(f"{w} appears twice; each edge is resharded at most once")
        seen.add(key)
        have = (src.outs[r.out_index], dst.ins[r.slot], dst.grads[r.slot])
        if (r.src_layout, r.dst_layout, r.grad_layout) != have:
            raise PlanError(
                f"{w} moves {layout_str(r.src_layout)} -> {layout_str(r.dst_layout)} (gradient "
                f"{layout_str(r.grad_layout)}), but node {r.dst!r} reads "
                f"{layout_str(have[1])} (gradient {layout_str(have[2])}) from {r.src!r}, which "
                f"produces {layout_str(have[0])}; the reshard and its nodes must agree"
            )
        _check_collectives(r.collectives, plan.mesh.names, w)


def _refuse(n: NodePlan, what: str) -> PlanError:
    return PlanError(
        f"the plan was refused at {_where(n)}: {what}. The plan was edited, or made for "
        "another model, batch shape or autopar version; re-create it with `autopar plan "
        "MODEL --json PATH` (or let autopar.compile plan) instead of editing it by hand"
    )


def _dims_within_rank(n: NodePlan, ins: list[Any], outs: tuple[Any, ...]) -> None:
    for label, layouts, metas in (("input", n.ins, ins), ("output", n.outs, outs),
                                  ("gradient", n.grads, ins)):  # fmt: skip
        for i, (lay, meta) in enumerate(zip(layouts, metas)):
            for p in lay:
                if isinstance(p, Shard) and (meta is None or p.dim >= meta.ndim):
                    rank = "no tensor" if meta is None else f"a {meta.ndim}-d tensor"
                    raise _refuse(n, f"its {label} {i} is {layout_str(lay)}, sharding dim "
                                     f"{p.dim} of {rank} {tuple(meta.shape) if meta else ''}")  # fmt: skip


def check_against(plan: Plan, captured: Any) -> None:
    """Refuse ``plan`` unless it is one the planner could have made for ``captured``."""
    from autopar.solve.graph import build_graph

    if plan.pipeline:
        raise PlanError(
            "this is a pipeline plan (one stage's placements); it can be checked against a "
            "captured graph only stage by stage. Plan pipelines with autopar.compile(mesh=... "
            "with a pp axis) or `autopar plan --strategy pp`"
        )
    from autopar.solve.autocast import with_precision

    # priced as the program runs: bf16-mixed values have their autocast dtypes
    graph = build_graph(with_precision(captured, plan.precision), plan.mesh)
    names = {n.name for n in plan.nodes}
    missing = [n for n in graph.nodes if n not in names]
    extra = [n for n in names if n not in graph.nodes]
    if missing or extra:
        raise PlanError(
            f"the plan does not match this model: {len(missing)} of the model's nodes are not "
            f"in the plan (e.g. {', '.join(missing[:3]) or '-'}) and {len(extra)} plan nodes are "
            f"not in the model (e.g. {', '.join(sorted(extra)[:3]) or '-'}); plan this model "
            "(autopar.compile without plan=, or `autopar plan MODEL --json PATH`)"
        )
    chosen = {}
    for n in plan.nodes:
        g = graph.nodes[n.name]
        if n.kind != g.kind or (g.kind != "output" and n.op != g.target):
            raise _refuse(n, f"the model's node {n.name!r} is {g.kind} {g.target}")
        ins = [graph.nodes[p].out_metas[i] if p in graph.nodes else None for p, i in g.inputs]
        _dims_within_rank(n, ins, g.out_metas)
        key = (n.ins, n.outs, n.grads, n.kernel, n.reshard_after_forward)
        match = [s for s in g.strategies if (s.ins, s.outs, s.grads, s.kernel, s.regather) == key]
        if not match:
            some = ", ".join(sorted({_lays(s.outs) for s in g.strategies})[:6])
            raise _refuse(n, f"in {_lays(n.ins)} -> out {_lays(n.outs)} (gradients "
                             f"{_lays(n.grads)}, kernel {n.kernel}) is not a placement the rule "
                             f"for {g.target} allows on mesh {plan.mesh} (allowed outputs: {some})")  # fmt: skip
        chosen[n.name] = match[0]
        _same_inside(n, match[0], plan.mesh.names)
    _same_reshards(plan, graph, chosen)
    _same_layers(plan, captured)


def _same_layers(plan: Plan, captured: Any) -> None:
    """Recomputed layers are layer submodules of this model's program."""
    if not plan.recompute:
        return
    from autopar.codegen.units import assign

    where, _ = assign(captured)
    layers = sorted({p for p in where.values() if p})
    for path, _mode in plan.recompute:
        if path not in layers:
            raise PlanError(
                f"the plan recomputes layer {path!r}, which this model's program does not "
                f"have (its layers: {', '.join(layers[:4]) or 'none'}"
                f"{', ...' if len(layers) > 4 else ''}); plan this model instead of editing "
                "the plan by hand"
            )


def _same_inside(n: NodePlan, s: Any, names: tuple[str, ...]) -> None:
    from autopar.cost import kernel_collectives

    want = [(c.kind, names[c.axis], c.nbytes, "forward") for c in kernel_collectives(s)]
    have = [(c.kind, c.axis, c.nbytes, c.phase) for c in n.collectives]
    if want != have:
        raise _refuse(n, f"it lists the collectives {have} inside its kernel, but its "
                         f"placement issues {want}")  # fmt: skip


def _same_reshards(plan: Plan, graph: Any, chosen: dict[str, Any]) -> None:
    """The reshards the chosen layouts imply (as ``solve.planner`` expands them)."""
    from autopar.solve.planner import Pricing
    from cost_models import CostModel

    names = plan.mesh.names
    ctx = Pricing.of(graph, CostModel.default_for(plan.mesh), plan.predicted.optimizer,
                     plan.precision)  # fmt: skip
    want = {}
    for e in graph.edges:
        src, s_src, s_dst = graph.nodes[e.src], chosen[e.src], chosen[e.dst]
        fwd, bwd, _ = ctx.edge(src, s_src, e.out_index, e.dst, e.slot, s_dst)
        if not fwd and not bwd and s_src.outs[e.out_index] == s_dst.ins[e.slot]:
            continue
        want[(e.src, e.out_index, e.dst, e.slot)] = [
            *((c.kind, names[c.axis], c.nbytes, "forward") for c in fwd),
            *((c.kind, names[c.axis], c.nbytes, "backward") for c in bwd),
        ]
    have = {(r.src, r.out_index, r.dst, r.slot): [(c.kind, c.axis, c.nbytes, c.phase)
                                                   for c in r.collectives] for r in plan.reshards}  # fmt: skip
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            src, idx, dst, slot = key
            said = "no reshard" if key not in have else f"collectives {have[key]}"
            needs = "none" if key not in want else f"{want[key]}"
            raise _refuse(plan.node(dst), f"the edge from {src!r}[{idx}] into its input {slot} "
                                          f"lists {said}, but its layouts need {needs}")  # fmt: skip

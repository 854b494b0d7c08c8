"""``autopar explain PLAN.json [--node NAME]``: why the plan looks the way it does.

Contract: without ``--node`` prints every op node's chosen placement with its compute
seconds, the collectives issued inside it and the seconds of the reshards into it
(``--top N``: only the N costliest). With ``--node NAME`` rebuilds the model on the meta
device (``planning.rebuild``: the plan's ``source.model`` only when it is a bundled model;
a user's file only when given with ``--model``, so no plan makes autopar run code), checks
the plan against it, and re-prices every placement the node could have taken
against its neighbours' chosen placements: compute + reshards in + reshards out, the
chosen one first, each alternative with how much it loses and on what (or that the
strategy preset excluded it). An unreadable, invalid or tampered plan, or an unknown
node, exits 2.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from autopar.cli.common import EXIT_CODES, count
from autopar.placement import layout_str
from autopar.plan import NodePlan, Plan

EXAMPLES = """examples:
  autopar plan gpt2-tiny --cluster cpu:2 --json plan.json
  autopar explain plan.json --top 20
  autopar explain plan.json --node addmm"""


def _lays(layouts: tuple[Any, ...]) -> str:
    return " ".join(layout_str(x) for x in layouts) or "-"


def node_table(plan: Plan) -> list[tuple[NodePlan, float, float]]:
    """(node, seconds of reshards into it, seconds of collectives it issues inside)."""
    into: dict[str, float] = defaultdict(float)
    for r in plan.reshards:
        into[r.dst] += r.seconds
    return [(n, into[n.name], 0.0) for n in plan.nodes if n.kind == "op"]


def explain_all(plan: Plan, top: int | None) -> None:
    from rich.table import Table

    from autopar.cli.plan import _console
    from autopar.viz.style import fmt_s

    rows = node_table(plan)
    if top:
        rows = sorted(rows, key=lambda r: -(r[0].compute_s + r[1]))[:top]
    stage: dict[str, int] = {}  # a pipeline plan: the first stage running each node
    for k, st in enumerate(plan.stages):
        for sn in st.nodes:
            stage.setdefault(sn.name, k)
    where = (f"{len(plan.stages)} pipeline stages ({(plan.pipeline or {}).get('schedule', '-')}), "
             f"each on mesh {plan.mesh}" if plan.stages else f"mesh {plan.mesh}")  # fmt: skip
    t = Table(title=f"nodes of the plan ({where}); reshards are priced where they land",
              title_justify="left")  # fmt: skip
    cols: tuple[str, ...] = ("node", "op", "module", "in", "out", "compute", "reshards in",
                             "inside")  # fmt: skip
    if plan.stages:
        cols = ("stage", *cols)
    for col in cols:
        t.add_column(
            col, overflow="fold", justify="right" if col in ("compute", "reshards in") else "left"
        )
    for n, reshard_s, _ in rows:
        inside = ", ".join(f"{c.kind}@{c.axis}" for c in n.collectives) or ""
        cells = [n.name, n.op, n.module or "<top>", _lays(n.ins), _lays(n.outs), fmt_s(n.compute_s),
                 fmt_s(reshard_s) if reshard_s else "", inside]  # fmt: skip
        if plan.stages:
            cells.insert(0, str(stage.get(n.name, "-")))
        t.add_row(*cells)
    _console().print(t)


def alternatives(plan: Plan, name: str, model: str | None = None) -> list[dict[str, Any]]:
    """Every strategy of node ``name`` priced against its neighbours' chosen layouts
    (the model rebuilt by ``planning.rebuild``: a bundled one, or ``model``)."""
    from autopar.cost import collective_seconds
    from autopar.planning.session import rebuild
    from autopar.solve.graph import build_graph
    from autopar.solve.planner import Pricing
    from autopar.solve.presets import restrict

    stage = stage_of(plan, name)
    if stage is not None:  # a pipeline plan: the node's stage graph and that stage's plan
        captured, cm = rebuild_stage(plan, stage, model)
        plan = plan.stages[stage]
    else:
        captured, cm = rebuild(plan, model)
    graph = build_graph(captured, plan.mesh)
    if name not in graph.nodes:
        raise ValueError(
            f"the rebuilt model has no node {name!r}; the model changed since the plan was made"
        )
    allowed = build_graph(captured, plan.mesh)
    try:
        restrict(allowed, plan.strategy)
        kept = {(s.ins, s.outs, s.grads, s.regather) for s in allowed.nodes[name].strategies}
    except ValueError:
        kept = {(s.ins, s.outs, s.grads, s.regather) for s in graph.nodes[name].strategies}
    node = graph.nodes[name]
    pricing = Pricing.of(graph, cm, plan.predicted.optimizer)

    def price(groups: tuple[list[Any], ...]) -> float:
        return sum(collective_seconds(cm, c) for g in groups for c in g)

    def as_planned(nname: str) -> Any:
        """The strategy the plan chose for a neighbour."""
        p = plan.node(nname)
        options = graph.nodes[nname].strategies
        key = (p.ins, p.outs, p.grads)
        exact = [s for s in options if (s.ins, s.outs, s.grads) == key
                 and s.regather == p.reshard_after_forward]  # fmt: skip
        return (exact or [s for s in options if (s.ins, s.outs, s.grads) == key] or options)[0]

    chosen = plan.node(name)
    out = []
    for s in node.strategies:
        compute = pricing.compute(node, s) + pricing.kernel_seconds(s)
        r_in = r_out = 0.0
        for e in graph.edges:
            if e.dst == name and e.src in graph.nodes:
                src = graph.nodes[e.src]
                r_in += price(
                    pricing.edge(src, as_planned(e.src), e.out_index, name, e.slot, s)[:2]
                )
            elif e.src == name:
                r_out += price(
                    pricing.edge(node, s, e.out_index, e.dst, e.slot, as_planned(e.dst))[:2]
                )
        out.append({
            "ins": s.ins, "outs": s.outs, "grads": s.grads, "kernel": s.kernel, "compute_s": compute,
            "reshard_in_s": r_in, "reshard_out_s": r_out, "total_s": compute + r_in + r_out,
            "memory_bytes": pricing.memory(node, s).total, "regather": s.regather,
            "chosen": (s.ins, s.outs, s.grads) == (chosen.ins, chosen.outs, chosen.grads)
            and s.regather == chosen.reshard_after_forward,
            "allowed": (s.ins, s.outs, s.grads, s.regather) in kept,
        })  # fmt: skip
    return sorted(out, key=lambda a: (not a["chosen"], a["total_s"]))


def stage_of(plan: Plan, name: str) -> int | None:
    """The first pipeline stage whose plan has node ``name`` (None: no stages)."""
    for k, st in enumerate(plan.stages):
        if any(n.name == name for n in st.nodes):
            return k
    return None


def rebuild_stage(plan: Plan, stage: int, model: str | None = None) -> tuple[Any, Any]:
    """(stage graph, cost model of the stage's devices) for stage ``stage`` of a pipeline
    plan: the model rebuilt like ``planning.rebuild`` does (a bundled one, or ``model``),
    captured at the microbatch, cut at the plan's stage bounds, checked against that
    stage's plan."""
    from autopar import zoo
    from autopar.pipeline.layers import sub_cluster
    from autopar.pipeline.rebatch import batch_of, rebatch
    from autopar.plan_check import check_against
    from autopar.planning.pipeline import stage_graphs
    from autopar.planning.session import _source_size, capture_model, cluster_of, load_profile
    from cost_models import CostModel

    src, info = plan.source, plan.pipeline or {}
    spec = model or src.get("model")
    if not spec or not isinstance(spec, str):
        raise ValueError(
            "this plan does not record how it was made (no source.model); pass the model "
            "with --model NAME_OR_FILE.py:fn"
        )
    if model is None and spec not in zoo.names():
        raise ValueError(
            f"the plan names the model {spec!r}, which is not a bundled model; autopar does "
            "not import or run code because a plan file names it. If you trust that file, "
            f"pass it yourself: --model {spec}"
        )
    try:
        stages = info["stages"]
        bounds = tuple((int(st["units"][0]), int(st["units"][1])) for st in stages)
        micro = int(info["microbatches"])
        dp_tp = int(plan.stages[stage].mesh.num_devices)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ValueError(
            f"the plan's pipeline record is incomplete ({type(err).__name__}: {err}); "
            "re-create the plan with `autopar plan MODEL --json PATH`"
        ) from None
    batch, seq = _source_size(src, "batch_size"), _source_size(src, "seq_len")
    precision = (
        src.get("precision") if src.get("precision") in ("fp32", "bf16-mixed", "bf16") else None
    )
    mb = max(1, (batch or micro) // micro)
    captured = capture_model(spec, mb, seq, precision)
    if batch_of(captured) != mb:  # a user's builder takes no batch size: re-batch its graph
        captured = rebatch(captured, mb)
    split = stage_graphs(captured, bounds)
    st = split.stages[stage].captured
    check_against(plan.stages[stage], st)
    cluster = src.get("cluster") if isinstance(src.get("cluster"), str) else plan.cluster
    profile = src.get("profile") if isinstance(src.get("profile"), str) else None
    full = cluster_of(cluster)
    cm = CostModel(sub_cluster(full, dp_tp), plan.stages[stage].mesh, profile=load_profile(profile))
    return st, cm


def explain_node(plan: Plan, name: str, model: str | None = None) -> None:
    from rich.table import Table

    from autopar.cli.plan import _console
    from autopar.viz.style import fmt_s

    try:
        n = plan.node(name)
    except KeyError:
        near = [x.name for x in plan.nodes if name in x.name][:8]
        raise ValueError(
            f"the plan has no node {name!r}; run `autopar explain PLAN` to list nodes"
            + (f" (similar: {', '.join(near)})" if near else "")
        ) from None
    alts = alternatives(plan, name, model)
    base = next((a for a in alts if a["chosen"]), alts[0])
    stage = stage_of(plan, name)
    where = f", pipeline stage {stage} on {plan.stages[stage].mesh}" if stage is not None else ""
    t = Table(title=f"{name} ({n.op}, module {n.module or '<top>'}{where}): every placement, "
                    "priced against its neighbours' choices", title_justify="left")  # fmt: skip
    for col in (
        "",
        "in",
        "out",
        "grad in",
        "compute",
        "reshards in",
        "reshards out",
        "total",
        "memory",
        "why not",
    ):
        t.add_column(
            col,
            justify="right"
            if col in ("compute", "reshards in", "reshards out", "total", "memory")
            else "left",
        )
    for a in alts:
        if a["chosen"]:
            why = "chosen"
        elif not a["allowed"]:
            why = f"excluded by strategy {plan.strategy!r}"
        else:
            parts = [(k, a[k] - base[k]) for k in ("compute_s", "reshard_in_s", "reshard_out_s")]
            worst = max(parts, key=lambda p: p[1])
            label = {
                "compute_s": "compute",
                "reshard_in_s": "reshards in",
                "reshard_out_s": "reshards out",
            }
            delta = a["total_s"] - base["total_s"]
            more = a["memory_bytes"] - base["memory_bytes"]
            if delta > 0:
                why = f"+{fmt_s(delta)}, mostly {label[worst[0]]} (+{fmt_s(worst[1])})"
            elif more > 0 and plan.predicted.memory_budget_bytes:
                why = f"as fast or faster here, but +{more / 2**20:,.1f} MiB per device (budget)"
            else:
                why = (
                    "no worse here; loses elsewhere (tie-break, shared layer or the overlap budget)"
                )
        if a.get("regather") and any(str(p) != "R" for lay in a["outs"] for p in lay):
            why += "  [FSDP: gathered again in backward]"
        t.add_row("*" if a["chosen"] else "", _lays(a["ins"]), _lays(a["outs"]), _lays(a["grads"]),
                  fmt_s(a["compute_s"]), fmt_s(a["reshard_in_s"]), fmt_s(a["reshard_out_s"]),
                  fmt_s(a["total_s"]), f"{a['memory_bytes'] / 2**20:,.1f} MiB", why)  # fmt: skip
    _console().print(t)


def cmd_explain(args: argparse.Namespace) -> int:
    if args.model and not args.node:
        raise ValueError(
            f"--model {args.model} is only used with --node (to rebuild the model and price "
            "that node's alternatives); add --node NAME or drop --model"
        )
    plan = Plan.load(args.plan)
    if args.node:
        explain_node(plan, args.node, args.model)
    else:
        explain_all(plan, args.top)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "explain", help="each node's placement and costs; why alternatives lost",
        description="Explain a saved plan: placements and costs per node, or one node's alternatives.",
        epilog=f"{EXAMPLES}\n{EXIT_CODES}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("plan", help="a plan JSON written by `autopar plan --json`")
    p.add_argument("--node", help="explain this node: price every placement it could take")
    p.add_argument("--top", type=count("--top"), help="only the N costliest nodes")
    p.add_argument("--model", metavar="NAME_OR_FILE.py:fn",
                   help="with --node: rebuild this model (default: the plan's, when it is "
                   "a bundled model; a file a plan names is never run)")  # fmt: skip
    p.set_defaults(fn=cmd_explain)

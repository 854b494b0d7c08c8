"""The plan as a graphviz graph a person can read at a glance.

Contract: ``plan_graph(plan, edges=None, title="")`` returns a ``graphviz.Digraph``:
- one box per module (ops grouped by ``NodePlan.module``, parameters by their owner
  module), labelled with its output layout and its parameters' layouts, one colored cell
  per mesh axis (colors from ``viz.style``), its compute time and the collectives it
  issues inside (gradient reductions, kernel collectives);
- repeated layers (``prefix.<i>``) whose boxes, layouts and collectives are identical
  collapse into one cluster labelled ``prefix.0..11 ×12``; figures in it are per layer;
- edges follow the data flow (``edges``: plan-node name pairs, from
  ``dataflow_edges(graph_module)``; without them, boxes are chained in execution order);
  an edge where a reshard inserts collectives is red and labelled with them and their cost;
- when ``plan.pipeline`` names stages, each stage is a band around its layers.
Pure: it reads the plan, renders nothing (``viz.style.render`` does).
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import graphviz

from autopar.placement import Layout
from autopar.plan import CollectivePlan, NodePlan, Plan, ReshardPlan
from autopar.viz.pipeline import stage_of_module
from autopar.viz.style import FONT, PLACEMENT_COLORS, esc, fmt_s, placement_color


@dataclass
class Box:
    key: str
    order: int
    layer: tuple[str, int] | None
    rel: str
    ops: list[NodePlan] = field(default_factory=list)
    params: list[NodePlan] = field(default_factory=list)
    inside: list[tuple[CollectivePlan, float]] = field(default_factory=list)
    stage: int = 0

    @property
    def out(self) -> Layout | None:
        return self.ops[-1].outs[0] if self.ops and self.ops[-1].outs else None

    def signature(self) -> tuple[Any, ...]:
        return (
            self.rel, self.stage, _lay(self.out),
            tuple((p.module.rsplit(".", 1)[-1], _lay(p.outs[0])) for p in self.params),
            tuple(sorted(f"{c.kind}@{c.axis}/{c.phase}" for c, _ in self.inside)),
        )  # fmt: skip


def _lay(layout: Layout | None) -> str:
    return "" if layout is None else "".join(str(p) for p in layout)


def box_key(node: NodePlan) -> str:
    if node.kind in ("param", "buffer"):
        return node.module.rsplit(".", 1)[0] if "." in node.module else "model (top-level ops)"
    if node.kind == "input":
        return "inputs"
    if node.kind == "output":
        return "outputs"
    return node.module or "model (top-level ops)"


def split_layer(key: str) -> tuple[tuple[str, int] | None, str]:
    parts = key.split(".")
    for i, p in enumerate(parts):
        if p.isdigit() and i > 0:
            return (".".join(parts[:i]), int(p)), ".".join(parts[i + 1 :])
    return None, key


def dataflow_edges(graph_module: Any) -> list[tuple[str, str]]:
    """(producer, consumer) plan-node names of a captured fx graph (getitem folded)."""
    alias: dict[str, str] = {}
    edges = []
    for n in graph_module.graph.nodes:
        srcs = [alias.get(a.name, a.name) for a in n.all_input_nodes]
        if n.op == "call_function" and n.target is operator.getitem:
            alias[n.name] = srcs[0]
            continue
        edges += [(s, n.name) for s in srcs]
    return edges


def _boxes(plan: Plan) -> dict[str, Box]:
    boxes: dict[str, Box] = {}
    for i, n in enumerate(plan.nodes):
        key = box_key(n)
        if key not in boxes:
            layer, rel = split_layer(key)
            stage = stage_of_module(plan.pipeline, key)
            boxes[key] = Box(key, i, layer, rel, stage=stage)
        box = boxes[key]
        if n.kind in ("param", "buffer"):
            if n.kind == "param":
                box.params.append(n)
        else:
            if not box.ops:  # a box sits where its first op runs
                box.order = i
            box.ops.append(n)
            box.inside += [(c, 0.0) for c in n.collectives]
    stage = 0
    for b in sorted(boxes.values(), key=lambda b: b.order):  # unnamed modules join the stage before
        stage = b.stage = b.stage if b.stage >= 0 else stage
    return boxes


def _runs(boxes: dict[str, Box]) -> dict[tuple[str, int], tuple[int, int]]:
    """layer -> (first index, count) of the run of identical layers it belongs to."""
    by_layer: dict[tuple[str, int], list[Box]] = defaultdict(list)
    for b in sorted(boxes.values(), key=lambda b: b.order):
        if b.layer is not None:
            by_layer[b.layer].append(b)
    sig = {k: tuple(b.signature() for b in v) for k, v in by_layer.items()}
    runs: dict[tuple[str, int], tuple[int, int]] = {}
    for layer in sorted(sig):
        prefix, idx = layer
        prev = (prefix, idx - 1)
        if prev in runs and sig[prev] == sig[layer]:
            first, count = runs[prev]
            for j in range(first, idx):
                runs[(prefix, j)] = (first, count + 1)
            runs[layer] = (first, count + 1)
        else:
            runs[layer] = (idx, 1)
    return runs


def _rep(box: Box, runs: dict[tuple[str, int], tuple[int, int]]) -> str:
    if box.layer is None:
        return box.key
    prefix, _ = box.layer
    first = runs[box.layer][0]
    return f"{prefix}.{first}" + (f".{box.rel}" if box.rel else "")


def _cells(layout: Layout | None, names: tuple[str, ...]) -> str:
    if layout is None:
        return "".join('<TD BGCOLOR="#ffffff"> </TD>' for _ in names)
    return "".join(f'<TD BGCOLOR="{placement_color(str(p))}">{esc(str(p))}</TD>' for p in layout)


def _coll_text(items: list[tuple[CollectivePlan, float]]) -> str:
    count: dict[str, int] = defaultdict(int)
    for c, _ in items:
        mark = "" if c.phase == "forward" else " (bwd)"
        count[f"{c.kind}@{c.axis}{mark}"] += 1
    return ", ".join(f"{k}" + (f" ×{v}" if v > 1 else "") for k, v in sorted(count.items()))


def _label(box: Box, names: tuple[str, ...], inside_s: float) -> str:
    k = len(names)
    title = box.rel or (
        box.key if box.layer is None else f"{box.layer[0].rsplit('.', 1)[-1]} (own ops)"
    )
    compute = sum(n.compute_s for n in box.ops)
    sub = f"{len(box.ops)} ops · {fmt_s(compute)}" if box.ops else "parameters"
    rows = [
        f'<TR><TD COLSPAN="{k + 1}" BGCOLOR="#ffffff"><B>{esc(title)}</B><BR/>'
        f'<FONT POINT-SIZE="9">{sub}</FONT></TD></TR>'
    ]
    if box.ops and box.out is not None and box.key != "outputs":
        rows.append(
            f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="10">out</FONT></TD>{_cells(box.out, names)}</TR>'
        )
    for p in box.params[:3]:
        short = p.module.rsplit(".", 1)[-1]
        rows.append(
            f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="10">{esc(short)}</FONT></TD>{_cells(p.outs[0], names)}</TR>'
        )
    if len(box.params) > 3:
        rows.append(
            f'<TR><TD COLSPAN="{k + 1}"><FONT POINT-SIZE="9">+{len(box.params) - 3} parameters</FONT></TD></TR>'
        )
    if box.inside:
        cost = f" · {fmt_s(inside_s)}" if inside_s > 0 else ""
        rows.append(
            f'<TR><TD COLSPAN="{k + 1}" BGCOLOR="#fff5f0"><FONT POINT-SIZE="9" COLOR="#a50f15">'
            f"{esc(_coll_text(box.inside))}{cost}</FONT></TD></TR>"
        )
    return (
        '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3">'
        + "".join(rows)
        + "</TABLE>>"
    )


def legend(names: tuple[str, ...], title: str) -> str:
    keys = [("R", "replicated"), ("S(0)", "split dim 0"), ("S(1)", "split dim 1"),
            ("S(2)", "split dim 2"), ("P", "partial sum")]  # fmt: skip
    cells = "".join(
        f'<TD BGCOLOR="{PLACEMENT_COLORS[k]}"> {esc(k)} </TD><TD ALIGN="LEFT">{esc(v)}  </TD>'
        for k, v in keys
    )
    axes = (
        f"one cell per mesh axis ({', '.join(names)}); red edges insert collectives (cost per step)"
    )
    return (
        '<<TABLE BORDER="0" CELLSPACING="2"><TR><TD ALIGN="LEFT" COLSPAN="10"><FONT POINT-SIZE="16"><B>'
        f"{esc(title)}</B></FONT></TD></TR><TR>{cells}</TR>"
        f'<TR><TD ALIGN="LEFT" COLSPAN="10"><FONT POINT-SIZE="10">{esc(axes)}</FONT></TD></TR></TABLE>>'
    )


def _edge_label(rs: list[ReshardPlan]) -> tuple[str, float]:
    seconds = sum(r.seconds for r in rs)
    items = [(c, 0.0) for r in rs for c in r.collectives]
    return _coll_text(items), seconds


def plan_graph(
    plan: Plan, edges: list[tuple[str, str]] | None = None, title: str = ""
) -> graphviz.Digraph:
    names = plan.mesh.names
    boxes = _boxes(plan)
    of_node = {n.name: box_key(n) for n in plan.nodes}
    # collectives between nodes of one box (e.g. a parameter's gradient all-reduce) stay inside
    between: dict[tuple[str, str], list[ReshardPlan]] = defaultdict(list)
    inside_s: dict[str, float] = defaultdict(float)
    for r in plan.reshards:
        a, b = of_node[r.src], of_node[r.dst]
        if not r.collectives:
            continue
        if a == b:
            boxes[a].inside += [(c, r.seconds / len(r.collectives)) for c in r.collectives]
            inside_s[a] += r.seconds
        else:
            between[(a, b)].append(r)
    runs = _runs(boxes)
    rep = {k: _rep(b, runs) for k, b in boxes.items()}
    ordered = sorted(boxes.values(), key=lambda b: b.order)
    if edges is None:
        pairs = [(x.key, y.key) for x, y in zip(ordered, ordered[1:])]
    else:
        pairs = [(of_node[s], of_node[d]) for s, d in edges if s in of_node and d in of_node]
    pairs += list(between)
    g = graphviz.Digraph("plan", engine="dot")
    g.attr(rankdir="TB", nodesep="0.25", ranksep="0.3", fontname=FONT, labelloc="t",
           labeljust="l", label=legend(names, title or f"autopar plan · mesh {plan.mesh}"))  # fmt: skip
    g.attr("node", shape="plain", fontname=FONT, fontsize="11")
    g.attr("edge", fontname=FONT, fontsize="9", color="#777777", arrowsize="0.6")
    clusters: dict[Any, list[Box]] = defaultdict(list)
    for box in ordered:
        if rep[box.key] == box.key:
            clusters[(box.stage, box.layer)].append(box)
    stages = sorted({s for s, _ in clusters})
    for stage in stages:
        outer = graphviz.Digraph(f"cluster_stage{stage}") if len(stages) > 1 else g
        if len(stages) > 1:
            outer.attr(
                label=f"pipeline stage {stage}",
                style="filled",
                fillcolor="#f7fbff" if stage % 2 == 0 else "#fff7ec",
                color="#bbbbbb",
                fontsize="14",
            )
        for (s, layer), members in clusters.items():
            if s != stage:
                continue
            target = outer
            if layer is not None:
                first, count = runs[layer]
                target = graphviz.Digraph(f"cluster_{layer[0]}_{first}_{stage}")
                name = f"{layer[0]}.{first}" + (
                    f"..{first + count - 1}  ×{count}  (figures per layer)" if count > 1 else ""
                )
                target.attr(
                    label=name,
                    style="rounded,filled",
                    fillcolor="#fafafa",
                    color="#999999",
                    fontsize="12",
                )
            for box in members:
                target.node(rep[box.key], _label(box, names, inside_s[box.key]))
            if target is not outer:
                outer.subgraph(target)
        if outer is not g:
            g.subgraph(outer)
    seen: dict[tuple[str, str], list[ReshardPlan]] = {}
    for a, b in pairs:
        ra, rb = rep[a], rep[b]
        la, lb = boxes[a].layer, boxes[b].layer
        if ra == rb or (la and lb and la != lb and la[0] == lb[0] and runs[la] == runs[lb]):
            continue
        if (ra, rb) not in seen or (not seen[(ra, rb)] and between.get((a, b))):
            seen[(ra, rb)] = between.get((a, b), [])
    order = {rep[k]: b.order for k, b in boxes.items() if rep[k] == k}
    for (ra, rb), rs in seen.items():
        # an edge against execution order (a loop back to shared glue) must not reorder ranks
        back = {"constraint": "false", "style": "dashed"} if order[ra] > order[rb] else {}
        if rs:
            text, secs = _edge_label(rs)
            g.edge(
                ra,
                rb,
                label=f" {text}\n {fmt_s(secs)}",
                color="#cb181d",
                fontcolor="#a50f15",
                penwidth="1.6",
                **back,
            )
        else:
            g.edge(ra, rb, **back)
    return g

"""Pictures of a plan: the graph, the pipeline schedule and memory against the budget.

Contract: ``write_pictures(plan, path, edges=None, title="")`` writes by suffix:
- ``.svg`` / ``.png``: the graph at ``path``, the schedule at ``<stem>.schedule<ext>``
  and the memory bars at ``<stem>.memory<ext>``;
- ``.html``: one page with all three inline (SVG) and the plan's headline figures.
It returns the paths written. Any other suffix, or graphviz missing, raises ValueError
saying what to pass. ``edges`` are (producer, consumer) plan-node names
(``dataflow_edges(captured.graph_module)``); without them boxes are chained in order.
"""

from __future__ import annotations

import html
from pathlib import Path

from autopar.plan import Plan
from autopar.viz.charts import memory_bars, timeline
from autopar.viz.graph import dataflow_edges, plan_graph
from autopar.viz.style import fmt_bytes, fmt_s, render

SUFFIXES = (".svg", ".png", ".html")

__all__ = ["SUFFIXES", "dataflow_edges", "headline", "write_pictures"]


def headline(plan: Plan) -> list[tuple[str, str]]:
    """(name, value) pairs of the figures a reader wants first."""
    p = plan.predicted
    step = float(getattr(p, "step_time_s", getattr(p, "step_s", 0.0)))
    rows = [("mesh", str(plan.mesh)), ("strategy", plan.strategy), ("cluster", plan.cluster),
            ("predicted step", fmt_s(step))]  # fmt: skip
    for attr, name, f in (
        ("tokens_per_s", "tokens/s", lambda v: f"{v:,.0f}"),
        ("tflops_per_gpu", "TFLOP/s per GPU", lambda v: f"{v:.1f}"),
        ("mfu", "MFU", lambda v: f"{100 * v:.1f}%"),
        ("memory_per_device_bytes", "memory per device", fmt_bytes),
        ("memory_budget_bytes", "memory budget", fmt_bytes),
    ):
        value = getattr(p, attr, None)
        if value is not None:
            rows.append((name, f(float(value))))
    return rows


def _svg_body(data: bytes) -> str:
    text = data.decode()
    return text[text.index("<svg") :]


def write_pictures(
    plan: Plan, path: str | Path, edges: list[tuple[str, str]] | None = None, title: str = ""
) -> list[Path]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"--visualize {path}: the file name must end in .svg, .png or .html "
            f"(got {suffix or 'no suffix'!r}), e.g. --visualize plan.html"
        )
    graph = plan_graph(plan, edges, title)
    sched = timeline(plan, f"schedule · {title}" if title else "")
    mem = memory_bars(plan, f"memory per device · {title}" if title else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        parts = [_svg_body(render(g, "svg", pinned=g is not graph)) for g in (graph, sched, mem)]
        figures = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in headline(plan)
        )
        base = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{fmt_s(float(b.get('step_time_s', 0)))}</td>"
            f"<td>{float(b.get('speedup', 0)):.2f}x</td></tr>"
            for n, b in sorted(plan.baselines.items())
            if isinstance(b, dict)
        )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title or 'autopar plan')}</title><style>"
            "body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}"
            "table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:left}section{margin-bottom:28px}svg{max-width:100%;height:auto}"
            f"</style></head><body><h1>{html.escape(title or 'autopar plan')}</h1>"
            f"<table>{figures}</table>"
            + (
                f"<h2>baselines</h2><table><tr><th>baseline</th><th>step</th><th>this plan is faster by</th></tr>{base}</table>"
                if base
                else ""
            )
            + f"<section><h2>schedule</h2>{parts[1]}</section>"
            f"<section><h2>memory</h2>{parts[2]}</section>"
            f"<section><h2>graph</h2>{parts[0]}</section></body></html>"
        )
        path.write_text(page)
        return [path]
    fmt = suffix[1:]
    out = [
        path,
        path.with_name(f"{path.stem}.schedule{suffix}"),
        path.with_name(f"{path.stem}.memory{suffix}"),
    ]
    for target, g, pinned in zip(out, (graph, sched, mem), (False, True, True)):
        target.write_bytes(render(g, fmt, pinned=pinned))
    return out

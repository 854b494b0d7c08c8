"""Pictures of a plan: the graph, the pipeline schedule and memory against the budget.

Contract: ``write_pictures(plan, path, edges=None, title="")`` writes by suffix:
- ``.svg`` / ``.png``: the graph at ``path``, the schedule at ``<stem>.schedule<ext>``
  and the memory bars at ``<stem>.memory<ext>``;
- ``.html``: one page with all three inline (SVG) and the plan's headline figures.
It returns ``Pictures``: the paths written and ``note``, ONE line saying what it could
not draw and how to get it ("" when everything was drawn). The charts are pure-Python
SVG (``viz.charts``) and always render; the graph needs graphviz's ``dot`` (found with
``shutil.which``): without it (or when it fails) the graph's DOT source goes to
``<stem>.dot`` instead and the page shows a note where the graph would be. A chart as
PNG needs an SVG rasterizer (``viz.svg.rasterizer``): without one it is written as
``.svg``. Any other suffix raises ValueError saying what to pass. ``edges`` are
(producer, consumer) plan-node names (``dataflow_edges(captured.graph_module)``);
without them boxes are chained in order.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import graphviz

from autopar.plan import Plan
from autopar.viz.charts import memory_bars, timeline
from autopar.viz.graph import dataflow_edges, plan_graph
from autopar.viz.style import fmt_bytes, fmt_s, render
from autopar.viz.svg import HOW_TO_RASTERIZE, rasterizer, to_png

SUFFIXES = (".svg", ".png", ".html")
HOW_TO_GET_DOT = "apt-get install graphviz, or brew/conda install graphviz"

__all__ = ["SUFFIXES", "Pictures", "dataflow_edges", "headline", "write_pictures"]


@dataclass(frozen=True)
class Pictures:
    paths: tuple[Path, ...]
    note: str = ""  # one line: what was skipped and how to get it; "" when nothing was


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


def _svg_body(data: bytes | str) -> str:
    text = data.decode() if isinstance(data, bytes) else data
    return text[text.index("<svg") :]


def _graph(graph: graphviz.Digraph, fmt: str, dot_path: Path) -> tuple[bytes | None, str]:
    """The graph drawn by ``dot``, or (None, why not) after writing its DOT source."""
    if shutil.which("dot") is None:
        why = f"graphviz's `dot` is not installed ({HOW_TO_GET_DOT})"
    else:
        try:
            return render(graph, fmt), ""
        except (graphviz.ExecutableNotFound, subprocess.CalledProcessError, OSError) as e:
            why = f"graphviz's `dot` failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    dot_path.write_text(graph.source)
    return None, (
        f"graph picture skipped: {why}; wrote {dot_path} "
        f"(`dot -T{fmt} {dot_path} -o {dot_path.with_suffix('.' + fmt)}` draws it)"
    )


def _page(plan: Plan, title: str, sched: str, mem: str, graph: str) -> str:
    figures = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline(plan)
    )
    base = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{fmt_s(float(b.get('step_time_s', 0)))}</td>"
        f"<td>{float(b.get('speedup', 0)):.2f}x</td></tr>"
        for n, b in sorted(plan.baselines.items())
        if isinstance(b, dict) and "error" not in b
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title or 'autopar plan')}</title><style>"
        "body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left}section{margin-bottom:28px}svg{max-width:100%;height:auto}"
        ".note{background:#fff5f0;border:1px solid #fcbba1;padding:8px 12px;max-width:60em}"
        f"</style></head><body><h1>{html.escape(title or 'autopar plan')}</h1>"
        f"<table>{figures}</table>"
        + (
            f"<h2>baselines</h2><table><tr><th>baseline</th><th>step</th><th>this plan is faster by</th></tr>{base}</table>"
            if base
            else ""
        )
        + f"<section><h2>schedule</h2>{sched}</section>"
        f"<section><h2>memory</h2>{mem}</section>"
        f"<section><h2>graph</h2>{graph}</section></body></html>"
    )


def write_pictures(
    plan: Plan, path: str | Path, edges: list[tuple[str, str]] | None = None, title: str = ""
) -> Pictures:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"--visualize {path}: the file name must end in .svg, .png or .html "
            f"(got {suffix or 'no suffix'!r}), e.g. --visualize plan.html"
        )
    graph = plan_graph(plan, edges, title)
    sched = timeline(plan, f"schedule · {title}" if title else "").svg()
    mem = memory_bars(plan, f"memory per device · {title}" if title else "").svg()
    path.parent.mkdir(parents=True, exist_ok=True)
    dot_path = path.with_suffix(".dot")
    drawn, note = _graph(graph, "png" if suffix == ".png" else "svg", dot_path)
    extra = () if drawn is not None else (dot_path,)
    if suffix == ".html":
        part = _svg_body(drawn) if drawn is not None else f"<p class='note'>{html.escape(note)}</p>"
        path.write_text(_page(plan, title, _svg_body(sched), _svg_body(mem), part))
        return Pictures((path, *extra), note)
    out: list[Path] = []
    if drawn is not None:
        path.write_bytes(drawn)
        out.append(path)
    out += extra
    tool = rasterizer() if suffix == ".png" else None
    as_svg = []
    for kind, text in (("schedule", sched), ("memory", mem)):
        png = to_png(text, tool) if tool else None
        if png is not None:
            target = path.with_name(f"{path.stem}.{kind}.png")
            target.write_bytes(png)
        else:
            target = path.with_name(f"{path.stem}.{kind}.svg")
            target.write_text(text)
            as_svg += [target] if suffix == ".png" else []
        out.append(target)
    if as_svg:
        why = "no SVG-to-PNG converter found" if tool is None else f"{tool} failed"
        names = ", ".join(str(p) for p in as_svg)
        note = "; ".join(
            filter(None, [note, f"charts written as SVG ({names}): {why} ({HOW_TO_RASTERIZE})"])
        )
    return Pictures(tuple(out), note)

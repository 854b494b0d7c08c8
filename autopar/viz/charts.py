"""Charts drawn with graphviz as a canvas: the schedule timeline and the memory bars.

Contract: ``Canvas`` places boxes and text at given points (top-left origin) in a
``neato`` graph rendered with pinned positions (``viz.style.render(g, fmt, pinned=True)``),
so the charts need nothing beyond the graphviz the graph already needs.
``timeline(plan)``: one row per pipeline stage (one row when ``plan.pipeline`` is None),
a box per microbatch's forward (F) and backward (B), then the stage's exposed
collectives; a time axis below. ``memory_bars(plan)``: per-device memory of this plan
(stacked by kind when ``plan.predicted.memory`` has the breakdown), of each pipeline
stage when the pipeline gives it, and of each baseline, against the budget line.
"""

from __future__ import annotations

import math

import graphviz

from autopar.plan import Plan
from autopar.viz.pipeline import microbatches, schedule_name, simulate, stages_of
from autopar.viz.style import FONT, MEMORY_COLORS, PHASE_COLORS, esc, fmt_bytes, fmt_s

MEMORY_KINDS = ("params", "grads", "optimizer_state", "master_weights", "activations")


class Canvas:
    def __init__(self, name: str, width: float, height: float) -> None:
        self.w, self.h = width, height
        self.g = graphviz.Graph(name, engine="neato")
        self.g.attr(
            splines="false",
            bgcolor="white",
            pad="0.15",
            outputorder="nodesfirst",
            viewport=f"{width:.0f},{height:.0f},1,{width / 2:.0f},{height / 2:.0f}",
        )
        self.g.attr("node", fontname=FONT, shape="box", style="filled", fixedsize="true",
                    penwidth="0.6", color="#555555", margin="0")  # fmt: skip
        self.n = 0

    def _id(self) -> str:
        self.n += 1
        return f"n{self.n}"

    def rect(self, x: float, y: float, w: float, h: float, fill: str, text: str = "",
             size: float = 10, line: str = "#555555") -> None:  # fmt: skip
        if w <= 0 or h <= 0:
            return
        label = text if w >= len(text) * size * 0.62 else ""
        self.g.node(self._id(), label=esc(label), pos=f"{x + w / 2:.2f},{self.h - y - h / 2:.2f}!",
                    width=f"{w / 72:.4f}", height=f"{h / 72:.4f}", fillcolor=fill,
                    fontsize=str(size), color=line)  # fmt: skip

    def text(self, x: float, y: float, text: str, size: float = 11, anchor: str = "start",
             color: str = "#222222", bold: bool = False) -> None:  # fmt: skip
        """Text whose left edge (start), right edge (end) or middle sits at (x, y)."""
        w = len(text) * size * 0.62 + 12
        cx = {"start": x + w / 2, "end": x - w / 2}.get(anchor, x)
        just = {"start": "\\l", "end": "\\r"}.get(anchor, "")
        self.g.node(self._id(), label=esc(text).replace("\\", "\\\\") + just, shape="plaintext",
                    style="", pos=f"{cx:.2f},{self.h - y:.2f}!", fontsize=str(size),
                    fontcolor=color, width=f"{w / 72:.3f}", height=f"{size * 1.4 / 72:.3f}",
                    fontname=f"{FONT}-Bold" if bold else FONT)  # fmt: skip


def _ticks(total: float, n: int = 5) -> list[float]:
    if total <= 0:
        return [0.0]
    raw = total / n
    exp = math.floor(math.log10(raw))
    step = 10.0 ** (exp + 1)
    for cand in (1, 2, 2.5, 5):
        if cand * 10.0**exp >= raw:
            step = cand * 10.0**exp
            break
    return [i * step for i in range(int(total / step + 1e-9) + 1)]


def timeline(plan: Plan, title: str = "") -> graphviz.Graph:
    slots, total = simulate(plan)
    n = max([s.stage for s in slots], default=0) + 1
    m = microbatches(plan.pipeline)
    left, track, row, top = 120.0, 760.0, 30.0, 58.0
    height = top + n * (row + 8) + 70
    c = Canvas("schedule", left + track + 30, height)
    kind = schedule_name(plan.pipeline) if plan.pipeline else "no pipeline"
    c.text(10, 18, title or "pipeline schedule", size=15, bold=True)
    c.text(10, 38, f"{n} stage{'s' * (n > 1)}, {m} microbatch{'es' * (m > 1)}, {kind}; "
                   f"one step = {fmt_s(total)}", size=11, color="#555555")  # fmt: skip
    scale = track / total if total > 0 else 0.0
    for s in range(n):
        y = top + s * (row + 8)
        c.rect(left, y, track, row, "#fafafa", line="#dddddd")
        c.text(left - 10, y + row / 2, f"stage {s}", size=11, anchor="end")
    for sl in slots:
        y = top + sl.stage * (row + 8)
        label = {"F": f"F{sl.micro}", "B": f"B{sl.micro}", "comm": "collectives"}[sl.phase]
        c.rect(left + sl.start * scale, y + 2, (sl.end - sl.start) * scale, row - 4,
               PHASE_COLORS[sl.phase], label, size=9 if m > 8 else 10)  # fmt: skip
    axis_y = top + n * (row + 8) + 4
    c.rect(left, axis_y, track, 1, "#333333", line="#333333")
    for t in _ticks(total):
        x = left + t * scale
        c.rect(x, axis_y, 1, 5, "#333333", line="#333333")
        c.text(x, axis_y + 16, fmt_s(t) if t else "0", size=9, anchor="middle")
    ly = axis_y + 38
    x = left
    for key, name in (("F", "forward"), ("B", "backward"), ("comm", "exposed collectives")):
        c.rect(x, ly - 6, 14, 12, PHASE_COLORS[key])
        c.text(x + 20, ly, name, size=10)
        x += 40 + len(name) * 6
    return c.g


def _parts(memory: dict[str, float]) -> dict[str, float]:
    parts = {k: float(memory.get(k, 0.0)) for k in MEMORY_KINDS}
    rest = float(memory.get("total", sum(parts.values()))) - sum(parts.values())
    if rest > 0:
        parts["other"] = rest
    return parts


def memory_rows(plan: Plan) -> list[tuple[str, dict[str, float]]]:
    pred = plan.predicted
    rows: list[tuple[str, dict[str, float]]] = []
    memory = getattr(pred, "memory", None)
    total = getattr(pred, "memory_per_device_bytes", None)
    if isinstance(memory, dict) and memory:
        rows.append((f"this plan ({plan.strategy})", _parts(memory)))
    elif total:
        rows.append((f"this plan ({plan.strategy})", {"total": float(total)}))
    for i, s in enumerate(stages_of(plan.pipeline)):
        if s.get("memory_bytes"):
            rows.append((f"  stage {i}", {"total": float(s["memory_bytes"])}))
    for name, b in sorted(plan.baselines.items()):
        if isinstance(b, dict) and isinstance(b.get("memory"), dict):
            rows.append((f"baseline {name}", _parts(b["memory"])))
        elif isinstance(b, dict) and b.get("memory_per_device_bytes"):
            rows.append((f"baseline {name}", {"total": float(b["memory_per_device_bytes"])}))
    return rows


def memory_bars(plan: Plan, title: str = "") -> graphviz.Graph:
    rows = memory_rows(plan)
    budget = float(getattr(plan.predicted, "memory_budget_bytes", 0) or 0)
    left, track, row, top = 170.0, 600.0, 26.0, 58.0
    height = top + max(1, len(rows)) * (row + 10) + 70
    c = Canvas("memory", left + track + 150, height)
    c.text(10, 18, title or "memory per device", size=15, bold=True)
    c.text(10, 38, f"budget {fmt_bytes(budget)} per device" if budget else "no budget given",
           size=11, color="#555555")  # fmt: skip
    if not rows:
        c.text(left, top + 20, "this plan carries no memory prediction", size=12)
        return c.g
    peak = max([sum(p.values()) for _, p in rows] + [budget]) * 1.05
    scale = track / peak
    for i, (name, parts) in enumerate(rows):
        y = top + i * (row + 10)
        c.text(left - 10, y + row / 2, name, size=11, anchor="end")
        x = left
        for kind, value in parts.items():
            c.rect(x, y, value * scale, row, MEMORY_COLORS[kind])
            x += value * scale
        used = sum(parts.values())
        over = budget and used > budget
        note = fmt_bytes(used) + (f"  over by {fmt_bytes(used - budget)}" if over else "")
        c.text(x + 8, y + row / 2, note, size=10, color="#a50f15" if over else "#222222")
    if budget:
        bx = left + budget * scale
        span = len(rows) * (row + 10)
        c.rect(bx - 1, top - 6, 2, span + 2, "#cb181d", line="#cb181d")
        c.text(
            bx,
            top + span + 8,
            f"budget {fmt_bytes(budget)}",
            size=9,
            anchor="middle",
            color="#cb181d",
        )
    ly = top + len(rows) * (row + 10) + 34
    x = left
    used_kinds = [k for k in (*MEMORY_KINDS, "other", "total") if any(p.get(k) for _, p in rows)]
    for kind in used_kinds:
        name = "total (no breakdown)" if kind == "total" else kind.replace("_", " ")
        c.rect(x, ly - 6, 14, 12, MEMORY_COLORS[kind])
        c.text(x + 20, ly, name, size=10)
        x += 40 + len(name) * 6
    return c.g

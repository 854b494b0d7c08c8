"""The schedule timeline and the memory bars, written as SVG in pure Python.

Contract: ``timeline(plan, title)`` and ``memory_bars(plan, title)`` return a
``viz.svg.Canvas`` (``.svg()`` is the document); they need no graphviz and no other
program, so they always render.
``timeline``: one row per pipeline rank (one row when ``plan.pipeline`` is None; with
interleaved 1F1B a rank holds several stages, its row says which, and each chunk of
stages has its own shade), a box per microbatch's forward (F) and backward (B) in the
order and at the times ``autopar.pipeline.schedule`` gives (``viz.pipeline.simulate``),
then the rank's exposed collectives; a time axis below. The subtitle also gives the
pipeline's ``predicted_step_s`` when it differs from the laid-out step (the 3D search
prices sends inside the stages and adds gradient tails). ``memory_bars``: per-device
memory of this plan (stacked by kind when ``plan.predicted.memory`` has the breakdown),
of each pipeline stage when the pipeline gives it (of each rank when ranks hold several
stages: the largest ``memory_bytes`` of its stages, which the 3D search gives per rank),
and of each baseline, against the budget line. Every box has a hover tooltip.
"""

from __future__ import annotations

import math

from autopar.plan import Plan
from autopar.viz.pipeline import chunks_of, simulate, stages_of
from autopar.viz.style import MEMORY_COLORS, PHASE_COLORS, fmt_bytes, fmt_s
from autopar.viz.svg import Canvas, text_width

MEMORY_KINDS = ("params", "grads", "optimizer_state", "master_weights", "activations")
# the shade of a phase per chunk of interleaved stages (chunk 0 keeps PHASE_COLORS)
CHUNK_SHADES = {"F": ("#6baed6", "#c6dbef", "#2171b5"), "B": ("#fd8d3c", "#fdd0a2", "#d94801")}
PHASE_NAMES = {"F": "forward", "B": "backward"}


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


def _plural(n: int, word: str, many: str) -> str:
    return f"{n} {word if n == 1 else many}"


def _legend(c: Canvas, x: float, y: float, items: list[tuple[str, str]]) -> None:
    for color, name in items:
        c.rect(x, y - 6, 14, 12, color)
        c.text(x + 20, y, name, size=10)
        x += 40 + len(name) * 6


def timeline(plan: Plan, title: str = "") -> Canvas:
    tl = simulate(plan)
    p, v, m = tl.ranks, tl.chunks, tl.microbatches
    n = p * v
    if v > 1:
        rows = [
            f"rank {r} · stages {', '.join(str(r + k * p) for k in range(v))}" for r in range(p)
        ]
    else:
        rows = [f"stage {r}" for r in range(p)]
    left = max(120.0, max(text_width(r, 11) for r in rows) + 24)
    track, row, top = 760.0, 30.0, 58.0
    height = top + p * (row + 8) + 70
    c = Canvas(left + track + 30, height, "schedule")
    total = tl.total
    if plan.pipeline:
        kind = tl.kind.replace("_", " ")
        where = f"{_plural(n, 'stage', 'stages')}" + (
            f" on {p} ranks ({v} chunks each)" if v > 1 else ""
        )
        head = f"{where}, {_plural(m, 'microbatch', 'microbatches')}, {kind}"
    else:
        head = "1 stage, 1 microbatch, no pipeline"
    sub = f"{head}; one step = {fmt_s(total)}"
    if plan.pipeline and p > 1:
        sub += f", bubble {100 * tl.bubble:.0f}%"
    priced = float((plan.pipeline or {}).get("predicted_step_s") or 0.0)
    if priced > 0 and abs(priced - total) > 0.01 * priced:
        sub += f" (the plan's priced step: {fmt_s(priced)})"
    c.text(10, 18, title or "pipeline schedule", size=15, bold=True)
    c.text(10, 38, sub + (f"; {tl.note}" if tl.note else ""), size=11, color="#555555")
    scale = track / total if total > 0 else 0.0
    for r, name in enumerate(rows):
        y = top + r * (row + 8)
        c.rect(left, y, track, row, "#fafafa", line="#dddddd")
        c.text(left - 10, y + row / 2, name, size=11, anchor="end")
    for sl in tl.slots:
        y = top + sl.rank * (row + 8)
        span = f"{fmt_s(sl.start)} to {fmt_s(sl.end)}"
        if sl.phase == "comm":
            fill, label = PHASE_COLORS["comm"], "collectives"
            tip = f"rank {sl.rank}: exposed collectives, {span}"
        else:
            chunk = sl.stage // p
            shades = CHUNK_SHADES[sl.phase]
            fill, label = shades[chunk % len(shades)], f"{sl.phase}{sl.micro}"
            where = f"stage {sl.stage}" + (f" (rank {sl.rank}, chunk {chunk})" if v > 1 else "")
            tip = f"{where}: {PHASE_NAMES[sl.phase]} of microbatch {sl.micro}, {span}"
        c.rect(left + sl.start * scale, y + 2, (sl.end - sl.start) * scale, row - 4, fill,
               label, size=9 if m > 8 else 10, tip=tip)  # fmt: skip
    axis_y = top + p * (row + 8) + 4
    c.rect(left, axis_y, track, 1, "#333333", line="#333333")
    for t in _ticks(total):
        x = left + t * scale
        c.rect(x, axis_y, 1, 5, "#333333", line="#333333")
        c.text(x, axis_y + 16, fmt_s(t) if t else "0", size=9, anchor="middle")
    if v > 1:
        items = []
        for k in range(v):
            stages = f"stages {k * p}..{k * p + p - 1}" if p > 1 else f"stage {k}"
            items += [(CHUNK_SHADES["F"][k % 3], f"forward, {stages}"),
                      (CHUNK_SHADES["B"][k % 3], f"backward, {stages}")]  # fmt: skip
    else:
        items = [(PHASE_COLORS["F"], "forward"), (PHASE_COLORS["B"], "backward")]
    _legend(c, left, axis_y + 38, [*items, (PHASE_COLORS["comm"], "exposed collectives")])
    c.w = max(c.w, left + sum(40 + len(name) * 6 for _, name in items) + 160)
    return c


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
    stages = stages_of(plan.pipeline)
    v = chunks_of(plan.pipeline)
    if v > 1 and len(stages) % v == 0 and len(stages) > v:  # a rank holds stages r, r+p, ...
        p = len(stages) // v
        for r in range(p):
            mine = [s.get("memory_bytes") or 0 for s in stages[r::p]]
            if any(mine):
                name = f"  rank {r} (stages {', '.join(str(r + k * p) for k in range(v))})"
                rows.append((name, {"total": float(max(mine))}))
    else:
        for i, s in enumerate(stages):
            if s.get("memory_bytes"):
                rows.append((f"  stage {i}", {"total": float(s["memory_bytes"])}))
    for name, b in sorted(plan.baselines.items()):
        if isinstance(b, dict) and isinstance(b.get("memory"), dict):
            rows.append((f"baseline {name}", _parts(b["memory"])))
        elif isinstance(b, dict) and b.get("memory_per_device_bytes"):
            rows.append((f"baseline {name}", {"total": float(b["memory_per_device_bytes"])}))
    return rows


def memory_bars(plan: Plan, title: str = "") -> Canvas:
    rows = memory_rows(plan)
    budget = float(getattr(plan.predicted, "memory_budget_bytes", 0) or 0)
    left = max([170.0] + [text_width(name, 11) + 24 for name, _ in rows])
    track, row, top = 600.0, 26.0, 58.0
    height = top + max(1, len(rows)) * (row + 10) + 70
    c = Canvas(left + track + 150, height, "memory")
    c.text(10, 18, title or "memory per device", size=15, bold=True)
    c.text(10, 38, f"budget {fmt_bytes(budget)} per device" if budget else "no budget given",
           size=11, color="#555555")  # fmt: skip
    if not rows:
        c.text(left, top + 20, "this plan carries no memory prediction", size=12)
        return c
    peak = max([sum(p.values()) for _, p in rows] + [budget]) * 1.05
    scale = track / peak if peak > 0 else 0.0
    for i, (name, parts) in enumerate(rows):
        y = top + i * (row + 10)
        c.text(left - 10, y + row / 2, name, size=11, anchor="end")
        x = left
        for kind, value in parts.items():
            what = "total (no breakdown)" if kind == "total" else kind.replace("_", " ")
            c.rect(x, y, value * scale, row, MEMORY_COLORS[kind],
                   tip=f"{name.strip()}: {what} {fmt_bytes(value)}")  # fmt: skip
            x += value * scale
        used = sum(parts.values())
        over = budget and used > budget
        note = fmt_bytes(used) + (f"  over by {fmt_bytes(used - budget)}" if over else "")
        c.text(x + 8, y + row / 2, note, size=10, color="#a50f15" if over else "#222222")
    if budget:
        bx = left + budget * scale
        span = len(rows) * (row + 10)
        c.rect(bx - 1, top - 6, 2, span + 2, "#cb181d", line="#cb181d")
        c.text(bx, top + span + 8, f"budget {fmt_bytes(budget)}", size=9, anchor="middle",
               color="#cb181d")  # fmt: skip
    used_kinds = [k for k in (*MEMORY_KINDS, "other", "total") if any(p.get(k) for _, p in rows)]
    _legend(c, left, top + len(rows) * (row + 10) + 34, [
        (MEMORY_COLORS[k], "total (no breakdown)" if k == "total" else k.replace("_", " "))
        for k in used_kinds
    ])  # fmt: skip
    return c

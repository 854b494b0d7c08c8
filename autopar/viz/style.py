"""Shared look of autopar's pictures: placement colors, number formats, rendering.

Contract: ``placement_color(p)`` maps a placement's short string (``R``, ``S(0)``, ``P``)
to a fill color, the same in every picture; ``render(graph, fmt)`` turns a ``graphviz``
graph (the dataflow graph; the charts are plain SVG, ``viz.svg``) into SVG or PNG bytes
(its engine, ``dot``, must be on PATH, else a ValueError says how to install graphviz);
``fmt_s``/``fmt_bytes`` print seconds and bytes short. Pure functions, no state.
"""

from __future__ import annotations

import shutil
from typing import Any

FONT = "Helvetica"
# fill colors by placement kind; chosen to stay apart for people with red/green weakness
PLACEMENT_COLORS = {
    "R": "#eeeeee",
    "S(0)": "#9ecae1",
    "S(1)": "#fdd49e",
    "S(2)": "#c7e9c0",
    "S(3)": "#dadaeb",
    "P": "#fc9272",
}
PHASE_COLORS = {"F": "#6baed6", "B": "#fd8d3c", "comm": "#bdbdbd", "idle": "#ffffff"}
MEMORY_COLORS = {
    "params": "#6baed6",
    "grads": "#9ecae1",
    "optimizer_state": "#fd8d3c",
    "master_weights": "#fdae6b",
    "activations": "#74c476",
    "other": "#d9d9d9",
    "total": "#969696",
}


def placement_color(short: str) -> str:
    if short.startswith("P"):
        return PLACEMENT_COLORS["P"]
    return PLACEMENT_COLORS.get(short, "#dadaeb")


def fmt_s(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def esc(text: str) -> str:
    """Escape text for a graphviz HTML-like label."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def check_graphviz(engine: str = "dot") -> None:
    if shutil.which(engine) is None:
        raise ValueError(
            f"--visualize needs the graphviz program {engine!r}, which is not on PATH; install "
            "graphviz (apt-get install graphviz, brew install graphviz or conda install graphviz) "
            "or drop --visualize"
        )


def render(graph: Any, fmt: str) -> bytes:
    """SVG or PNG bytes of a graphviz graph, laid out by its engine."""
    if fmt not in ("svg", "png"):
        raise ValueError(f"pictures are svg or png, got {fmt!r}")
    check_graphviz(graph.engine)
    out = graph.pipe(format=fmt)
    return out if isinstance(out, bytes) else out.encode()

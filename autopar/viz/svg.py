"""A tiny SVG canvas for charts, in pure Python, and turning SVG into PNG where a tool can.

Contract: ``Canvas(width, height)`` takes boxes (``rect``) and text (``text``) at points
with a top-left origin, in the order drawn (later on top); ``svg()`` returns a standalone,
well-formed SVG document (text escaped, numbers rounded), so a chart needs neither graphviz
nor any other program. A box's label is drawn only where it fits; ``tip`` adds a hover
tooltip (an SVG ``<title>``). ``rasterizer()`` names the first SVG -> PNG converter found
(the ``cairosvg`` module, then the programs ``rsvg-convert`` and ``magick``), or None;
``to_png(svg, name)`` converts with it (None when there is none, or it fails). No state
beyond a canvas's own list of shapes.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from xml.sax.saxutils import escape, quoteattr

from autopar.viz.style import FONT

PROGRAMS = ("rsvg-convert", "magick")
PNG = b"\x89PNG\r\n\x1a\n"
HOW_TO_RASTERIZE = "pip install cairosvg, or apt-get install librsvg2-bin for rsvg-convert"


def _n(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def text_width(text: str, size: float) -> float:
    """About how wide ``text`` is in Helvetica at ``size`` (no font metrics needed)."""
    return len(text) * size * 0.62


class Canvas:
    def __init__(self, width: float, height: float, name: str = "chart") -> None:
        self.w, self.h, self.name = width, height, name
        self.parts: list[str] = []

    def rect(self, x: float, y: float, w: float, h: float, fill: str, text: str = "",
             size: float = 10, line: str = "#555555", tip: str = "") -> None:  # fmt: skip
        if w <= 0 or h <= 0:
            return
        title = f"<title>{escape(tip)}</title>" if tip else ""
        shape = (
            f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" '
            f'fill="{fill}" stroke="{line}" stroke-width="0.6">{title}</rect>'
        )
        if text and w >= text_width(text, size):
            shape = f"<g>{shape}{self._text(x + w / 2, y + h / 2, text, size, 'middle', '#000000', False)}</g>"
        self.parts.append(shape)

    def text(self, x: float, y: float, text: str, size: float = 11, anchor: str = "start",
             color: str = "#222222", bold: bool = False) -> None:  # fmt: skip
        """Text whose left edge (start), right edge (end) or middle sits at x, centred on y."""
        self.parts.append(self._text(x, y, text, size, anchor, color, bold))

    @staticmethod
    def _text(x: float, y: float, text: str, size: float, anchor: str, color: str,
              bold: bool) -> str:  # fmt: skip
        weight = ' font-weight="bold"' if bold else ""
        # a baseline 0.35 em below the centre line centres the x-height in every renderer
        return (
            f'<text x="{_n(x)}" y="{_n(y + size * 0.35)}" text-anchor="{anchor}" '
            f'font-size="{_n(size)}" fill="{color}"{weight}>{escape(text)}</text>'
        )

    def svg(self) -> str:
        w, h = _n(self.w), _n(self.h)
        return (
            '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}pt" height="{h}pt" '
            f'viewBox="0 0 {w} {h}" font-family={quoteattr(FONT + ",Arial,sans-serif")}>\n'
            f"<title>{escape(self.name)}</title>\n"
            f'<rect x="0" y="0" width="{w}" height="{h}" fill="white" stroke="none"/>\n'
            + "\n".join(self.parts)
            + "\n</svg>\n"
        )


def rasterizer() -> str | None:
    if importlib.util.find_spec("cairosvg") is not None:
        return "cairosvg"
    return next((p for p in PROGRAMS if shutil.which(p)), None)


def to_png(svg: str, tool: str | None = None) -> bytes | None:
    """PNG bytes of ``svg`` made by ``tool`` (default: ``rasterizer()``), or None."""
    tool = tool or rasterizer()
    data = svg.encode()
    if tool == "cairosvg":
        try:
            import cairosvg  # type: ignore[import-not-found]

            out = cairosvg.svg2png(bytestring=data)
        except Exception:  # a missing libcairo shows up as OSError, bad input as anything
            return None
        return out if isinstance(out, bytes) and out[:8] == PNG else None
    try:
        if tool == "rsvg-convert":
            out = _run([tool, "--format=png"], data)
        elif tool == "magick":
            out = _run([tool, "svg:-", "png:-"], data)
        else:
            return None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return out if out[:8] == PNG else None


def _run(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True, timeout=60).stdout

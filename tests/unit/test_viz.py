"""Pictures of plans: collapsing repeated layers, pipeline bands, the schedule, memory, and
what ``--visualize`` still writes (and says, in one line) when graphviz's ``dot`` or an
SVG rasterizer is missing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import autopar.viz
from autopar.cli import main
from autopar.pipeline.schedule import make_schedule
from autopar.pipeline.schedule import simulate as schedule_simulate
from autopar.planning.session import Request, make
from autopar.viz import write_pictures
from autopar.viz.charts import memory_bars, timeline
from autopar.viz.pipeline import simulate, stage_of_module
from autopar.viz.svg import to_png

HAS_DOT = shutil.which("dot") is not None
REAL_WHICH = shutil.which


@pytest.fixture(scope="module")
def plan():
    return make(Request("gpt2-tiny", "cpu:2"))[0]


@pytest.fixture
def no_dot(monkeypatch):
    """graphviz's programs are not on PATH (as on a fresh Debian)."""
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name == "dot" else REAL_WHICH(name, *a, **k)
    )


@pytest.fixture
def no_rasterizer(monkeypatch):
    monkeypatch.setattr(autopar.viz, "rasterizer", lambda: None)


PIPE = {"schedule": "1F1B", "microbatches": 4, "stages": [
    {"modules": ["transformer", "transformer.h.0"], "memory_bytes": 3e9},
    {"modules": ["transformer.h.1", "transformer.ln_f", "lm_head"], "memory_bytes": 2e9},
]}  # fmt: skip


def _pipe(kind: str, stages: int, m: int, chunks: int = 1) -> dict:
    return {"schedule": kind, "microbatches": m, "chunks": chunks, "stages": [
        {"modules": [f"transformer.h.{s}"], "forward_s": 1e-3 * (1 + s % 2),
         "backward_s": 2e-3 * (1 + s % 2), "comm_s": 1e-4, "memory_bytes": 1e9 * (1 + s % 2)}
        for s in range(stages)
    ]}  # fmt: skip


def _svg_text(path_or_text) -> tuple[ET.Element, str]:
    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
    root = ET.fromstring(text.encode())
    assert root.tag.endswith("svg")
    return root, " ".join(t for t in root.itertext())


def test_stage_lookup_prefers_the_longest_prefix() -> None:
    assert stage_of_module(PIPE, "transformer.h.1.attn") == 1
    assert stage_of_module(PIPE, "transformer.wte") == 0
    assert stage_of_module(PIPE, "other") == -1
    assert stage_of_module(None, "anything") == 0


def test_one_f_one_b_schedule(plan) -> None:
    p = dataclasses.replace(plan, pipeline=PIPE)
    tl = simulate(p)
    work = [s for s in tl.slots if s.phase in ("F", "B")]
    assert len(work) == 2 * 2 * 4 and tl.kind == "1f1b" and tl.ranks == 2
    # stage 1 starts microbatch 0 only after stage 0 has sent it
    f00 = next(s for s in work if (s.stage, s.micro, s.phase) == (0, 0, "F"))
    f10 = next(s for s in work if (s.stage, s.micro, s.phase) == (1, 0, "F"))
    assert f10.start >= f00.end and tl.total >= max(s.end for s in tl.slots)
    for rank in (0, 1):  # no rank runs two things at once
        mine = sorted((s for s in tl.slots if s.rank == rank), key=lambda s: s.start)
        assert all(a.end <= b.start + 1e-15 for a, b in zip(mine, mine[1:]))


@pytest.mark.parametrize(
    "kind,stages,m,chunks",
    [("gpipe", 3, 4, 1), ("1f1b", 4, 6, 1), ("interleaved_1f1b", 4, 4, 2),
     ("interleaved_1f1b", 6, 6, 3)],
)  # fmt: skip
def test_timeline_is_the_schedulers(plan, kind, stages, m, chunks) -> None:
    """The picture runs autopar.pipeline.schedule's actions in its order and agrees with
    its simulator on when every rank finishes (interleaving included)."""
    p = dataclasses.replace(plan, pipeline=_pipe(kind, stages, m, chunks))
    tl = simulate(p)
    ranks = stages // chunks
    ref = make_schedule(kind, ranks, m, chunks)
    times = [(1e-3 * (1 + s % 2), 2e-3 * (1 + s % 2)) for s in range(stages)]
    sim = schedule_simulate(ref, [t[0] for t in times], [t[1] for t in times])
    assert (tl.kind, tl.ranks, tl.chunks, tl.note) == (kind, ranks, chunks, "")
    for r in range(ranks):
        work = [s for s in tl.slots if s.rank == r and s.phase != "comm"]
        assert [(s.phase, s.stage, s.micro) for s in work] == [
            (a.kind, a.stage, a.microbatch) for a in ref.ranks[r]
        ]
        assert all(s.stage % ranks == r for s in work)
        assert work[-1].end == pytest.approx(sim.finish_s[r], rel=1e-12)
        comm = [s for s in tl.slots if s.rank == r and s.phase == "comm"]
        assert comm[0].end - comm[0].start == pytest.approx(1e-4 * chunks * m)
    assert tl.bubble == pytest.approx(sim.bubble_fraction)


def test_interleaved_picture_has_a_row_per_rank(plan) -> None:
    p = dataclasses.replace(plan, pipeline=_pipe("interleaved_1f1b", 4, 4, 2))
    root, text = _svg_text(timeline(p, "il").svg())
    rows = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")
            if t.get("text-anchor") == "end"]  # fmt: skip
    assert rows == ["rank 0 · stages 0, 2", "rank 1 · stages 1, 3"]  # rows are ranks
    assert "4 stages on 2 ranks (2 chunks each)" in text and "interleaved 1f1b" in text
    assert "forward, stages 2..3" in text  # chunk 1 has its own shade in the legend
    assert "priced step" not in text
    priced = dataclasses.replace(p, pipeline={**p.pipeline, "predicted_step_s": 1.0})
    assert "(the plan's priced step: 1.00 s)" in _svg_text(timeline(priced).svg())[1]
    _, mem = _svg_text(memory_bars(p, "il").svg())
    assert "rank 1 (stages 1, 3)" in mem and "1.9 GiB" in mem


def test_a_schedule_the_scheduler_refuses_is_drawn_as_1f1b_with_a_note(plan) -> None:
    p = dataclasses.replace(plan, pipeline=_pipe("interleaved_1f1b", 4, 3, 2))
    tl = simulate(p)
    assert tl.kind == "1f1b" and tl.ranks == 4 and "divisible" in tl.note
    assert "drawn as 1f1b" in _svg_text(timeline(p).svg())[1]


def test_charts_are_well_formed_svg_with_their_labels(plan) -> None:
    p = dataclasses.replace(plan, pipeline=json.loads(json.dumps(PIPE)))
    root, text = _svg_text(timeline(p, "t").svg())
    for label in ("stage 0", "stage 1", "F0", "B3", "forward", "backward", "one step ="):
        assert label in text
    assert len(list(root.iter("{http://www.w3.org/2000/svg}rect"))) > 16  # 16 F/B boxes
    _, text = _svg_text(memory_bars(p, "m").svg())
    for label in ("this plan (auto)", "stage 0", "stage 1", "2.8 GiB", "budget"):
        assert label in text
    _, text = _svg_text(memory_bars(plan, 'a <"quoted"> & title').svg())  # escaped
    assert 'a <"quoted"> & title' in text


def test_pipeline_pictures_have_stage_bands(plan, tmp_path) -> None:
    if not HAS_DOT:
        pytest.skip("graphviz's dot is not installed here")
    p = dataclasses.replace(plan, pipeline=json.loads(json.dumps(PIPE)))
    out = write_pictures(p, tmp_path / "pp.svg", title="pp")
    graph, sched, mem = out.paths
    assert out.note == "" and graph.name == "pp.svg"
    text = graph.read_text()
    assert "pipeline stage 0" in text and "pipeline stage 1" in text
    assert "F3" in sched.read_text() and "B3" in sched.read_text()
    assert "stage 1" in mem.read_text()
    for f in (graph, sched, mem):
        ET.parse(f)


def test_without_dot_svg_writes_the_charts_and_the_dot_source(plan, tmp_path, no_dot) -> None:
    out = write_pictures(plan, tmp_path / "x.svg", title="t")
    names = [p.name for p in out.paths]
    assert names == ["x.dot", "x.schedule.svg", "x.memory.svg"]
    assert not (tmp_path / "x.svg").exists()
    assert "\n" not in out.note and out.note.startswith("graph picture skipped: graphviz's `dot`")
    assert "apt-get install graphviz" in out.note and "x.dot" in out.note
    assert (tmp_path / "x.dot").read_text().startswith("digraph plan {")
    for p in out.paths[1:]:
        _svg_text(p)


def test_without_dot_html_has_the_charts_the_tables_and_a_note(plan, tmp_path, no_dot) -> None:
    out = write_pictures(plan, tmp_path / "x.html", title="t")
    assert [p.name for p in out.paths] == ["x.html", "x.dot"]
    page = (tmp_path / "x.html").read_text()
    assert page.count("<svg") == 2 and "predicted step" in page and "memory per device" in page
    assert "graph picture skipped" in page and "apt-get install graphviz" in page


def test_png_without_a_rasterizer_writes_svg_charts(plan, tmp_path, no_dot, no_rasterizer) -> None:
    out = write_pictures(plan, tmp_path / "x.png")
    assert [p.name for p in out.paths] == ["x.dot", "x.schedule.svg", "x.memory.svg"]
    assert "\n" not in out.note and "graph picture skipped" in out.note
    assert "charts written as SVG" in out.note and "cairosvg" in out.note


def test_png_charts_with_a_rasterizer(plan, tmp_path, monkeypatch) -> None:
    fake = tmp_path / "bin" / "rsvg-convert"  # stands in for librsvg: reads SVG, writes a PNG
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncat > /dev/null\nprintf '\\211PNG\\r\\n\\032\\nfake'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(autopar.viz, "rasterizer", lambda: "rsvg-convert")
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    assert to_png("<svg/>", "rsvg-convert") == b"\x89PNG\r\n\x1a\nfake"
    assert to_png("<svg/>", "no-such-tool") is None
    out = write_pictures(plan, tmp_path / "x.png")
    charts = [p for p in out.paths if ".schedule" in p.name or ".memory" in p.name]
    assert [p.name for p in charts] == ["x.schedule.png", "x.memory.png"]
    assert "charts written as SVG" not in out.note


@pytest.mark.parametrize("dot", [True, False], ids=["with-dot", "without-dot"])
def test_cli_visualize_exits_0(tmp_path, capsys, monkeypatch, dot) -> None:
    if dot and not HAS_DOT:
        pytest.skip("graphviz's dot is not installed here")
    if not dot:
        monkeypatch.setattr(shutil, "which", lambda n, *a, **k: None if n == "dot" else REAL_WHICH(n, *a, **k))  # fmt: skip
    for name in ("X.html", "X.svg"):
        assert main(["plan", "gpt2-tiny", "--cluster", "cpu:2", "--visualize", str(tmp_path / name)]) == 0  # fmt: skip
        lines = capsys.readouterr().out.splitlines()
        notes = [line for line in lines if "graph picture skipped" in line]
        assert len(notes) == (0 if dot else 1)
        if not dot:
            assert "apt-get install graphviz" in notes[0] and "X.dot" in notes[0]
    assert (tmp_path / "X.html").read_text().count("<svg") == (3 if dot else 2)
    assert (tmp_path / "X.svg").exists() == dot and (tmp_path / "X.dot").exists() != dot
    for chart in ("X.schedule.svg", "X.memory.svg"):
        _, text = _svg_text(tmp_path / chart)
        assert "stage 0" in text or "this plan" in text


def test_bad_suffix(plan, tmp_path) -> None:
    with pytest.raises(ValueError, match=".svg, .png or .html"):
        write_pictures(plan, tmp_path / "x.jpg")

"""Pictures of plans: collapsing repeated layers, pipeline bands, the schedule, memory."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest

from autopar.cli.planning import Request, make
from autopar.viz import write_pictures
from autopar.viz.pipeline import simulate, stage_of_module


@pytest.fixture(scope="module")
def plan():
    return make(Request("gpt2-tiny", "cpu:2"))[0]


PIPE = {"schedule": "1F1B", "microbatches": 4, "stages": [
    {"modules": ["transformer", "transformer.h.0"], "memory_bytes": 3e9},
    {"modules": ["transformer.h.1", "transformer.ln_f", "lm_head"], "memory_bytes": 2e9},
]}  # fmt: skip


def test_stage_lookup_prefers_the_longest_prefix() -> None:
    assert stage_of_module(PIPE, "transformer.h.1.attn") == 1
    assert stage_of_module(PIPE, "transformer.wte") == 0
    assert stage_of_module(PIPE, "other") == -1
    assert stage_of_module(None, "anything") == 0


def test_one_f_one_b_schedule(plan) -> None:
    p = dataclasses.replace(plan, pipeline=PIPE)
    slots, total = simulate(p)
    work = [s for s in slots if s.phase in ("F", "B")]
    assert len(work) == 2 * 2 * 4
    # stage 1 starts microbatch 0 only after stage 0 has sent it
    f00 = next(s for s in work if (s.stage, s.micro, s.phase) == (0, 0, "F"))
    f10 = next(s for s in work if (s.stage, s.micro, s.phase) == (1, 0, "F"))
    assert f10.start >= f00.end and total >= max(s.end for s in slots)
    for stage in (0, 1):  # no stage runs two things at once
        mine = sorted((s for s in slots if s.stage == stage), key=lambda s: s.start)
        assert all(a.end <= b.start + 1e-15 for a, b in zip(mine, mine[1:]))


def test_pipeline_pictures_have_stage_bands(plan, tmp_path) -> None:
    p = dataclasses.replace(plan, pipeline=json.loads(json.dumps(PIPE)))
    graph, sched, mem = write_pictures(p, tmp_path / "pp.svg", title="pp")
    text = graph.read_text()
    assert "pipeline stage 0" in text and "pipeline stage 1" in text
    assert "F3" in sched.read_text() and "B3" in sched.read_text()
    assert "stage 1" in mem.read_text()
    for f in (graph, sched, mem):
        ET.parse(f)


def test_bad_suffix(plan, tmp_path) -> None:
    with pytest.raises(ValueError, match=".svg, .png or .html"):
        write_pictures(plan, tmp_path / "x.jpg")

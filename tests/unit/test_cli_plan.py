"""``autopar plan``: options, the JSON schema, baselines, pictures and bad input."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from autopar.cli import main
from autopar.planning import parse_bytes, parse_strategy

NEEDS_DOT = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="the graph picture needs graphviz's dot (apt-get install graphviz)",
)


@NEEDS_DOT
def test_plan_json_schema_and_pictures(tmp_path, capsys) -> None:
    out, pic = tmp_path / "plan.json", tmp_path / "pics" / "plan.svg"
    assert (
        main(
            ["plan", "gpt2-tiny", "--cluster", "cpu:2", "--json", str(out), "--visualize", str(pic)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "placements per layer" in text and "baselines" in text and "ddp" in text
    obj = json.loads(out.read_text())
    for key in ("mesh", "pipeline", "predicted", "baselines", "source"):
        assert key in obj
    assert obj["predicted"]["step_time_s"] > 0
    assert obj["source"]["model"] == "gpt2-tiny" and obj["source"]["batch_size"] == 4
    ddp = obj["baselines"]["ddp"]
    assert ddp["step_time_s"] > 0 and ddp["speedup"] == pytest.approx(
        ddp["step_time_s"] / obj["predicted"]["step_time_s"]
    )
    for name in ("plan.svg", "plan.schedule.svg", "plan.memory.svg"):
        root = ET.parse(tmp_path / "pics" / name).getroot()
        assert root.tag.endswith("svg")
    svg = (tmp_path / "pics" / "plan.svg").read_text()
    assert "transformer.h.0..1" in svg and "×2" in svg  # the two identical layers collapse


@NEEDS_DOT
def test_plan_html_and_png(tmp_path, capsys) -> None:
    html, png = tmp_path / "p.html", tmp_path / "p.png"
    assert (
        main(["plan", "mlp-tiny", "--cluster", "cpu:2", "--no-baselines", "--visualize", str(html)])
        == 0
    )
    page = html.read_text()
    assert page.count("<svg") == 3 and "predicted step" in page
    assert (
        main(["plan", "mlp-tiny", "--cluster", "cpu:2", "--no-baselines", "--visualize", str(png)])
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()


def test_fixed_mix_and_memory_budget(capsys) -> None:
    assert main(["plan", "llama-tiny", "--cluster", "cpu:4", "--strategy", "dp=2,tp=2",
                 "--memory-budget", "2GiB", "--no-baselines"]) == 0  # fmt: skip
    assert "mesh=(dp=2, tp=2)" in capsys.readouterr().out


def test_parse_helpers() -> None:
    assert parse_bytes("40GB") == 40 * 10**9 and parse_bytes("38GiB") == 38 * 2**30
    assert parse_strategy("tp=4,pp=2,dp=1", 8) == ("auto", {"tp": 4, "pp": 2, "dp": 1})
    assert parse_strategy("3d", 8) == ("auto", None) and parse_strategy("fsdp", 8) == ("fsdp", None)
    with pytest.raises(ValueError, match="multiplies to 4 devices but the cluster has 8"):
        parse_strategy("tp=2,dp=2", 8)
    with pytest.raises(ValueError, match="40 potatoes"):
        parse_bytes("40 potatoes")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["plan", "no-such-model", "--cluster", "cpu:2"], "unknown model"),
        (["plan", "gpt2-tiny", "--cluster", "8xNOPE"], "8xNOPE"),
        (["plan", "gpt2-tiny", "--cluster", "cpu:4", "--strategy", "tp=2,dp=4"], "multiplies to 8"),
        (["plan", "gpt2-tiny", "--cluster", "cpu:2", "--strategy", "magic"], "magic"),
        (["plan", "gpt2-tiny", "--cluster", "cpu:2", "--memory-budget", "lots"], "40GB"),
        (["plan", "gpt2-tiny", "--cluster", "cpu:2", "--visualize", "x.pdf"], ".html"),
    ],
)
def test_bad_usage_exits_2_with_one_paragraph(argv, needle, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.strip().count("\n") == 0


def test_every_command_has_help_with_examples(capsys) -> None:
    for command in ("plan", "explain", "diff", "emit", "run", "calibrate"):
        assert main([command, "--help"]) == 0
        assert f"autopar {command}" in capsys.readouterr().out.split("example")[-1]

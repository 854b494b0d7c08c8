"""The CLI's plan command and its error handling (no process group)."""

from __future__ import annotations

import json

from autopar.cli import main
from autopar.plan import Plan


def test_plan_writes_a_loadable_plan(tmp_path, capsys) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", "gpt2-tiny", "--cluster", "cpu:2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "transformer.h.0" in text and "predicted step" in text
    plan = Plan.load(out)
    assert plan.mesh.num_devices == 2
    assert json.loads(out.read_text())["version"] == 2


def test_named_mesh(capsys) -> None:
    assert main(["plan", "llama-tiny", "--cluster", "cpu:4", "--mesh", "dp=2,tp=2"]) == 0
    assert "mesh=(dp=2, tp=2)" in capsys.readouterr().out


def test_bad_inputs_exit_2_with_a_message(capsys) -> None:
    assert main(["plan", "no-such-model", "--cluster", "cpu:2"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["plan", "gpt2-tiny", "--cluster", "8xNOPE"]) == 2
    assert "8xNOPE" in capsys.readouterr().err
    assert main(["plan", "gpt2-tiny", "--cluster", "cpu:2", "--mesh", "dp=4"]) == 2
    err = capsys.readouterr().err
    assert "4" in err and "2" in err

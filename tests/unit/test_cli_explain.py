"""``autopar explain`` and ``autopar diff`` on saved plans; ``autopar emit`` output."""

from __future__ import annotations

import py_compile

import pytest

from autopar.cli import main
from autopar.cli.explain import alternatives
from autopar.plan import Plan


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    d = tmp_path_factory.mktemp("plans")
    for strategy in ("dp", "tp"):
        assert main(["plan", "gpt2-tiny", "--cluster", "cpu:2", "--strategy", strategy,
                     "--no-baselines", "--json", str(d / f"{strategy}.json")]) == 0  # fmt: skip
    return d


def test_explain_lists_nodes(plans, capsys) -> None:
    assert main(["explain", str(plans / "tp.json"), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "compute" in out and "reshards in" in out


def test_explain_node_prices_every_alternative(plans, capsys) -> None:
    plan = Plan.load(plans / "tp.json")
    mm = next(
        n.name
        for n in plan.nodes
        if n.op in ("addmm", "mm", "linear") and n.module.endswith("c_attn")
    )
    alts = alternatives(plan, mm)
    assert alts[0]["chosen"] and len(alts) > 1
    assert any(not a["allowed"] for a in alts)  # the tp preset rules some out
    assert main(["explain", str(plans / "tp.json"), "--node", mm]) == 0
    out = capsys.readouterr().out
    assert "chosen" in out and ("excluded by strategy" in out or "+" in out)


def test_diff_shows_differences(plans, capsys) -> None:
    assert main(["diff", str(plans / "dp.json"), str(plans / "tp.json")]) == 0
    out = capsys.readouterr().out
    assert "nodes placed differently" in out and "step time s" in out


def test_unreadable_plan_and_unknown_node_exit_2(plans, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["explain", str(bad)]) == 2
    assert "cannot read plan" in capsys.readouterr().err
    assert main(["diff", str(bad), str(plans / "dp.json")]) == 2
    capsys.readouterr()
    assert main(["explain", str(plans / "dp.json"), "--node", "no_such_node"]) == 2
    assert "no node 'no_such_node'" in capsys.readouterr().err


def test_emit_writes_a_program(tmp_path, capsys) -> None:
    assert main(["emit", "mlp-tiny", "--nproc", "2", "-o", str(tmp_path / "job")]) == 0
    assert "torchrun --nproc-per-node 2" in capsys.readouterr().out
    py_compile.compile(str(tmp_path / "job" / "train.py"), doraise=True)
    assert Plan.load(tmp_path / "job" / "plan.json").mesh.num_devices == 2

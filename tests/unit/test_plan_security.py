"""Plans are untrusted data: a plan that names a Python file never makes autopar run it,
and a tampered plan is refused, naming the node, before anything uses it."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from autopar.cli import main
from autopar.plan import Plan, PlanError
from autopar.plan_check import check_against
from autopar.planning.session import capture_model

EVIL = """from pathlib import Path
Path({marker!r}).write_text("ran")


def build():
    Path({marker!r}).write_text("ran")
    from autopar.zoo import build as zoo_build
    return zoo_build("mlp-tiny")
"""


@pytest.fixture(scope="module")
def dp_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plans") / "dp.json"
    argv = ["plan", "mlp-tiny", "--cluster", "cpu:2", "--strategy", "dp", "--no-baselines",
            "--json", str(path)]  # fmt: skip
    assert main(argv) == 0
    return path


@pytest.fixture(scope="module")
def captured() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return capture_model("mlp-tiny", None, None)


def _edited(src: Path, dst: Path, edit: Any) -> Path:
    obj = json.loads(src.read_text())
    edit(obj)
    dst.write_text(json.dumps(obj))
    return dst


def _node(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in obj["nodes"] if n["name"] == name)


def test_a_plan_naming_a_file_never_runs_it(dp_plan, tmp_path, capsys) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    path = _edited(dp_plan, tmp_path / "evil.json",
                   lambda o: o["source"].update(model=f"{evil}:build"))  # fmt: skip
    assert main(["explain", str(path), "--node", "linear"]) == 2
    err = capsys.readouterr().err
    assert "does not import or run code because a plan file names it" in err
    assert f"--model {evil}:build" in err and "Traceback" not in err
    assert main(["explain", str(path)]) == 0
    assert main(["diff", str(path), str(path)]) == 0
    Plan.load(path)
    assert not marker.exists()
    proc = subprocess.run(  # a real process, as a user would run it
        [sys.executable, "-m", "autopar", "explain", str(path), "--node", "linear"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists(), "a plan made autopar run the file it names"


def test_a_model_the_user_names_is_used(tmp_path, capsys) -> None:
    marker = tmp_path / "marker"
    mine = tmp_path / "mine.py"
    mine.write_text(EVIL.format(marker=str(marker)))
    plan = tmp_path / "mine.json"
    spec = f"{mine}:build"
    assert main(["plan", spec, "--cluster", "cpu:2", "--no-baselines", "--json", str(plan)]) == 0
    marker.unlink()
    assert main(["explain", str(plan), "--node", "linear"]) == 2
    assert not marker.exists()
    capsys.readouterr()
    assert main(["explain", str(plan), "--node", "linear", "--model", spec]) == 0
    assert "chosen" in capsys.readouterr().out and marker.exists()


def test_the_tampered_loss_placement_is_refused(dp_plan, captured, tmp_path, capsys) -> None:
    """The issue's case: the loss's P(avg) edited to R (and its reshard made to agree),
    which trained with ranks disagreeing on the loss."""

    def edit(o: dict[str, Any]) -> None:
        _node(o, "mse_loss")["outs"] = [[{"kind": "replicate"}]]
        for r in o["reshards"]:
            if r["src"] == "mse_loss":
                r["src_layout"], r["collectives"] = [{"kind": "replicate"}], []

    path = _edited(dp_plan, tmp_path / "tampered.json", edit)
    plan = Plan.load(path)  # each field is valid on its own ...
    with pytest.raises(PlanError, match="refused at node 'mse_loss'"):
        check_against(plan, captured)  # ... but no rule allows it for this graph
    assert main(["explain", str(path), "--node", "linear"]) == 2
    err = capsys.readouterr().err
    assert "mse_loss" in err and "not a placement the rule" in err and "Traceback" not in err


def test_an_untouched_plan_passes(dp_plan, captured) -> None:
    check_against(Plan.load(dp_plan), captured)


def test_a_dropped_gradient_reduction_is_refused(dp_plan, captured, tmp_path) -> None:
    path = _edited(dp_plan, tmp_path / "p.json", lambda o: o["reshards"].pop())
    with pytest.raises(PlanError, match="refused at node 'output'"):
        check_against(Plan.load(path), captured)


def test_a_shard_dim_past_the_rank_is_refused(dp_plan, captured, tmp_path) -> None:
    def edit(o: dict[str, Any]) -> None:
        _node(o, "net_0_weight")["outs"] = [[{"kind": "shard", "dim": 5}]]
        for r in o["reshards"]:
            if r["src"] == "net_0_weight":
                r["src_layout"] = [{"kind": "shard", "dim": 5}]

    with pytest.raises(PlanError, match="net_0_weight.*dim 5 of a 2-d tensor"):
        check_against(Plan.load(_edited(dp_plan, tmp_path / "p.json", edit)), captured)


FIELD_CASES = {
    "nan cost": (lambda o: _node(o, "linear").update(compute_s=math.nan), "linear", "finite"),
    "negative cost": (lambda o: _node(o, "gelu").update(compute_s=-1.0), "gelu", ">= 0"),
    "infinite reshard": (lambda o: o["reshards"][0].update(seconds=math.inf), "reshard", "finite"),
    "negative predicted": (lambda o: o["predicted"].update(step_time_s=-2), "step_time_s", ">= 0"),
    "unknown collective": (
        lambda o: o["reshards"][0]["collectives"][0].update(kind="all_scatter"),
        "all_scatter",
        "unknown kind",
    ),
    "unknown phase": (
        lambda o: o["reshards"][0]["collectives"][0].update(phase="sideways"),
        "sideways",
        "phase",
    ),
    "unknown axis": (lambda o: o["reshards"][0]["collectives"][0].update(axis="zz"), "zz", "axis"),
    "unknown node kind": (lambda o: _node(o, "gelu").update(kind="magic"), "gelu", "unknown kind"),
    "unknown kernel": (lambda o: _node(o, "gelu").update(kernel="rm -rf"), "gelu", "kernel"),
    "duplicate node": (
        lambda o: o["nodes"].append(copy.deepcopy(_node(o, "gelu"))),
        "gelu",
        "unique",
    ),
    "unknown strategy": (lambda o: o.update(strategy="evil"), "evil", "strategy"),
    "reshard to nowhere": (lambda o: o["reshards"][0].update(dst="nowhere"), "nowhere", "node"),
    "slot past inputs": (lambda o: o["reshards"][0].update(slot=9), "reshard", "inputs"),
    "layouts disagree": (
        lambda o: o["reshards"][0].update(dst_layout=[{"kind": "shard", "dim": 0}]),
        "reshard",
        "must agree",
    ),
    "float index": (lambda o: o["reshards"][0].update(out_index=0.5), "out_index", "whole number"),
    "name not text": (lambda o: _node(o, "gelu").update(name=["x"]), "name", "string"),
    "too few gradients": (lambda o: _node(o, "linear").update(grads=[]), "linear", "gradient"),
}


@pytest.mark.parametrize("case", sorted(FIELD_CASES))
def test_a_tampered_field_is_refused_on_load(dp_plan, tmp_path, case: str, capsys) -> None:
    edit, names, why = FIELD_CASES[case]
    path = _edited(dp_plan, tmp_path / "p.json", edit)
    with pytest.raises(PlanError) as info:
        Plan.load(path)
    text = str(info.value)
    assert names in text and why in text and "autopar plan" in text, text
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert names in err and "Traceback" not in err

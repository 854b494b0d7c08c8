"""The bad-input catalogue: malformed inputs across the CLI and the API.

Each CLI case must exit 2 with one paragraph on stderr that shows what was given and
says what is needed or how to fix it, with no traceback, within 5 s (measured here,
in-process: the interpreter, torch and transformers are already loaded); no case
spawns a rank. Each
API case must raise a typed exception whose message does the same.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import autopar
from autopar.cli import main
from autopar.plan import Plan, PlanError

LIMIT_S = 5.0
FIX_WORDS = ("must", "need", "use ", "give", "e.g.", "choose", "pass", "fix", "create",
             "re-create", "name ", "add ", "drop", "write", "leave", "make", "pick", "accepted",
             "run `")  # fmt: skip

MODELS = {
    "raises.py": "def build():\n    raise RuntimeError('my build is broken')\n",
    "notuple.py": "def build():\n    return 3\n",
    "syntax.py": "def build(:\n    pass\n",
    "notmodule.py": "import torch\n\ndef build():\n    return 'model', (torch.ones(2),)\n",
    "untraceable.py": (
        "import torch\n\nclass M(torch.nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.l = torch.nn.Linear(4, 4)\n\n"
        "    def forward(self, x):\n        y = self.l(x)\n        if y.sum() > 0:\n"
        "            return y.sum()\n        return y.mean()\n\n"
        "def build():\n    return M(), (torch.randn(2, 4),)\n"
    ),
    "ruleless.py": (
        "import torch\n\nclass M(torch.nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.l = torch.nn.Linear(4, 4)\n\n"
        "    def forward(self, x):\n        return torch.special.bessel_j0(self.l(x)).sum()\n\n"
        "def build():\n    return M(), (torch.randn(2, 4),)\n"
    ),
    "notes.txt": "not python at all {",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    import autopar.zoo.gpt2  # noqa: F401 - transformers' import (~2 s, more under load) is not the check's time

    for name, text in MODELS.items():
        (d / name).write_text(text)
    (d / "profile_bad.json").write_text("{not json")
    (d / "profile_wrong.json").write_text(json.dumps({"hello": 1}))
    (d / "plan_bad.json").write_text("[1, 2")
    assert main(["plan", "mlp-tiny", "--cluster", "cpu:2", "--strategy", "dp", "--no-baselines",
                 "--json", str(d / "mlp.json")]) == 0  # fmt: skip
    plan = json.loads((d / "mlp.json").read_text())
    edits: dict[str, Callable[[dict[str, Any]], None]] = {
        "nan": lambda o: o["nodes"][8].update(compute_s=math.nan),
        "version": lambda o: o.update(version=7),
        "list": lambda o: o.clear(),
        "kind": lambda o: o["reshards"][0]["collectives"][0].update(kind="all_scatter"),
        "dup": lambda o: o["nodes"].append(dict(o["nodes"][8])),
        "source": lambda o: o["source"].update(batch_size=-4),
        "nomodel": lambda o: o["source"].clear(),
    }
    for name, edit in edits.items():
        obj = json.loads(json.dumps(plan))
        edit(obj)
        (d / f"plan_{name}.json").write_text(json.dumps([] if name == "list" else obj))
    return d


# (id, argv with {d} for the files' directory, what the message must show as given)
CLI_CASES = [
    # model specs
    ("unknown model", ["plan", "no-such-model", "--cluster", "cpu:2"], "no-such-model"),
    ("missing file", ["plan", "{d}/missing.py:build", "--cluster", "cpu:2"], "missing.py"),
    ("no such function", ["plan", "{d}/raises.py:nofn", "--cluster", "cpu:2"], "nofn"),
    ("empty function", ["plan", "{d}/raises.py:", "--cluster", "cpu:2"], "raises.py"),
    ("not python", ["plan", "{d}/notes.txt:build", "--cluster", "cpu:2"], "notes.txt"),
    ("syntax error", ["plan", "{d}/syntax.py:build", "--cluster", "cpu:2"], "syntax.py"),
    ("build raises", ["plan", "{d}/raises.py:build", "--cluster", "cpu:2"], "my build is broken"),
    ("build returns int", ["plan", "{d}/notuple.py:build", "--cluster", "cpu:2"], "int"),
    ("build returns no module", ["plan", "{d}/notmodule.py:build", "--cluster", "cpu:2"], "str"),
    ("untraceable", ["plan", "{d}/untraceable.py:build", "--cluster", "cpu:2"], "y.sum() > 0"),
    # cluster strings
    ("cluster unknown device", ["plan", "mlp-tiny", "--cluster", "8xNOPE"], "8xNOPE"),
    ("cluster zero devices", ["plan", "mlp-tiny", "--cluster", "0xH100"], "0xH100"),
    ("cluster cpu:0", ["plan", "mlp-tiny", "--cluster", "cpu:0"], "cpu:0"),
    ("cluster garbage", ["plan", "mlp-tiny", "--cluster", "x8xH100"], "x8xH100"),
    ("cluster empty", ["plan", "mlp-tiny", "--cluster", ""], "--cluster"),
    # strategies and meshes
    (
        "strategy unknown",
        ["plan", "mlp-tiny", "--cluster", "cpu:2", "--strategy", "magic"],
        "magic",
    ),
    ("strategy product", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--strategy", "tp=3"], "tp=3"),
    (
        "strategy zero degree",
        ["plan", "mlp-tiny", "--cluster", "cpu:2", "--strategy", "tp=0,dp=2"],
        "tp=0",
    ),  # fmt: skip
    (
        "strategy and mesh",
        ["plan", "mlp-tiny", "--cluster", "cpu:2", "--strategy", "dp=2", "--mesh", "dp=2"],
        "dp=2",
    ),  # fmt: skip
    ("mesh not a size", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--mesh", "dp=x"], "dp=x"),
    ("mesh size zero", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--mesh", "dp=0"], "dp=0"),
    ("mesh axis twice", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--mesh", "dp=1,dp=2"], "dp"),
    ("mesh too big", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--mesh", "dp=4"], "4"),
    # sizes and budgets
    ("batch size 0", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--batch-size", "0"], "'0'"),
    ("batch size -3", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--batch-size", "-3"], "-3"),
    ("batch size text", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--batch-size", "lots"], "lots"),
    ("seq len 0", ["plan", "gpt2-tiny", "--cluster", "cpu:2", "--seq-len", "0"], "'0'"),
    (
        "seq len too long",
        ["plan", "gpt2-tiny", "--cluster", "cpu:2", "--seq-len", "100000"],
        "100000",
    ),  # fmt: skip
    ("budget 0", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--memory-budget", "0"], "'0'"),
    ("budget negative", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--memory-budget=-5GB"], "-5GB"),
    ("budget unit", ["plan", "mlp-tiny", "--cluster", "cpu:2", "--memory-budget", "40XB"], "40XB"),
    (
        "budget too small",
        ["plan", "mlp-tiny", "--cluster", "cpu:2", "--memory-budget", "1KB"],
        "budget",
    ),  # fmt: skip
    # profile and output files
    (
        "profile missing",
        ["plan", "mlp-tiny", "--cluster", "cpu:2", "--profile", "{d}/nope.json"],
        "nope.json",
    ),  # fmt: skip
    (
        "profile not json",
        ["plan", "mlp-tiny", "--cluster", "cpu:2", "--profile", "{d}/profile_bad.json"],
        "profile_bad.json",
    ),  # fmt: skip
    (
        "profile wrong schema",
        ["plan", "mlp-tiny", "--cluster", "cpu:2", "--profile", "{d}/profile_wrong.json"],
        "profile_wrong.json",
    ),  # fmt: skip
    (
        "json into no dir",
        ["plan", "mlp-tiny", "--cluster", "cpu:2", "--json", "{d}/no/p.json"],
        "no/p.json",
    ),  # fmt: skip
    (
        "visualize suffix",
        ["plan", "mlp-tiny", "--cluster", "cpu:2", "--visualize", "{d}/p.txt"],
        "p.txt",
    ),  # fmt: skip
    # plan files and tampered plans
    ("plan missing", ["explain", "{d}/nope.json"], "nope.json"),
    ("plan not json", ["explain", "{d}/plan_bad.json"], "plan_bad.json"),
    ("plan not object", ["explain", "{d}/plan_list.json"], "list"),
    ("plan version", ["explain", "{d}/plan_version.json"], "7"),
    ("plan nan cost", ["explain", "{d}/plan_nan.json"], "nan"),
    ("plan unknown collective", ["explain", "{d}/plan_kind.json"], "all_scatter"),
    ("plan duplicate node", ["explain", "{d}/plan_dup.json"], "unique"),
    ("plan bad source size", ["explain", "{d}/plan_source.json", "--node", "linear"], "-4"),
    (
        "plan without model",
        ["explain", "{d}/plan_nomodel.json", "--node", "linear"],
        "source.model",
    ),  # fmt: skip
    ("explain unknown node", ["explain", "{d}/mlp.json", "--node", "nope"], "nope"),
    ("explain --top 0", ["explain", "{d}/mlp.json", "--top", "0"], "'0'"),
    ("explain --model alone", ["explain", "{d}/mlp.json", "--model", "mlp-tiny"], "mlp-tiny"),
    ("diff models", ["diff", "{d}/mlp.json", "{d}/plan_other.json"], "gpt2-tiny"),
    ("diff --limit -1", ["diff", "{d}/mlp.json", "{d}/mlp.json", "--limit", "-1"], "-1"),
    # run options: refused before any rank is spawned
    ("run unknown model", ["run", "no-such-model", "--nproc", "2"], "no-such-model"),
    ("run missing file", ["run", "{d}/missing.py:build"], "missing.py"),
    ("run nproc 0", ["run", "mlp-tiny", "--nproc", "0"], "'0'"),
    ("run nproc 100000", ["run", "mlp-tiny", "--nproc", "100000"], "100000"),
    ("run steps -1", ["run", "mlp-tiny", "--steps", "-1"], "-1"),
    ("run steps 0", ["run", "mlp-tiny", "--steps", "0"], "'0'"),
    ("run timeout 0", ["run", "mlp-tiny", "--timeout", "0"], "'0'"),
    ("run timeout nan", ["run", "mlp-tiny", "--timeout", "nan"], "nan"),
    ("run mesh vs nproc", ["run", "mlp-tiny", "--nproc", "2", "--mesh", "dp=2,tp=2"], "dp=2,tp=2"),
    ("run pp without pp axis", ["run", "mlp-tiny", "--strategy", "pp", "--mesh", "dp=2"], "dp=2"),
    ("run strategy", ["run", "mlp-tiny", "--strategy", "3d"], "3d"),
    # emit and calibrate options
    ("emit into a file", ["emit", "mlp-tiny", "-o", "{d}/raises.py"], "raises.py"),
    ("emit steps 0", ["emit", "mlp-tiny", "-o", "{d}/job", "--steps", "0"], "'0'"),
    ("emit lr nan", ["emit", "mlp-tiny", "-o", "{d}/job", "--lr", "nan"], "nan"),
    ("emit nproc 0", ["emit", "mlp-tiny", "-o", "{d}/job", "--nproc", "0"], "'0'"),
    ("emit unknown model", ["emit", "nope-model", "-o", "{d}/job"], "nope-model"),
    ("calibrate nproc 1", ["calibrate", "--nproc", "1"], "'1'"),
    ("calibrate budget 0", ["calibrate", "--budget", "0"], "'0'"),
    ("calibrate timeout -1", ["calibrate", "--timeout=-1"], "-1"),
    ("calibrate no dir", ["calibrate", "-o", "{d}/no/p.json"], "no/p.json"),
]


@pytest.fixture(scope="module")
def other_plan(files: Path) -> Path:
    """A plan of another model, for diff."""
    path = files / "plan_other.json"
    obj = json.loads((files / "mlp.json").read_text())
    obj["source"]["model"] = "gpt2-tiny"
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, files, other_plan, capsys) -> None:  # type: ignore[no-untyped-def]
    name, argv, given = case
    argv = [a.replace("{d}", str(files)) for a in argv]
    capsys.readouterr()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, (name, code, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"autopar {argv[0]}")]
    assert len(lines) == 1, err  # one paragraph (argparse's usage line above it aside)
    text = lines[0]
    assert given.replace("{d}/", "") in text, (given, text)
    assert any(w in text.lower() for w in FIX_WORDS), text
    assert seconds < LIMIT_S, f"{name}: {seconds:.1f} s"


def test_catalogue_size() -> None:
    assert len(CLI_CASES) + len(API_CASES) >= 40


def test_a_model_without_rules_is_replicated_not_refused(files, capsys) -> None:
    """Not bad input: an op with no sharding rule runs replicated, and the plan says so."""
    assert main(["plan", f"{files}/ruleless.py:build", "--cluster", "cpu:2", "--no-baselines"]) == 0
    assert "replicated (no sharding rule): special_bessel_j0" in capsys.readouterr().out


def _model() -> torch.nn.Module:
    return torch.nn.Linear(2, 2)


def _check_against_other_model(files: Path) -> None:
    from autopar.plan_check import check_against
    from autopar.planning.session import capture_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture_model(f"{files}/ruleless.py:build", None, None)
    check_against(Plan.load(files / "mlp.json"), captured)


def _spawn_bad_timeout(_: Path) -> None:
    from autopar.runtime.ranks import spawn_ranks

    spawn_ranks(print, 2, timeout_s=-1)


def _run_config(_: Path) -> None:
    from autopar.launch import RunConfig

    RunConfig("mlp-tiny", steps=0).validate()


def _calibrate(_: Path) -> None:
    from autopar.cli.calibrate import calibrate_on_ranks

    calibrate_on_ranks(1)


def _capture(_: Path) -> None:
    from autopar.capture import capture

    capture("a model", ())  # type: ignore[arg-type]


# (id, call, exception type, what the message must show as given)
API_CASES: list[tuple[str, Callable[[Path], Any], type[BaseException], str]] = [
    (
        "compile strategy",
        lambda d: autopar.compile(_model(), strategy="magic"),
        ValueError,
        "magic",
    ),  # fmt: skip
    ("compile timeout 0", lambda d: autopar.compile(_model(), timeout=0), ValueError, "0"),
    (
        "compile timeout nan",
        lambda d: autopar.compile(_model(), timeout=math.nan),
        ValueError,
        "nan",
    ),  # fmt: skip
    ("compile precision", lambda d: autopar.compile(_model(), precision="fp8"), ValueError, "fp8"),
    ("compile plan path", lambda d: autopar.compile(_model(), plan="p.json"), TypeError, "str"),  # type: ignore[arg-type]
    (
        "compile without group",
        lambda d: autopar.compile(_model()),
        RuntimeError,
        "init_process_group",
    ),  # fmt: skip
    ("mesh size 0", lambda d: autopar.MeshSpec.of({"dp": 0}), ValueError, "0"),
    ("mesh as text", lambda d: autopar.MeshSpec.of("dp=2"), TypeError, "dp=2"),  # type: ignore[arg-type]
    ("plan from json", lambda d: Plan.from_json({"version": 2}), PlanError, "mesh"),
    ("plan tampered", lambda d: Plan.load(d / "plan_nan.json"), PlanError, "nan"),
    ("plan of another model", _check_against_other_model, PlanError, "does not match"),
    ("spawn timeout", _spawn_bad_timeout, ValueError, "-1"),
    ("run config steps", _run_config, ValueError, "0"),
    ("calibrate nproc", _calibrate, ValueError, "1"),
    ("capture not a module", _capture, TypeError, "str"),
    (
        "resolve unknown",
        lambda d: __import__("autopar.models").models.resolve("nope"),
        ValueError,
        "nope",
    ),  # fmt: skip
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case, files) -> None:  # type: ignore[no-untyped-def]
    name, call, kind, given = case
    start = time.perf_counter()
    with pytest.raises(kind) as info:
        call(files)
    seconds = time.perf_counter() - start
    text = str(info.value)
    assert given in text, (name, text)
    assert any(w in text.lower() for w in FIX_WORDS) or kind is TypeError, text
    assert seconds < LIMIT_S, f"{name}: {seconds:.1f} s"

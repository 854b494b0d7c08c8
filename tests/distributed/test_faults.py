"""Faults end cleanly and say why: a rank that raises, crashes (os._exit, SIGKILL) or hangs.

``autopar run`` end to end for a rank that raises (its message, rank and exit code are
shown, exit 3, not blamed on the survivor) and one that exits or is killed (every rank
ends within 5 s of the fault); ``runtime.ranks.spawn_ranks`` for a collective that is
never matched (every rank ends within the collective timeout + 5 s) and for
``autopar.compile(timeout=)`` inside a process group whose own timeout is long; a
tampered plan given to ``autopar.compile(plan=)`` is refused on every rank before a step.
Short timeouts (3 s) keep the module short.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from autopar.cli import main
from autopar.runtime.ranks import RanksFailed, spawn_ranks

TIMEOUT_S = 3.0
SLACK_S = 5.0

MODEL = """import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

MODE, STAMP = {mode!r}, {stamp!r}


def build():
    from autopar.zoo import build as zoo_build

    if dist.get_rank() == 1:
        Path(STAMP).write_text(repr(time.time()))
        if MODE == "raise":
            raise RuntimeError("rank one refuses to build")
        if MODE == "exit":
            os._exit(7)
        if MODE == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    return zoo_build("mlp-tiny")
"""

# rank functions: spawned ranks import them by module name, so they live in a module on
# sys.path (a spawned child gets the parent's sys.path), not in this test module
RANKS = """import json
import time
from collections.abc import Iterator
from pathlib import Path


def unmatched(rank, nproc, stamp):
    import torch
    import torch.distributed as dist

    if rank == 1:
        Path(stamp).write_text(repr(time.time()))
        time.sleep(600)  # never joins the all_reduce rank 0 waits in
    dist.all_reduce(torch.ones(2))


def compiled_hang(rank, nproc, stamp, timeout):
    import torch

    import autopar
    from autopar.zoo import build

    model, args, kwargs = build("mlp-tiny")
    compiled = autopar.compile(model, args, kwargs, strategy="dp", timeout=timeout)
    if rank == 1:
        Path(stamp).write_text(repr(time.time()))
        time.sleep(600)  # rank 0's gradient all-reduce on the mesh group is never matched
    compiled.step(*args, **kwargs)


def tampered(rank, nproc, text):
    import autopar
    from autopar.plan import Plan
    from autopar.zoo import build

    model, args, kwargs = build("mlp-tiny")
    plan = Plan.from_json(json.loads(text))
    autopar.compile(model, args, kwargs, plan=plan, mesh=plan.mesh)
    return "stepped"
"""


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    d = tmp_path_factory.mktemp("fault_ranks")
    (d / "autopar_fault_ranks.py").write_text(RANKS)
    sys.path.insert(0, str(d))
    try:
        yield importlib.import_module("autopar_fault_ranks")
    finally:
        sys.path.remove(str(d))


def _run(tmp_path: Path, mode: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    stamp = tmp_path / "stamp"
    model = tmp_path / f"fault_{mode}.py"
    model.write_text(MODEL.format(mode=mode, stamp=str(stamp)))
    proc = subprocess.run(
        [sys.executable, "-m", "autopar", "run", f"{model}:build", "--nproc", "2", "--steps", "1",
         "--strategy", "dp", *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    ended = time.time()
    assert stamp.exists(), proc.stdout + proc.stderr
    return proc, ended - float(stamp.read_text())


def test_a_rank_that_raises_is_named_with_its_message(tmp_path: Path) -> None:
    proc, after = _run(tmp_path, "raise")
    err = proc.stderr
    assert proc.returncode == 3, proc.stdout + err
    assert "rank 1 of 2 failed (exit code 1): RuntimeError: rank one refuses to build" in err
    assert "fault_raise.py" in err and "in build" in err and "Traceback" not in err
    assert "rank 0 of 2 failed" not in err  # the survivor is not blamed
    assert after < SLACK_S, f"ranks ended {after:.1f} s after the fault"


@pytest.mark.parametrize(
    "mode, says", [("exit", "exit code 7"), ("kill", "killed by signal SIGKILL")]
)
def test_a_crashed_rank_ends_every_rank(tmp_path: Path, mode: str, says: str) -> None:
    proc, after = _run(tmp_path, mode)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"rank 1 of 2 died ({says}) without reporting an error" in proc.stderr
    assert after < SLACK_S, f"ranks ended {after:.1f} s after the crash"


def test_an_unmatched_collective_ends_within_the_timeout(ranks: ModuleType, tmp_path: Path) -> None:
    stamp = tmp_path / "stamp"
    with pytest.raises(RanksFailed) as info:
        spawn_ranks(ranks.unmatched, 2, (str(stamp),), timeout_s=TIMEOUT_S, backend="gloo")
    after = time.time() - float(stamp.read_text())
    text = str(info.value)
    assert info.value.rank == 0 and "collective timeout (3 s)" in text and "Ranks [1]" in text
    assert after < TIMEOUT_S + SLACK_S, f"ranks ended {after:.1f} s after the hang"


def test_compile_timeout_applies_inside_a_longer_process_group(
    ranks: ModuleType, tmp_path: Path
) -> None:
    stamp = tmp_path / "stamp"
    with pytest.raises(RanksFailed) as info:  # the process group itself waits 120 s
        spawn_ranks(ranks.compiled_hang, 2, (str(stamp), TIMEOUT_S), timeout_s=120,
                    backend="gloo")  # fmt: skip
    after = time.time() - float(stamp.read_text())
    assert info.value.rank == 0 and "Timed out" in str(info.value), str(info.value)
    assert after < TIMEOUT_S + SLACK_S, f"ranks ended {after:.1f} s after the hang"


def test_a_tampered_plan_is_refused_before_any_step(
    ranks: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plan.json"
    assert main(["plan", "mlp-tiny", "--cluster", "cpu:2", "--strategy", "dp", "--no-baselines",
                 "--json", str(path)]) == 0  # fmt: skip
    obj = json.loads(path.read_text())
    next(n for n in obj["nodes"] if n["name"] == "mse_loss")["outs"] = [[{"kind": "replicate"}]]
    for r in obj["reshards"]:
        if r["src"] == "mse_loss":
            r["src_layout"], r["collectives"] = [{"kind": "replicate"}], []
    with pytest.raises(RanksFailed) as info:
        spawn_ranks(ranks.tampered, 2, (json.dumps(obj),), timeout_s=30, backend="gloo")
    assert "PlanError" in str(info.value) and "refused at node 'mse_loss'" in str(info.value)

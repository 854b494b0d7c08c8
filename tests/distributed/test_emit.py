"""``autopar emit`` end to end: the emitted program under torchrun on gloo matches one
process training the same model on the same batch, and imports nothing of the planner
(no capture, rules, cost model, solver, code generator, pulp) while it runs. No test here
sets PYTHONPATH: the program must find everything from its own directory."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autopar.cli import main
from autopar.models import resolve

STEPS = 3
FORBIDDEN = ("autopar.capture", "autopar.solve", "autopar.strategies", "autopar.cost",
             "autopar.codegen", "autopar.pipeline", "autopar.cli", "autopar.api",
             "autopar.planning", "pulp", "highspy", "cost_models")  # fmt: skip
WRAPPER = """import runpy, sys, json
sys.argv = [{train!r}]
runpy.run_path({train!r}, run_name="__main__")
import os
bad = sorted(m for m in sys.modules if m.startswith({forbidden!r}))
with open(os.path.join({out!r}, "modules." + os.environ["RANK"]), "w") as f:
    json.dump(bad, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reference(model_spec: str, batch: int, seq: int) -> list[float]:
    torch.manual_seed(0)
    model, args, kwargs = resolve(model_spec, "cpu", batch, seq)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(*args, **kwargs).loss
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _emit_and_run(tmp_path: Path, options: list[str], nproc: int) -> tuple[list[float], str]:
    out = tmp_path / "job"
    assert main(["emit", "gpt2-tiny", "--nproc", str(nproc), *options, "-o", str(out),
                 "--steps", str(STEPS)]) == 0  # fmt: skip
    assert {"program.py", "train.py", "plan.json", "launch.sh"} <= {p.name for p in out.iterdir()}
    assert f"torchrun --nproc-per-node {nproc}" in (out / "launch.sh").read_text()
    wrapper = tmp_path / "run_and_report.py"
    wrapper.write_text(WRAPPER.format(train=str(out / "train.py"), forbidden=FORBIDDEN,
                                      out=str(tmp_path)))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
         "--master-port", str(_free_port()), str(wrapper)],
        capture_output=True, text=True, timeout=240, env=env, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in range(nproc):
        imported = (tmp_path / f"modules.{r}").read_text()
        assert imported == "[]", f"rank {r} imported planner modules: {imported}"
    got = [
        float(x) for x in re.findall(r"^step \d+ loss ([0-9.]+) .* tokens/s$", proc.stdout, re.M)
    ]
    return got, (out / "program.py").read_text()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["dp", "tp", "fsdp"])
def test_emitted_program_matches_one_process(tmp_path: Path, strategy: str) -> None:
    got, source = _emit_and_run(tmp_path, ["--strategy", strategy], 2)
    assert len(got) == STEPS
    assert got == pytest.approx(_reference("gpt2-tiny", 4, 16), rel=1e-5, abs=4e-5)
    assert got[-1] < got[0]  # it trains
    assert "class GPT2Block(torch.nn.Module)" in source  # one class for both layers
    if strategy == "fsdp":
        assert "rt.fully_shard(" in source
    if strategy == "dp":
        assert "rt.reduce_gradients(" in source
    if strategy == "tp":
        assert "'all_reduce', 'tp'" in source or "'all_gather', 'tp'" in source


@pytest.mark.timeout(400)
def test_emitted_2d_program_on_4_ranks(tmp_path: Path) -> None:
    got, source = _emit_and_run(tmp_path, ["--mesh", "dp=2,tp=2", "--strategy", "tp"], 4)
    assert got == pytest.approx(_reference("gpt2-tiny", 4, 16), rel=1e-5, abs=4e-5)
    assert "MESH = (('dp', 2), ('tp', 2))" in source

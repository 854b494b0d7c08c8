"""``autopar emit`` end to end: the emitted train.py on 2 gloo ranks under torchrun
matches one process training the same model on the same batch."""

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

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3


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
        losses.append(float(loss))
    return losses


@pytest.mark.timeout(200)
def test_emitted_program_matches_one_process(tmp_path: Path) -> None:
    out = tmp_path / "job"
    assert main(["emit", "gpt2-tiny", "--nproc", "2", "--strategy", "tp", "-o", str(out),
                 "--steps", str(STEPS)]) == 0  # fmt: skip
    assert {"train.py", "plan.json", "launch.sh"} <= {p.name for p in out.iterdir()}
    assert "torchrun --nproc-per-node 2" in (out / "launch.sh").read_text()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(_free_port()), str(out / "train.py")],
        capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = [
        float(x) for x in re.findall(r"^step \d+ loss ([0-9.]+) .* tokens/s$", proc.stdout, re.M)
    ]
    assert len(got) == STEPS, proc.stdout
    want = _reference("gpt2-tiny", 4, 16)
    assert got == pytest.approx(want, rel=1e-5, abs=4e-5)
    assert got[-1] < got[0]  # it trains

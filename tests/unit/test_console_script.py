"""The installed console script works from any directory, with nothing on PYTHONPATH: the
bundled models ship inside the package (autopar.zoo), not in the checkout's examples/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _autopar() -> str:
    beside = Path(sys.executable).parent / "autopar"
    found = str(beside) if beside.exists() else shutil.which("autopar")
    assert found, "the `autopar` console script is not installed: run `pip install -e .`"
    return found


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [_autopar(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(300)
def test_plan_a_tiny_bundled_model_from_another_directory(tmp_path: Path) -> None:
    proc = _run(["plan", "gpt2-tiny", "--cluster", "cpu:2"], tmp_path, 240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(600)
def test_plan_llama_7b_for_8xh100_from_another_directory(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    proc = _run(["plan", "llama-7b", "--cluster", "8xH100", "--json", str(out)], tmp_path, 540)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    plan = json.loads(out.read_text())
    assert plan["predicted"]["step_time_s"] > 0

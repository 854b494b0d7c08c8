"""``autopar run --check`` end to end on 2 CPU ranks, as a user would call it."""

from __future__ import annotations

import subprocess
import sys


def test_run_check_passes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "autopar", "run", "mlp-tiny", "--nproc", "2", "--steps", "2",
         "--strategy", "dp", "--check", "--timeout", "120"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check passed" in proc.stdout
    assert "step 1: loss" in proc.stdout and "tokens/s" in proc.stdout


def test_run_check_pipeline_and_mismatch_exit_codes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "autopar", "run", "gpt2-tiny", "--nproc", "2", "--steps", "2",
         "--mesh", "pp=2", "--check", "--timeout", "180"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check passed" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "autopar", "run", "gpt2-tiny", "--nproc", "2", "--mesh", "dp=4"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr

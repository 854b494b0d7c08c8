"""examples/text_classification.py: BERT for sequence classification trained on 2 gloo
ranks through autopar.compile, started from another directory with nothing on PYTHONPATH;
its loss goes down."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "text_classification.py"


@pytest.mark.timeout(400)
def test_bert_classifier_trains_on_2_ranks(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--nproc", "2", "--epochs", "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 ranks" in proc.stdout, proc.stdout[-2000:]
    steps = re.findall(r"^step \d+ loss ([0-9.]+)", proc.stdout, re.M)
    assert len(steps) == 36, proc.stdout[-2000:]
    epochs = [float(x) for x in re.findall(r"^epoch \d+ mean loss ([0-9.]+)", proc.stdout, re.M)]
    assert len(epochs) == 3 and epochs[-1] < epochs[0] - 0.02, epochs

"""``autopar calibrate`` end to end on 2 gloo ranks: a real, short calibration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from autopar.mesh import MeshSpec
from cost_models import ClusterSpec, CostModel, Profile
from cost_models.calibrate import CALIBRATED_KINDS


def test_calibrate_writes_a_usable_profile(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, "-m", "autopar", "calibrate", "--nproc", "2", "-o", str(out),
         "--budget", "3", "--timeout", "90", "--backend", "gloo"],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "profile written to" in proc.stdout and "all_reduce" in proc.stdout
    p = Profile.load(out)
    assert p.matmul_flops["fp32"] > 0 and p.mem_bw is not None and p.mem_bw > 0
    assert p.intra_bw is not None and p.intra_bw > 0
    assert p.intra_alpha is not None and p.intra_alpha >= 0
    assert p.launch_floor_s is not None and p.launch_floor_s > 0
    assert set(p.collectives) == set(CALIBRATED_KINDS)
    assert all(f.bandwidth > 0 for f in p.collectives.values())
    assert "2 gloo/dtensor ranks" in p.note
    cm = CostModel(ClusterSpec.cpu(2), MeshSpec.of(2), p)
    assert cm.collective_time("all_reduce", 1 << 20, 0) > 0


def test_calibrate_bad_usage(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "autopar", "calibrate", "--nproc", "1", "-o",
         str(tmp_path / "p.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--nproc must be a whole number from 2" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "autopar", "calibrate", "-o", str(tmp_path / "no" / "p.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "does not exist" in proc.stderr

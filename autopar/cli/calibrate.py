"""``autopar calibrate``: measure this machine on N local ranks and write a Profile JSON.

Contract: ``calibrate_on_ranks(nproc, budget_s, timeout, backend, path)`` spawns ``nproc``
ranks (gloo on CPU; NCCL when asked, or by default when there is one GPU per rank),
runs ``autopar.runtime.overhead.calibrate_runtime`` (the hardware micro-benchmarks of
``cost_models.calibrate`` plus the runtime's own per-call costs) on all of them and returns rank 0's
``Calibration``, or raises ``RanksFailed`` when a rank fails, a rank dies, or one
collective waits more than ``timeout`` seconds for its peers (every rank is ended then).
``cmd_calibrate`` checks its options and the output directory before spawning, writes
the profile (only rank 0's result is written, by the parent) and prints the fitted
figures. Exit codes follow ``autopar.cli``: 0 written, 2 bad usage, 3 a rank failed.

  autopar calibrate --nproc 2 -o profile.json
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from autopar.cli.common import EXIT_CODES, MAX_PROCS, count, seconds
from autopar.timeouts import DEFAULT_TIMEOUT_S, check_timeout


def _calibrate_rank(rank: int, nproc: int, budget_s: float, path: str) -> Any:
    from autopar.runtime.overhead import calibrate_runtime

    cal = calibrate_runtime(budget_s=budget_s, path=path)
    return cal if rank == 0 else None


def calibrate_on_ranks(
    nproc: int,
    budget_s: float = 8.0,
    timeout: float = DEFAULT_TIMEOUT_S,
    backend: str = "auto",
    path: str = "dtensor",
) -> Any:
    """Rank 0's ``Calibration`` from ``nproc`` freshly spawned ranks."""
    from autopar.runtime.ranks import spawn_ranks

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 2:
        raise ValueError(f"--nproc must be an int >= 2 (collectives need a group), got {nproc!r}")
    if not isinstance(budget_s, (int, float)) or not math.isfinite(budget_s) or budget_s <= 0:
        raise ValueError(f"--budget must be a number of seconds > 0, got {budget_s!r}; e.g. 8")
    check_timeout(timeout, "--timeout")
    return spawn_ranks(
        _calibrate_rank, nproc, (budget_s, path), timeout_s=timeout, backend=backend,
        what="calibration", hint="; raise --timeout or lower --budget",
    )[0]  # fmt: skip


def cmd_calibrate(args: argparse.Namespace) -> int:
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(
            f"-o {args.output!r}: the directory {out_dir!r} does not exist; create it or "
            "write the profile elsewhere, e.g. -o profile.json"
        )
    if os.path.isdir(args.output):
        raise IsADirectoryError(
            f"-o {args.output!r} is a directory; name a file, e.g. -o {os.path.join(args.output, 'profile.json')}"
        )
    cal = calibrate_on_ranks(args.nproc, args.budget, args.timeout, args.backend, args.path)
    cal.profile.save(args.output)
    print(cal.table())
    print(f"profile written to {args.output} ({cal.seconds:.1f} s of measuring)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "calibrate", help="measure this machine (compute, memory, collectives) into a profile",
        epilog="example: autopar calibrate --nproc 2 -o profile.json; then autopar plan "
        "MODEL --cluster cpu:2 --profile profile.json\n"
        "--timeout: seconds one collective may wait for its peers before every rank is stopped\n"
        f"{EXIT_CODES}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--nproc", type=count("--nproc", 2, MAX_PROCS), default=2,
                   help="ranks to measure on (>= 2)")  # fmt: skip
    p.add_argument("-o", "--output", default="profile.json", help="profile JSON to write")
    p.add_argument("--budget", type=seconds("--budget", "8"), default=8.0,
                   help="seconds of measuring, roughly")  # fmt: skip
    p.add_argument("--timeout", type=seconds("--timeout"), default=DEFAULT_TIMEOUT_S,
                   help=f"collective timeout in seconds ({DEFAULT_TIMEOUT_S:g})")  # fmt: skip
    p.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    p.add_argument("--path", default="dtensor", choices=["dtensor", "c10d"],
                   help="time collectives as DTensor issues them (autopar's runtime) or raw")  # fmt: skip
    p.set_defaults(fn=cmd_calibrate)

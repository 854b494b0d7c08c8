"""``autopar calibrate``: measure this machine on N local ranks and write a Profile JSON.

Contract: ``calibrate_on_ranks(nproc, budget_s, timeout, backend, path)`` spawns ``nproc``
ranks (gloo on CPU; NCCL when asked, or by default when there is one GPU per rank),
runs ``cost_models.calibrate.run_calibration`` on all of them and returns rank 0's
``Calibration``, or raises RuntimeError when a rank fails, a rank dies, or ``timeout``
seconds pass (every rank is ended then). ``cmd_calibrate`` writes the profile (only
rank 0's result is written, by the parent) and prints the fitted figures. Exit codes
follow ``autopar.cli``: 0 written, 1 the calibration failed, 2 bad usage.

  autopar calibrate --nproc 2 -o profile.json
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import queue
import time
import traceback
from datetime import timedelta
from typing import Any

from autopar.launch import _port


def _rank_main(
    rank: int, nproc: int, port: int, backend: str, cfg: tuple[float, float, str], out: Any
) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    budget_s, timeout, path = cfg
    code = 0
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=nproc, timeout=timedelta(seconds=timeout))  # fmt: skip
        from cost_models.calibrate import run_calibration

        cal = run_calibration(budget_s=budget_s, path=path)
        # pickled here, so that a payload that cannot be sent fails this rank visibly
        out.put((rank, "ok", pickle.dumps(cal if rank == 0 else None)))
        out.close()
        out.join_thread()  # flushed before os._exit
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent, which ends every rank
        out.put((rank, "error", traceback.format_exc()))
        code = 1
    os._exit(code)


def _backend(name: str, nproc: int) -> str:
    if name not in ("auto", "gloo", "nccl"):
        raise ValueError(f"--backend must be auto, gloo or nccl, got {name!r}")
    if name != "auto":
        return name
    import torch

    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= nproc else "gloo"


def calibrate_on_ranks(
    nproc: int,
    budget_s: float = 8.0,
    timeout: float = 120.0,
    backend: str = "auto",
    path: str = "dtensor",
) -> Any:
    """Rank 0's ``Calibration`` from ``nproc`` freshly spawned ranks."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 2:
        raise ValueError(f"--nproc must be an int >= 2 (collectives need a group), got {nproc!r}")
    if not timeout > 0 or not budget_s > 0:
        raise ValueError(f"--timeout and --budget must be > 0, got {timeout!r}, {budget_s!r}")
    chosen = _backend(backend, nproc)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _port()
    procs = [
        ctx.Process(
            target=_rank_main, args=(r, nproc, port, chosen, (budget_s, timeout, path), out)
        )
        for r in range(nproc)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    results: dict[int, Any] = {}
    try:
        while len(results) < nproc:
            try:
                rank, status, payload = out.get(
                    timeout=max(0.1, min(1.0, deadline - time.monotonic()))
                )
            except queue.Empty:
                if time.monotonic() > deadline:
                    missing = sorted(set(range(nproc)) - set(results))
                    raise RuntimeError(
                        f"calibration timed out after {timeout:.0f} s waiting for ranks "
                        f"{missing}; raise --timeout or lower --budget"
                    ) from None
                dead = [
                    r for r, p in enumerate(procs) if p.exitcode is not None and r not in results
                ]
                if dead:
                    raise RuntimeError(
                        f"calibration rank {dead[0]} exited with code "
                        f"{procs[dead[0]].exitcode} before reporting"
                    ) from None
                continue
            if status == "error":
                raise RuntimeError(f"calibration rank {rank} failed:\n{payload}")
            results[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    return results[0]


def cmd_calibrate(args: argparse.Namespace) -> int:
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"-o {args.output!r}: directory {out_dir!r} does not exist")
    try:
        cal = calibrate_on_ranks(args.nproc, args.budget, args.timeout, args.backend, args.path)
    except RuntimeError as err:
        print(f"autopar calibrate: {err}")
        return 1
    cal.profile.save(args.output)
    print(cal.table())
    print(f"profile written to {args.output} ({cal.seconds:.1f} s of measuring)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "calibrate", help="measure this machine (compute, memory, collectives) into a profile",
        epilog="example: autopar calibrate --nproc 2 -o profile.json; then autopar plan "
        "MODEL --cluster cpu:2 --profile profile.json",
    )  # fmt: skip
    p.add_argument("--nproc", type=int, default=2, help="ranks to measure on (>= 2)")
    p.add_argument("-o", "--output", default="profile.json", help="profile JSON to write")
    p.add_argument("--budget", type=float, default=8.0, help="seconds of measuring, roughly")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up")
    p.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    p.add_argument("--path", default="dtensor", choices=["dtensor", "c10d"],
                   help="time collectives as DTensor issues them (autopar's runtime) or raw")  # fmt: skip
    p.set_defaults(fn=cmd_calibrate)

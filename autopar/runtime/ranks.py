"""Local rank processes: run one function on N freshly spawned ranks of a process group.

Contract: ``spawn_ranks(fn, nproc, args, timeout_s=, backend=, what=, hint=)`` spawns
``nproc`` processes; each sets ``torch.set_num_threads(1)``, joins a process group over
127.0.0.1 (``backend`` "gloo", "nccl" or "auto": NCCL when there are enough GPUs; each
NCCL rank takes GPU ``rank``), calls ``fn(rank, nproc, *args)`` and sends its (pickled)
result back; then ``barrier()``, ``destroy_process_group()`` and ``os._exit``, the exit
that does not abort gloo ranks. It returns the results in rank order. Any failure ends
every rank and raises ``RanksFailed`` (a RuntimeError) whose message names ``what``: a
rank's exception with its traceback, a rank that died before reporting, or the timeout
and the ranks waited on (followed by ``hint``). ``fn`` must be a top-level function.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any


class RanksFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def choose_backend(name: str, nproc: int) -> str:
    if name not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be auto, gloo or nccl, got {name!r}")
    if name != "auto":
        return name
    import torch

    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= nproc else "gloo"


def _rank_main(
    rank: int, nproc: int, port: int, backend: str, pg_timeout_s: float,
    fn: Callable[..., Any], args: tuple[Any, ...], out: Any,
) -> None:  # fmt: skip
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    code = 0
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=nproc, timeout=timedelta(seconds=pg_timeout_s))  # fmt: skip
        result = fn(rank, nproc, *args)
        # pickled here, so that a result that cannot be sent fails this rank visibly
        out.put((rank, "ok", pickle.dumps(result)))
        out.close()
        out.join_thread()  # flushed before os._exit
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent, which ends every rank
        out.put((rank, "error", traceback.format_exc()))
        code = 1
    os._exit(code)


def spawn_ranks(
    fn: Callable[..., Any],
    nproc: int,
    args: tuple[Any, ...] = (),
    *,
    timeout_s: float,
    backend: str = "auto",
    what: str = "a rank",
    hint: str = "",
) -> list[Any]:
    chosen = choose_backend(backend, nproc)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, nproc, port, chosen, timeout_s, fn, args, out))
        for r in range(nproc)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
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
                    raise RanksFailed(
                        f"{what} timed out after {timeout_s:.0f} s waiting for ranks {missing}"
                        f"{hint}"
                    ) from None
                dead = [
                    r for r, p in enumerate(procs) if p.exitcode is not None and r not in results
                ]
                if dead:
                    raise RanksFailed(
                        f"{what}: rank {dead[0]} exited with code {procs[dead[0]].exitcode} "
                        "before reporting"
                    ) from None
                continue
            if status == "error":
                raise RanksFailed(f"{what}: rank {rank} failed:\n{payload}")
            results[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    return [results[r] for r in range(nproc)]

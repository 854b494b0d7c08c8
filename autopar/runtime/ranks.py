"""Local rank processes and the collective timeout: run a function on N fresh ranks.

Contract:
- ``spawn_ranks(fn, nproc, args, timeout_s=, backend=, what=, hint=, deadline_s=None)``
  spawns ``nproc`` processes; each sets ``torch.set_num_threads(1)``, joins a process
  group over 127.0.0.1 (``backend`` "gloo", "nccl" or "auto": NCCL when there are enough
  GPUs; each NCCL rank takes GPU ``rank``) whose collectives, and those of every group
  created later in the rank, wait at most ``timeout_s`` for their peers (the rendezvous
  itself may take longer), calls ``fn(rank, nproc, *args)``, sends its pickled result
  through its own pipe, then ``barrier()``, ``destroy_process_group()`` and ``os._exit(0)``
  (the exit that does not abort gloo ranks). It returns the results in rank order.
- Any failure ends every rank at once (SIGKILL; clean-up waits for all ranks together,
  a few seconds at most) and raises ``RanksFailed`` naming the root cause: the first rank
  that raised (its exception type, message and innermost frame; the full traceback with
  ``AUTOPAR_TRACEBACK=1``), else the first that died without reporting (its exit code or
  signal), else a collective that timed out (and which ranks were then still running,
  probably stuck). Errors that only follow from another rank's failure (a closed
  connection) are never blamed. A crash ends every rank within ~1 s of being seen, a hang
  within ``timeout_s`` + ~1 s. ``deadline_s`` (default none) bounds the whole run.
- ``DEFAULT_TIMEOUT_S`` / ``check_timeout`` come from ``autopar.timeouts`` (300 s).
- ``timed_device_mesh(device_type, sizes, names, timeout_s)``: a DeviceMesh whose every
  dimension gets its own group with that collective timeout (``mesh_timeout_override``
  is its ``backend_override``), so ``autopar.compile(timeout=)`` applies inside a user's
  process group whatever that group's own timeout is.
``fn`` must be a top-level function.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import re
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any

from autopar.timeouts import DEFAULT_TIMEOUT_S, check_timeout

RENDEZVOUS_S = 120.0  # joining the group: ranks start seconds apart (importing torch)
GRACE_S = 1.0  # after a first failure: how long the other ranks' reports are awaited
_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe",
              "connection refused", "socket closed", "recv returned 0")  # fmt: skip
_TIMED_OUT = ("timed out", "timeout")


class RanksFailed(RuntimeError):
    """A rank failed; ``rank``, ``exit_code`` (negative: killed by that signal) and
    ``error`` (``"Type: message"``, or None for a crash) describe the root cause."""

    def __init__(self, text: str, rank: int | None, exit_code: int | None, error: str | None):
        super().__init__(text)
        self.rank, self.exit_code, self.error = rank, exit_code, error


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


def mesh_timeout_override(ndim: int, timeout_s: float, backend: str) -> dict[int, Any]:
    import torch.distributed as dist

    out: dict[int, Any] = {}
    for dim in range(ndim):
        if backend == "nccl":
            opts: Any = dist.ProcessGroupNCCL.Options()
        else:
            opts = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
        opts._timeout = timedelta(seconds=timeout_s)
        out[dim] = (backend, opts)
    return out


def timed_device_mesh(
    device_type: str, sizes: tuple[int, ...], names: tuple[str, ...], timeout_s: float
) -> Any:
    """A DeviceMesh whose every dimension has its own group with this collective timeout."""
    from torch.distributed.device_mesh import init_device_mesh

    backend = "nccl" if device_type == "cuda" else "gloo"
    override = mesh_timeout_override(len(sizes), check_timeout(timeout_s), backend)
    return init_device_mesh(device_type, sizes, mesh_dim_names=names, backend_override=override)  # type: ignore[arg-type]


def _default_group_timeout(timeout_s: float) -> None:
    """Groups created later in this rank (device meshes, pipeline stages) wait as long
    as the world group does. Only in ranks autopar spawns: torch keeps this default in
    its c10d module."""
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = timedelta(seconds=timeout_s)
    if getattr(c10d, "default_pg_nccl_timeout", None) is not None:
        c10d.default_pg_nccl_timeout = timedelta(seconds=timeout_s)


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"


def _rank_main(
    rank: int, nproc: int, port: int, backend: str, timeout_s: float,
    fn: Callable[..., Any], args: tuple[Any, ...], conn: Connection,
) -> None:  # fmt: skip
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    code, sent = 0, False
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        join = timedelta(seconds=max(timeout_s, RENDEZVOUS_S))
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=nproc, timeout=join)  # fmt: skip
        dist.distributed_c10d._set_pg_timeout(timedelta(seconds=timeout_s))
        _default_group_timeout(timeout_s)
        result = fn(rank, nproc, *args)
        # pickled here, so that a result that cannot be sent fails this rank visibly
        conn.send_bytes(pickle.dumps(("ok", pickle.dumps(result))))
        sent = True
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which ends every rank
        report = {"error": f"{type(err).__name__}: {err}", "where": _where(err),
                  "traceback": traceback.format_exc(), "after_result": sent}  # fmt: skip
        try:
            conn.send_bytes(pickle.dumps(("error", report)))
        except OSError:
            pass
        code = 1
    conn.close()  # a Pipe's send has finished writing: nothing is lost at os._exit
    os._exit(code)


@dataclass
class _Failure:
    rank: int
    at: float
    error: str | None = None  # None: died without reporting
    where: str = ""
    traceback: str = ""
    exit_code: int | None = None
    after_result: bool = False

    @property
    def secondary(self) -> bool:
        """Follows from another rank's failure, or a timeout: never the root cause first."""
        text = (self.error or "").lower()
        return self.error is not None and any(w in text for w in (*_PEER_LOST, *_TIMED_OUT))

    @property
    def timed_out(self) -> bool:
        text = (self.error or "").lower()
        return any(w in text for w in _TIMED_OUT) and not any(w in text for w in _PEER_LOST)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _clean(text: str) -> str:
    """Without the C++ source locations torch puts in front of its messages."""
    return re.sub(r"\[[^\]\s]*\.(?:cc|cpp|h|hpp):\d+\] ", "", text)


def _first_line(text: str | None, limit: int = 300) -> str:
    line = _clean(text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit] + " ..."


@dataclass
class _Watch:
    """The parent's view of the ranks while they run."""

    procs: list[Any]
    conns: dict[Any, int]
    results: dict[int, Any] = field(default_factory=dict)
    failures: list[_Failure] = field(default_factory=list)

    def read(self, conn: Any) -> None:
        rank = self.conns[conn]
        try:
            status, payload = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            del self.conns[conn]
            return
        if status == "ok":
            self.results[rank] = pickle.loads(payload)
        else:
            self.failures.append(_Failure(rank, time.monotonic(), payload["error"], payload["where"],
                                          payload["traceback"], 1, payload["after_result"]))  # fmt: skip

    def reap(self, rank: int) -> None:
        """A rank ended: a crash if it left no report and no result."""
        p = self.procs[rank]
        p.join(timeout=2.0)  # its sentinel fired: it is being reaped
        for conn in [c for c, r in self.conns.items() if r == rank]:
            while conn in self.conns and conn.poll():
                self.read(conn)
        known = {f.rank for f in self.failures}
        if rank not in known and (rank not in self.results or p.exitcode != 0):
            self.failures.append(_Failure(rank, time.monotonic(), exit_code=p.exitcode))
        for f in self.failures:
            if f.rank == rank:
                f.exit_code = p.exitcode


def _explain(w: _Watch, what: str, timeout_s: float, hint: str) -> RanksFailed:
    nproc = len(w.procs)
    head = f"{what}: " if what else ""
    first = [f for f in w.failures if not f.secondary] or w.failures
    root = min(first, key=lambda f: f.at)
    stuck = [r for r in range(nproc) if r not in w.results and all(f.rank != r for f in w.failures)]
    others = sorted({f.rank for f in w.failures} - {root.rank})
    if root.error is not None and root.timed_out:
        text = (f"{head}rank {root.rank} of {nproc} waited longer than the collective timeout "
                f"({timeout_s:g} s) for its peers ({_first_line(root.error)})")  # fmt: skip
        if stuck:
            text += (f". Ranks {stuck} were still running then and never joined that collective: "
                     "they are stuck (a hang, a deadlock, or a collective the others did not "
                     "issue) or slower than the timeout allows")  # fmt: skip
        text += "; raise --timeout (autopar.compile(timeout=)) if the work is just slow"
    elif root.error is not None:
        text = f"{head}rank {root.rank} of {nproc} failed ({_exit_text(root.exit_code)}): "
        error = _clean(root.error)
        text += error if len(error) < 3000 else error[:3000] + " ..."
        if root.where:
            text += f"\n  raised at {root.where}"
        if os.environ.get("AUTOPAR_TRACEBACK") == "1":
            text += "\n" + root.traceback.rstrip()
        else:
            text += "\n  (set AUTOPAR_TRACEBACK=1 to print that rank's whole traceback)"
    else:
        text = (f"{head}rank {root.rank} of {nproc} died ({_exit_text(root.exit_code)}) "
                "without reporting an error: a crash in native code, os._exit, the "
                "out-of-memory killer or a signal")  # fmt: skip
    if others:
        text += f"\n  ranks {others} failed after it (they lost their peer) and "
    else:
        text += "\n  "
    text += "every other rank was stopped" + (f"{hint}" if hint else "")
    return RanksFailed(text, root.rank, root.exit_code, root.error)


def _stop(procs: list[Any], wait_s: float) -> None:
    """End every rank still running at once, then wait for all together."""
    for p in procs:
        if p.is_alive():
            p.kill()
    end = time.monotonic() + wait_s
    for p in procs:
        p.join(timeout=max(0.0, end - time.monotonic()))


def spawn_ranks(
    fn: Callable[..., Any],
    nproc: int,
    args: tuple[Any, ...] = (),
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    backend: str = "auto",
    what: str = "spawn_ranks",
    hint: str = "",
    deadline_s: float | None = None,
) -> list[Any]:
    timeout_s = check_timeout(timeout_s)
    chosen = choose_backend(backend, nproc)
    ctx = mp.get_context("spawn")
    port = free_port()
    pipes = [ctx.Pipe(duplex=False) for _ in range(nproc)]
    procs = [
        ctx.Process(target=_rank_main, args=(r, nproc, port, chosen, timeout_s, fn, args, pipes[r][1]))
        for r in range(nproc)
    ]  # fmt: skip
    for p in procs:
        p.start()
    for _, send in pipes:
        send.close()  # the children hold the write ends: EOF once a rank is gone
    w = _Watch(procs, {recv: r for r, (recv, _) in enumerate(pipes)})
    start = time.monotonic()
    try:
        while len(w.results) < nproc or w.failures:
            if w.failures:  # a root cause at once; the others' reports only follow from it
                done = all(not p.is_alive() for p in procs)
                waited = time.monotonic() - min(f.at for f in w.failures)
                if done or waited > GRACE_S or any(not f.secondary for f in w.failures):
                    raise _explain(w, what, timeout_s, hint)
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                missing = sorted(set(range(nproc)) - set(w.results))
                raise RanksFailed(f"{what or 'the ranks'} did not finish within {deadline_s:g} s; ranks "
                                  f"{missing} were still running{hint}", None, None, None)  # fmt: skip
            alive = {p.sentinel: r for r, p in enumerate(procs) if p.exitcode is None}
            ready = wait([*w.conns, *alive], timeout=0.2)
            for obj in ready:
                if obj in w.conns:
                    w.read(obj)
            for obj in ready:
                if obj in alive:
                    w.reap(alive[obj])
        _stop_when_done(procs)
    except BaseException:
        _stop(procs, 5.0)
        raise
    finally:
        for recv, _ in pipes:
            recv.close()
    return [w.results[r] for r in range(nproc)]


def _stop_when_done(procs: list[Any]) -> None:
    """Every rank reported: they pass the final barrier and exit; stragglers are ended."""
    end = time.monotonic() + 10.0
    for p in procs:
        p.join(timeout=max(0.0, end - time.monotonic()))
    _stop(procs, 2.0)

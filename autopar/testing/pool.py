"""A reusable pool of gloo worker processes: run a function on N gloo ranks.

Spawning a rank costs seconds (importing torch), so a pool is started once (lazily, on the
first ``run``) and reused for many tasks::

    from autopar.testing import GlooPool

    pool = GlooPool(2)
    results = pool.run(my_fn, 3)      # calls my_fn(rank, world_size, 3) on every rank
    pool.close()

``fn`` must be a top-level function of a module: each rank finds it again by its module name
and qualname, importing the module by name or, when it is not importable by name (a pytest
test module, a script), loading its file by path. Its arguments and return values must be
picklable. Nothing relies on ``sys.path`` or the working directory.

Semantics of ``run``:

* every rank runs with one thread and gets ``torch.manual_seed(0)`` before the task;
* if any rank raises, the run fails on every rank: an ``AssertionError`` is raised whose message
  holds the traceback of each failing rank.  If the other ranks do not finish shortly after a
  failure (typically: they are blocked in a collective the failed rank never entered), the pool
  is killed and restarted lazily on the next ``run``;
* if the task does not finish within ``timeout_s``, all ranks are killed, the pool restarts
  lazily on the next ``run`` and a ``TimeoutError`` naming ``fn`` is raised;
* if a worker process dies, all ranks are killed and an ``AssertionError`` is raised.

After each task the ranks agree on success by all-reducing a failure flag on a dedicated
process group (so an unmatched user collective can never pair with the agreement).  If that
agreement itself fails, the pool is marked broken and restarted before the next task.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import queue
import socket
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

from autopar.testing._worker import function_ref, worker_main

_STARTUP_TIMEOUT_S = 120.0
_CLOSE_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fn_name(fn: Callable[..., Any]) -> str:
    mod = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{mod}.{name}"


_LIVE_POOLS: weakref.WeakSet[GlooPool] = weakref.WeakSet()


@atexit.register
def _close_all_pools() -> None:
    for pool in list(_LIVE_POOLS):
        try:
            pool.close()
        except Exception:
            pass


class GlooPool:
    """``world_size`` spawned processes joined in a gloo process group, reused across tasks."""

    def __init__(
        self,
        world_size: int,
        *,
        collective_timeout_s: float = 60.0,
        failure_grace_s: float = 5.0,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.collective_timeout_s = collective_timeout_s
        # How long to wait for the other ranks once one rank has failed.
        self.failure_grace_s = failure_grace_s
        self._ctx = mp.get_context("spawn")
        self._procs: list[Any] = []
        self._task_qs: list[Any] = []
        self._result_q: Any = None
        self._task_counter = 0
        self._broken = False
        self._closed = False
        self.starts = 0  # number of times the workers were (re)started; useful in tests
        _LIVE_POOLS.add(self)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return bool(self._procs)

    def start(self) -> None:
        """Start the workers now (``run`` does this lazily)."""
        if self._closed:
            raise RuntimeError("GlooPool is closed")
        if self._broken:
            self._kill()
        if self.started:
            return
        last_err: BaseException | None = None
        for _attempt in range(3):  # the free port may be taken between probing and binding
            try:
                self._start_once()
                self.starts += 1
                return
            except RuntimeError as e:
                last_err = e
                self._kill()
        raise RuntimeError(f"could not start GlooPool({self.world_size})") from last_err

    def _start_once(self) -> None:
        port = _free_port()
        self._result_q = self._ctx.Queue()
        self._task_qs = [self._ctx.Queue() for _ in range(self.world_size)]
        env_backup = {
            k: os.environ.get(k) for k in ("TORCH_DISTRIBUTED_DEBUG", "GLOO_SOCKET_IFNAME")
        }
        os.environ.pop("TORCH_DISTRIBUTED_DEBUG", None)
        if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
            os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        try:
            for rank in range(self.world_size):
                p = self._ctx.Process(
                    target=worker_main,
                    args=(
                        rank,
                        self.world_size,
                        port,
                        self.collective_timeout_s,
                        self._task_qs[rank],
                        self._result_q,
                    ),
                    name=f"gloo-rank{rank}",
                    daemon=True,
                )
                p.start()
                self._procs.append(p)
        finally:
            for k, v in env_backup.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

        ready: set[int] = set()
        deadline = time.monotonic() + max(_STARTUP_TIMEOUT_S, self.collective_timeout_s)
        while len(ready) < self.world_size:
            msg = self._get(deadline)
            if msg is None:
                dead = self._dead_ranks()
                if dead or time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"GlooPool({self.world_size}) failed to start "
                        f"(dead ranks: {dead}, ready: {sorted(ready)})"
                    )
                continue
            if msg[0] == "ready":
                ready.add(msg[1])
            elif msg[0] == "init_error":
                raise RuntimeError(f"rank {msg[1]} failed to initialise:\n{msg[2]}")

    def close(self) -> None:
        """Stop the workers cleanly (barrier, destroy_process_group); kill any leftovers."""
        if self._closed:
            return
        self._closed = True
        _LIVE_POOLS.discard(self)
        if self.started and not self._broken:
            for q in self._task_qs:
                try:
                    q.put(("stop",))
                except Exception:
                    pass
            deadline = time.monotonic() + _CLOSE_TIMEOUT_S
            for p in self._procs:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        self._kill()

    def _kill(self) -> None:
        """Kill every worker (if still alive) and drop the queues."""
        for p in self._procs:
            if p.is_alive():
                p.kill()
        for p in self._procs:
            p.join(timeout=5.0)
            try:
                p.close()
            except ValueError:
                pass  # still running (should not happen after SIGKILL); nothing more to do
        for q in [*self._task_qs, self._result_q]:
            if q is not None:
                q.cancel_join_thread()
                q.close()
        self._procs = []
        self._task_qs = []
        self._result_q = None
        self._broken = False

    def __enter__(self) -> GlooPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running tasks -----------------------------------------------------------------------

    def _get(self, deadline: float) -> Any:
        """One message from the result queue, or None after a short poll interval."""
        wait = min(0.2, max(0.0, deadline - time.monotonic()))
        try:
            return self._result_q.get(timeout=wait)
        except queue.Empty:
            return None

    def _dead_ranks(self) -> list[int]:
        return [r for r, p in enumerate(self._procs) if not p.is_alive()]

    def run(self, fn: Callable[..., Any], *args: Any, timeout_s: float = 120.0) -> list[Any]:
        """Run top-level ``fn(rank, world_size, *args)`` on every rank.

        Returns the per-rank results (index = rank).  Raises ``AssertionError`` (holding each
        failing rank's traceback) if any rank raises, and ``TimeoutError`` if the task does not
        finish within ``timeout_s`` (all ranks are then killed and restarted on the next run).
        """
        name = _fn_name(fn)
        ref = function_ref(fn)
        try:
            payload = pickle.dumps(args)
        except Exception as e:
            raise TypeError(f"GlooPool.run: cannot pickle the arguments of {name} ({e})") from e

        self.start()
        self._task_counter += 1
        task_id = self._task_counter
        try:
            return self._run_task(name, task_id, (ref, payload), timeout_s)
        except BaseException:
            # Anything unexpected (including KeyboardInterrupt) leaves the workers in an
            # unknown state: kill them, a fresh pool is started on the next run.
            if self._broken or not isinstance(sys.exc_info()[1], AssertionError | TimeoutError):
                self._kill()
            raise

    def _run_task(
        self, name: str, task_id: int, task: tuple[Any, bytes], timeout_s: float
    ) -> list[Any]:
        n = self.world_size
        for q in self._task_qs:
            q.put(("task", task_id, *task))

        outcomes: dict[int, tuple[bool, Any]] = {}
        agreed: set[int] = set()
        broken: dict[int, str] = {}
        start = time.monotonic()
        deadline = start + timeout_s
        first_failure_at: float | None = None

        while len(agreed) < n:
            msg = self._get(deadline)
            now = time.monotonic()
            if msg is not None:
                kind = msg[0]
                if kind in ("outcome", "agreed", "broken") and msg[1] != task_id:
                    continue  # stale message from an earlier task
                if kind == "outcome":
                    _, _, rank, ok, out = msg
                    outcomes[rank] = (ok, out)
                    if not ok and first_failure_at is None:
                        first_failure_at = now
                elif kind == "agreed":
                    agreed.add(msg[2])
                elif kind == "broken":
                    broken[msg[2]] = msg[3]
                    self._broken = True
                continue

            if broken and (len(agreed) + len(broken) >= n or self._dead_ranks()):
                break
            dead = [r for r in self._dead_ranks() if r not in broken]
            if dead:
                self._broken = True
                codes = {r: self._procs[r].exitcode for r in dead}
                raise AssertionError(
                    self._failure_message(
                        name, outcomes, extra=f"worker process(es) died (rank: exitcode) {codes}"
                    )
                )
            if first_failure_at is not None and now - first_failure_at > self.failure_grace_s:
                missing = sorted(set(range(n)) - agreed)
                self._broken = True
                raise AssertionError(
                    self._failure_message(
                        name,
                        outcomes,
                        extra=(
                            f"rank(s) {missing} did not finish within {self.failure_grace_s:.0f} s "
                            "after the failure (probably blocked in a collective); "
                            "the pool will be restarted"
                        ),
                    )
                )
            if now >= deadline:
                missing = sorted(r for r in range(n) if r not in outcomes)
                stuck = sorted(set(range(n)) - agreed - set(missing))
                self._broken = True
                raise TimeoutError(
                    f"GlooPool.run({name}) did not finish within {timeout_s:g} s on "
                    f"{n} ranks: rank(s) {missing} still running the task, rank(s) {stuck} "
                    "waiting for the others; all ranks were killed and the pool will be "
                    "restarted"
                )

        if broken:
            details = "\n".join(f"--- rank {r} (agreement) ---\n{tb}" for r, tb in broken.items())
            raise AssertionError(
                self._failure_message(
                    name, outcomes, extra=f"the success agreement failed:\n{details}"
                )
            )
        if any(not ok for ok, _ in outcomes.values()):
            raise AssertionError(self._failure_message(name, outcomes))
        return [pickle.loads(outcomes[r][1]) for r in range(n)]

    def _failure_message(
        self, name: str, outcomes: dict[int, tuple[bool, Any]], extra: str = ""
    ) -> str:
        failed = sorted(r for r, (ok, _) in outcomes.items() if not ok)
        lines = [f"GlooPool.run({name}) failed on rank(s) {failed} of {self.world_size}"]
        if extra:
            lines.append(extra)
        for r in failed:
            lines.append(f"--- rank {r} traceback ---\n{outcomes[r][1].rstrip()}")
        return "\n".join(lines)

"""The rank side of ``GlooPool``: one spawned process per rank, and how it finds a task's function.

Contract: ``function_ref(fn)`` (in the parent) names a function as ``(module name, file path,
qualname)`` and raises TypeError for one that cannot be found again by name (a lambda, a
nested function); ``resolve_function(ref)`` (in a worker) imports the module by name, or,
when that fails or finds another file (a pytest test module is not importable by name),
loads the file by its path under that module name, then walks the qualname.
``worker_main`` initialises gloo, serves tasks until told to stop and always ends with
``os._exit``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import queue
import signal
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

FunctionRef = tuple[str, str | None, str]  # (module name, file path or None, qualname)


def _walk(module: ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def function_ref(fn: Callable[..., Any]) -> FunctionRef:
    mod_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = sys.modules.get(mod_name or "")
    found: Any = None
    if module is not None and qualname and "<" not in qualname:
        try:
            found = _walk(module, qualname)
        except AttributeError:
            found = None
    if found is not fn or module is None or mod_name is None or qualname is None:
        raise TypeError(
            f"GlooPool.run: {fn!r} cannot be sent to the ranks: the function must be defined "
            "at the top level of a module (not a lambda or a nested function), so that each "
            "rank can import it by its module and name"
        )
    file = getattr(module, "__file__", None)
    return mod_name, str(Path(file).resolve()) if file else None, qualname


def _same_file(module: ModuleType, path: str) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve() == Path(path)


def resolve_function(ref: FunctionRef) -> Callable[..., Any]:
    mod_name, path, qualname = ref
    module = sys.modules.get(mod_name)
    if module is None or (path is not None and not _same_file(module, path)):
        try:
            module = importlib.import_module(mod_name)
        except ImportError:
            module = None
        if module is None or (path is not None and not _same_file(module, path)):
            if path is None:
                raise ImportError(f"cannot import {mod_name}, which defines {qualname}")
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path}, which defines {qualname}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module  # so pickled objects of this module resolve
            spec.loader.exec_module(module)
    return _walk(module, qualname)  # type: ignore[no-any-return]


def worker_main(
    rank: int,
    world_size: int,
    port: int,
    collective_timeout_s: float,
    task_q: Any,
    result_q: Any,
) -> None:
    """Entry point of one rank.  Never returns: always ends with ``os._exit``."""
    parent_pid = os.getppid()
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            except Exception:
                pass
        os.environ.pop("TORCH_DISTRIBUTED_DEBUG", None)

        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        timeout = timedelta(seconds=collective_timeout_s)
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timeout,
        )
        # A separate group for the success agreement: a rank that skipped a user collective
        # must not have its agreement all_reduce matched against that collective.
        agree_group = dist.new_group(backend="gloo", timeout=timeout)
        dist.barrier()
    except BaseException:
        try:
            result_q.put(("init_error", rank, traceback.format_exc()))
        finally:
            os._exit(1)

    result_q.put(("ready", rank))

    while True:
        try:
            msg = task_q.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:  # orphaned: the parent died without closing us
                os._exit(1)
            continue
        if msg[0] == "stop":
            break
        _, task_id, ref, payload = msg

        ok = True
        out: bytes | str
        try:
            torch.manual_seed(0)
            fn = resolve_function(ref)  # first: the arguments may hold objects of its module
            args = pickle.loads(payload)
            value = fn(rank, world_size, *args)
            out = pickle.dumps(value)
        except BaseException:
            ok = False
            out = traceback.format_exc()
        result_q.put(("outcome", task_id, rank, ok, out))

        try:
            flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
            dist.all_reduce(flag, group=agree_group)
            all_ok = int(flag.item()) == 0
        except BaseException:
            result_q.put(("broken", task_id, rank, traceback.format_exc()))
            os._exit(1)
        result_q.put(("agreed", task_id, rank, all_ok))

    try:
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        pass
    os._exit(0)

"""Tests of the gloo process pool itself (autopar.testing.GlooPool).

Functions run on the ranks must live at module top level: each rank finds them again by
module name or, as for this test module (pytest imports it with --import-mode=importlib, so
it is not importable by name), by its file.
"""

import importlib.util
import os
import sys
import time

import pytest
import torch
import torch.distributed as dist

from autopar.testing import GlooPool

# ---- functions executed on the ranks --------------------------------------------------------


def rank_info(rank, world_size, tag):
    return {
        "rank": rank,
        "world_size": world_size,
        "dist_rank": dist.get_rank(),
        "dist_world": dist.get_world_size(),
        "backend": dist.get_backend(),
        "threads": torch.get_num_threads(),
        "tag": tag,
        "pid": os.getpid(),
        "rand": torch.rand(3),  # seeded with torch.manual_seed(0) before every task
    }


def all_reduce_sum(rank, world_size):
    t = torch.full((4,), float(rank + 1))
    dist.all_reduce(t)
    return t


def raise_on_rank1(rank, world_size):
    if rank == 1:
        raise ValueError("boom from rank 1")
    return rank


def raise_before_collective(rank, world_size):
    if rank == 1:
        raise RuntimeError("rank 1 gave up before the all_reduce")
    t = torch.ones(1)
    dist.all_reduce(t)  # never completes: rank 1 does not join
    return t


def skip_collective_on_rank1(rank, world_size):
    t = torch.ones(1)
    if rank != 1:
        dist.all_reduce(t)  # rank 1 never joins: the ranks hang
    return t


# ---- tests ---------------------------------------------------------------------------------


def test_returns_per_rank_results(pool2):
    out = pool2.run(rank_info, "hello")
    assert [r["rank"] for r in out] == [0, 1]
    assert all(r["world_size"] == 2 and r["dist_world"] == 2 for r in out)
    assert [r["dist_rank"] for r in out] == [0, 1]
    assert all(r["backend"] == "gloo" and r["threads"] == 1 for r in out)
    assert all(r["tag"] == "hello" for r in out)
    assert out[0]["pid"] != out[1]["pid"] != os.getpid()
    torch.manual_seed(0)
    expected = torch.rand(3)
    for r in out:
        torch.testing.assert_close(r["rand"], expected)


def test_all_reduce_2(pool2):
    out = pool2.run(all_reduce_sum)
    for t in out:
        torch.testing.assert_close(t, torch.full((4,), 3.0))


def test_all_reduce_4(pool4):
    out = pool4.run(all_reduce_sum)
    assert len(out) == 4
    for t in out:
        torch.testing.assert_close(t, torch.full((4,), 10.0))


def test_runs_a_function_of_a_module_known_only_by_its_file(pool2, tmp_path):
    path = tmp_path / "rank_task.py"
    path.write_text(
        "import torch.distributed as dist\n"
        "def task(rank, world_size, x):\n"
        "    return (dist.get_rank(), x * 2, __name__)\n"
    )
    name = "autopar_pool_test_only_by_path"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        out = pool2.run(module.task, 21)
    finally:
        del sys.modules[name]
    assert out == [(0, 42, name), (1, 42, name)]


def test_unpicklable_fn_is_rejected_in_parent(pool2):
    with pytest.raises(TypeError, match="top level"):
        pool2.run(lambda rank, world_size: rank)


def test_rank_exception_fails_run_and_pool_survives(pool2):
    pool2.run(all_reduce_sum)  # make sure the pool is started
    starts = pool2.starts
    with pytest.raises(AssertionError) as excinfo:
        pool2.run(raise_on_rank1)
    msg = str(excinfo.value)
    assert "raise_on_rank1" in msg
    assert "rank 1" in msg and "ValueError: boom from rank 1" in msg
    assert "Traceback" in msg
    # All ranks finished and agreed: the same workers keep serving tasks.
    out = pool2.run(all_reduce_sum)
    torch.testing.assert_close(out[0], torch.full((4,), 3.0))
    assert pool2.starts == starts


def test_rank_exception_while_others_block_fails_fast(pool2):
    pool2.failure_grace_s = 1.0
    try:
        t0 = time.monotonic()
        with pytest.raises(AssertionError) as excinfo:
            pool2.run(raise_before_collective, timeout_s=60)
        assert time.monotonic() - t0 < 20
    finally:
        pool2.failure_grace_s = 5.0
    msg = str(excinfo.value)
    assert "rank 1 gave up before the all_reduce" in msg
    assert "did not finish" in msg
    out = pool2.run(all_reduce_sum)  # restarted lazily
    torch.testing.assert_close(out[1], torch.full((4,), 3.0))


def test_hang_times_out_and_pool_recovers(pool2):
    pool2.run(all_reduce_sum)
    starts = pool2.starts
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="skip_collective_on_rank1"):
        pool2.run(skip_collective_on_rank1, timeout_s=3)
    assert time.monotonic() - t0 < 10
    out = pool2.run(all_reduce_sum)
    torch.testing.assert_close(out[0], torch.full((4,), 3.0))
    assert pool2.starts == starts + 1


def test_close_leaves_no_processes():
    pool = GlooPool(2)
    pool.run(rank_info, None)
    procs = list(pool._procs)
    pids = [p.pid for p in procs]
    exitcodes = []
    real_close = pool._kill

    def spy_kill():
        exitcodes.extend(p.exitcode for p in procs)
        real_close()

    pool._kill = spy_kill
    pool.close()
    assert exitcodes == [0, 0]  # clean shutdown: barrier, destroy_process_group, os._exit(0)
    assert not pool.started
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(rank_info, None)

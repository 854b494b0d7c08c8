"""Distributed checkpoints move between plans, meshes and world sizes, bit for bit.

Saved under dp, tp, fsdp and pp on 2 ranks and dp2 x tp2 on 4 (GPT-2 tiny and LLaMA tiny,
3 AdamW steps), each checkpoint is loaded under every other plan into zeroed parameters
and a fresh optimizer: every parameter and AdamW tensor equals (``torch.equal``) the
saved one. Resume: the 2-rank fsdp run (AdamW) and a 2-rank tp run (SGD with momentum)
continue for 3 steps on 4 ranks and on 1; every loss matches an uninterrupted
single-process run of 6 steps. One pool per rank count; each plan is compiled once per
task and its checkpoint reused for every load. ``autopar run --save`` on 2 processes,
``--resume`` on 1 re-plans and passes ``--check``.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import autopar
from autopar.runtime.checkpoint import CheckpointError, global_view, read_metadata
from autopar.testing import GlooPool
from autopar.testing.parity import TOLERANCE, build_tiny

MODELS = ("gpt2", "llama")
TWO = {"dp": ("dp", None), "tp": ("tp", None), "fsdp": ("fsdp", None), "pp": ("pp", None)}
FOUR = {"dp2xtp2": ("tp", {"dp": 2, "tp": 2})}
STEPS = 3


class Clock:
    """Seconds spent per kind of work in one task (reported by the tests)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    def add(self, kind: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[kind] = self.seconds.get(kind, 0.0) + now - since
        return now

    def report(self) -> dict[str, float]:
        return {**self.seconds, "task": time.perf_counter() - self.start}


def _optimizer(kind: str, params: Any) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=False)


def _loss(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.loss


def _compile(clock: Clock, example: str, strategy: str, mesh: Any) -> tuple[Any, Any, Any]:
    t = time.perf_counter()
    model, args, kwargs = build_tiny(example)
    compiled = autopar.compile(model, args, kwargs, strategy=strategy, mesh=mesh)
    clock.add("compile", t)
    return compiled, args, kwargs


def _save(clock: Clock, path: str, model: Any, opt: torch.optim.Optimizer) -> None:
    t = time.perf_counter()
    autopar.save_checkpoint(path, model, opt, step=STEPS)
    clock.add("save", t)


def _load(clock: Clock, path: str, model: Any, opt: torch.optim.Optimizer) -> int:
    t = time.perf_counter()
    step = autopar.load_checkpoint(path, model, opt)
    clock.add("load", t)
    return step


def _train(model: Any, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> list[float]:
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        losses.append(float(model.step(*args, **kwargs)))
        opt.step()
    return losses


def full_state(model: Any, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Every parameter and optimizer tensor made whole from its checkpoint view (checked
    against the program's own gather), merged over the pipeline's ranks."""
    programs = getattr(model, "_models", [model])
    out: dict[str, torch.Tensor] = {}
    for prog in programs:
        gathered = prog.full_state_dict()
        for fqn, p in prog.program.named_parameters():
            spec, ctx = prog.params_spec[fqn], prog.ctx
            whole = global_view(p, spec, ctx).full_tensor().clone()  # not the live storage
            assert torch.equal(whole, gathered[fqn]), (
                f"{fqn}: the checkpoint view is not the parameter"
            )
            out[fqn] = whole
            for name, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    v = global_view(v, spec, ctx).full_tensor()
                out[f"optim.{fqn}.{name}"] = v.detach().clone()
    if hasattr(model, "_models"):
        every: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(every, out)
        for part in every:
            out.update(part)
    return out


def _zero(model: Any) -> None:
    with torch.no_grad():
        for p in model.parameters():
            (p.to_local() if hasattr(p, "to_local") else p).zero_()


def _load_all(
    clock: Clock, model: Any, root: str, example: str, sources: list[str]
) -> dict[str, Any]:
    """Load each source checkpoint into zeroed parameters and a fresh AdamW."""
    out = {}
    for src in sources:
        _zero(model)
        opt = _optimizer("adamw", model.parameters())
        step = _load(clock, os.path.join(root, example, src), model, opt)
        out[src] = (step, full_state(model, opt))
    return out


def save_and_load_two(rank: int, world: int, root: str) -> dict[str, Any]:
    """2 ranks: train and save under each plan, then load every checkpoint (the 4-rank
    one included) under each plan; plus the SGD run the resume test continues."""
    clock = Clock()
    result: dict[str, Any] = {"truth": {}, "losses": {}, "loads": {}}
    for example in MODELS:
        built = {}
        for name, (strategy, mesh) in TWO.items():
            model, args, kwargs = _compile(clock, example, strategy, mesh)
            opt = _optimizer("adamw", model.parameters())
            result["losses"][example, name] = _train(model, opt, args, kwargs)
            _save(clock, os.path.join(root, example, name), model, opt)
            result["truth"][example, name] = full_state(model, opt)
            built[name] = model
        for name, model in built.items():
            others = [s for s in (*TWO, *FOUR) if s != name]
            for src, got in _load_all(clock, model, root, example, others).items():
                result["loads"][example, name, src] = got
    model, args, kwargs = _compile(clock, "gpt2", "tp", None)
    opt = _optimizer("sgd", model.parameters())
    result["losses"]["gpt2", "sgd"] = _train(model, opt, args, kwargs)
    _save(clock, os.path.join(root, "gpt2", "sgd"), model, opt)
    result["seconds"] = clock.report()
    return result


def save_four(rank: int, world: int, root: str) -> dict[str, Any]:
    """4 ranks: train and save dp2 x tp2; and an FSDP-over-TP parameter (same dim on
    both axes: a _StridedShard) round-trips through its checkpoint view."""
    clock, truth = Clock(), {}
    for example in MODELS:
        for name, (strategy, mesh) in FOUR.items():
            model, args, kwargs = _compile(clock, example, strategy, mesh)
            opt = _optimizer("adamw", model.parameters())
            _train(model, opt, args, kwargs)
            _save(clock, os.path.join(root, example, name), model, opt)
            truth[example, name] = full_state(model, opt)
    return {"truth": truth, "strided": _strided(root), "seconds": clock.report()}


def _strided(root: str) -> bool:
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    import autopar.runtime as rt
    from autopar.runtime.program import local_piece

    ctx = rt.Context.create((("dp", 2), ("tp", 2)))
    full = torch.arange(60, dtype=torch.float32).reshape(10, 6)
    spec = rt.Param((10, 6), torch.float32, "S(0)S(0)", "fsdp", fsdp=("dp", 0))
    tp_piece = local_piece(full, spec.held(ctx.axes.names), ctx.axes)  # 5 rows of 10
    fsdp = DTensor.from_local(tp_piece.chunk(2, 0)[ctx.axes.rank["dp"]], ctx.mesh["dp"],
                              [Shard(0)], run_check=False, shape=tp_piece.shape,
                              stride=tp_piece.stride())  # fmt: skip
    view = global_view(fsdp, spec, ctx)
    logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    path = os.path.join(root, "strided")
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": view}, checkpoint_id=path)
    target = distribute_tensor(torch.zeros(10, 6), ctx.mesh, [Shard(1), Replicate()])
    dcp.load({"w": target}, checkpoint_id=path)
    return bool(torch.equal(view.full_tensor(), full) and torch.equal(target.full_tensor(), full))


def load_and_resume_four(rank: int, world: int, root: str) -> dict[str, Any]:
    """4 ranks: load each 2-rank checkpoint under dp2 x tp2; then resume the AdamW
    (fsdp) and SGD runs for 3 steps."""
    clock, out = Clock(), {"loads": {}, "resumed": {}}
    for example in MODELS:
        for name, (strategy, mesh) in FOUR.items():
            model, args, kwargs = _compile(clock, example, strategy, mesh)
            for src, got in _load_all(clock, model, root, example, list(TWO)).items():
                out["loads"][example, name, src] = got
            for kind, src in (("adamw", "fsdp"), ("sgd", "sgd"))[: 2 if example == "gpt2" else 1]:
                out["resumed"][example, kind] = _resume(clock, model, os.path.join(root, example, src),
                                                        kind, args, kwargs)  # fmt: skip
    out["seconds"] = clock.report()
    return out


def _resume(clock: Clock, model: Any, path: str, kind: str, args: Any, kwargs: Any) -> list[float]:
    opt = _optimizer(kind, model.parameters())
    assert _load(clock, path, model, opt) == STEPS
    return _train(model, opt, args, kwargs)


def resume_one(rank: int, world: int, root: str) -> dict[str, Any]:
    """1 rank: resume both runs, and the uninterrupted single-process references."""
    clock, out = Clock(), {"resumed": {}, "reference": {}}
    for example in MODELS:
        model, args, kwargs = _compile(clock, example, "auto", None)  # "dp" refuses 1 rank
        for kind, src in (("adamw", "fsdp"), ("sgd", "sgd"))[: 2 if example == "gpt2" else 1]:
            out["resumed"][example, kind] = _resume(clock, model, os.path.join(root, example, src),
                                                    kind, args, kwargs)  # fmt: skip
            ref, args, kwargs = build_tiny(example)
            opt = _optimizer(kind, ref.parameters())
            losses = []
            for _ in range(2 * STEPS):
                opt.zero_grad()
                loss = _loss(ref(*args, **kwargs))
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            out["reference"][example, kind] = losses
    out["seconds"] = clock.report()
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("checkpoints"))


def _timed(pool: GlooPool, fn: Any, root: str, timeout_s: float) -> dict[str, Any]:
    out = pool.run(fn, root, timeout_s=timeout_s)[0]
    print(f"{fn.__name__} on {pool.world_size} ranks: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in out["seconds"].items()))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def four_saved(pool4: GlooPool, root: str) -> dict[str, Any]:
    return _timed(pool4, save_four, root, 400)


@pytest.fixture(scope="module")
def two(pool2: GlooPool, root: str, four_saved: dict[str, Any]) -> dict[str, Any]:
    return _timed(pool2, save_and_load_two, root, 600)


@pytest.fixture(scope="module")
def four_loaded(pool4: GlooPool, root: str, two: dict[str, Any]) -> dict[str, Any]:
    return _timed(pool4, load_and_resume_four, root, 400)


def _check_loads(loads: dict[Any, Any], truth: dict[Any, Any]) -> int:
    checked = 0
    for (example, name, src), (step, got) in loads.items():
        want = truth[example, src]
        assert step == STEPS
        assert set(got) == set(want), f"{example} {src} -> {name}: keys {set(want) ^ set(got)}"
        for key, t in want.items():
            assert torch.equal(got[key], t), (
                f"{example}: {key} saved under {src} differs under {name}"
            )
            checked += 1
    return checked


def test_reshard_between_two_rank_plans_and_from_four(
    two: dict[str, Any], four_saved: dict[str, Any]
) -> None:
    truth = {**two["truth"], **four_saved["truth"]}
    assert len(two["loads"]) == len(MODELS) * len(TWO) * (len(TWO) + len(FOUR) - 1)
    assert _check_loads(two["loads"], truth) > 1000
    for example in MODELS:  # each saved AdamW state holds step and both moments
        keys = two["truth"][example, "fsdp"]
        assert any(k.endswith(".exp_avg_sq") for k in keys) and any(
            k.endswith(".step") for k in keys
        )


def test_reshard_to_four_ranks(four_loaded: dict[str, Any], two: dict[str, Any]) -> None:
    assert len(four_loaded["loads"]) == len(MODELS) * len(FOUR) * len(TWO)
    assert _check_loads(four_loaded["loads"], two["truth"]) > 500


def test_fsdp_over_tp_view_is_strided(four_saved: dict[str, Any]) -> None:
    assert four_saved["strided"]


def test_checkpoint_describes_the_model(two: dict[str, Any], root: str) -> None:
    meta = read_metadata(os.path.join(root, "gpt2", "pp"))
    assert meta["world_size"] == 2 and meta["step"] == STEPS and meta["strategy"] == "pp"
    assert meta["params"]["lm_head.weight"]["keys"] == ["transformer.wte.weight", "lm_head.weight"]
    assert meta["params"]["lm_head.weight"]["shape"] == [128, 64]
    assert "stage 0" in meta["plan"] and "stage 1" in meta["plan"]
    assert meta["optimizer"]["type"] == "AdamW"


def test_resume_on_four_and_one_matches_one_process(
    two: dict[str, Any], four_loaded: dict[str, Any], root: str
) -> None:
    with GlooPool(1) as pool1:
        one = _timed(pool1, resume_one, root, 300)
    for (example, kind), ref in one["reference"].items():
        rtol, atol = TOLERANCE[kind]
        first = two["losses"][example, "fsdp" if kind == "adamw" else "sgd"]
        for label, losses in (("2 ranks", first + [None] * STEPS),
                              ("4 ranks", [None] * STEPS + four_loaded["resumed"][example, kind]),
                              ("1 rank", [None] * STEPS + one["resumed"][example, kind])):  # fmt: skip
            for step, (a, b) in enumerate(zip(losses, ref)):
                if a is not None:
                    assert abs(a - b) <= atol + rtol * abs(b), (
                        f"{example} {kind} {label} step {step}: loss {a} vs uninterrupted {b}"
                    )


def test_plain_module_round_trip_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, args, kwargs = build_tiny("gpt2")
    opt = _optimizer("adamw", model.parameters())
    _loss(model(*args, **kwargs)).backward()
    opt.step()
    autopar.save_checkpoint(tmp_path / "ck", model, opt, step=7)
    other = copy.deepcopy(model)
    _zero(other)
    fresh = _optimizer("adamw", other.parameters())
    assert autopar.load_checkpoint(tmp_path / "ck", other, fresh) == 7
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    for p, q in zip(model.parameters(), other.parameters()):
        for name, v in opt.state[p].items():
            assert torch.equal(v, fresh.state[q][name]), name
    with pytest.raises(CheckpointError, match="not an autopar checkpoint"):
        autopar.load_checkpoint(tmp_path, other, fresh)
    llama, _, _ = build_tiny("llama")
    with pytest.raises(CheckpointError, match="was saved from another model"):
        autopar.load_checkpoint(tmp_path / "ck", llama)
    with pytest.raises(CheckpointError, match="holds AdamW state, but a SGD"):
        autopar.load_checkpoint(tmp_path / "ck", other, torch.optim.SGD(other.parameters(), lr=1))


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autopar", "run", "mlp-tiny", *argv],
                          capture_output=True, text=True, timeout=240)  # fmt: skip


def test_cli_resume_replans_for_another_process_count(tmp_path: Path) -> None:
    saved = _cli("--nproc", "2", "--steps", "2", "--strategy", "dp", "--save", str(tmp_path))
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert f"saved step 2 to {tmp_path}" in saved.stdout
    resumed = _cli("--nproc", "1", "--steps", "2", "--resume", str(tmp_path), "--check")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "saved by 2 processes (strategy dp, mesh (dp=2)); re-planned for 1" in resumed.stdout
    assert "step 3: loss" in resumed.stdout and "check passed" in resumed.stdout
    bad = _cli("--nproc", "2", "--resume", str(tmp_path / "none"))
    assert bad.returncode == 2 and "is not an autopar checkpoint" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr

"""Plan quality: autopar's predicted step time against hand-written baselines, priced by
the same cost model.

For each (model, cluster, global batch) configuration (GPT-2, BERT, LLaMA 7B, LLaMA 70B
and a GPT-3 175B-shaped model on 8 to 1024 GPUs; the large models in bf16, as trained)
it builds the model on the meta device, captures it once, and prices:
- DDP, FSDP and Megatron-style TP (a node's GPUs) x DP (across nodes): the flat planner
  with those presets (``autopar.cli.planning.baselines``, no budget: a baseline that does
  not fit the device memory is priced and marked "no fit", and never counts as best);
- the best uniform pp x dp x tp grid: every factorization the coarse ranking keeps (the
  ``GRID_K`` best, more than autopar refines), layers cut evenly, 1F1B, one sample per
  replica per microbatch, each layer under its own ILP plan (``plan3d.price_mesh``
  with ``uniform=True``, the same layer prices autopar uses);
- autopar: the 3D search (``plan3d.search``, here as broad as the grid: ``GRID_K``
  meshes, each also at one sample per replica per microbatch) and the flat ILP ("auto")
  on the DDP and Megatron meshes; the fastest that fits.
It prints per configuration each figure, the ratio best-baseline / autopar (>= 1 means
autopar is at least as fast) and, where autopar wins, what differs (mesh, stages,
microbatches, schedule, parameter placement). Exit status 1 if autopar is slower than
a fitting baseline anywhere. Run: ``python3 -m benchmarks.plan_quality [--only NAME]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

GRID_K = 8


@dataclass(frozen=True)
class Config:
    name: str
    cluster: str
    build: Callable[[], tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]]


def _example(
    module: str, size: str, batch: int, seq: int, bf16: bool = False
) -> Callable[..., Any]:
    def build() -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:
        import importlib

        mod = importlib.import_module(f"autopar.zoo.{module}")
        model, args, kwargs = mod.build(size, device="meta", batch_size=batch, seq_len=seq)
        return (model.to(torch.bfloat16) if bf16 else model), args, kwargs

    return build


def _gpt3(batch: int) -> Callable[..., Any]:
    def build() -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:
        from benchmarks.pipeline_search import _gpt3_175b

        model, _, _ = _gpt3_175b()
        ids = torch.empty((batch, 2048), dtype=torch.long, device="meta")
        return model, (), {"input_ids": ids, "labels": ids}

    return build


CONFIGS = (
    Config("gpt2-small b32", "8xH100", _example("gpt2", "small", 32, 1024)),
    Config("gpt2-small b128", "2x8xA100-80GB", _example("gpt2", "small", 128, 1024)),
    Config("bert-base b64", "8xA100-80GB", _example("bert", "base", 64, 512)),
    Config("bert-base b256", "4x8xH100", _example("bert", "base", 256, 512)),
    Config("llama-7b b16", "8xH100", _example("llama", "7b", 16, 2048, bf16=True)),
    Config("llama-7b b64", "4x8xA100-80GB", _example("llama", "7b", 64, 2048, bf16=True)),
    Config("llama-7b b256", "16x8xH100", _example("llama", "7b", 256, 2048, bf16=True)),
    Config("llama-70b b64", "8x8xH100", _example("llama", "70b", 64, 4096, bf16=True)),
    Config("llama-70b b256", "32x8xH100", _example("llama", "70b", 256, 4096, bf16=True)),
    Config("gpt3-175b b1536", "128x8xA100-80GB", _gpt3(1536)),
    Config("gpt3-175b b512", "64x8xH100", _gpt3(512)),
)


def _flat(captured: Any, cluster: Any, mesh: Any, preset: str, budget: float | None) -> Any:
    from autopar.planning import plan
    from autopar.planning.session import NO_BUDGET

    return plan(captured, cluster, strategy=preset, mesh=mesh, memory_budget=budget or NO_BUDGET)


def _no_unit_axes(mesh: Any) -> Any:
    """One node: Megatron's mesh is just ``tp`` (the tp preset cannot shard a size-1 dp)."""
    from autopar.mesh import MeshSpec

    return MeshSpec(tuple((n, s) for n, s in mesh.axes if s > 1) or mesh.axes)


def _entry(step: float, mem: float, budget: float, what: str) -> dict[str, Any]:
    return {"step": step, "memory": mem, "fits": mem <= budget, "what": what}


def run(cfg: Config) -> dict[str, Any]:
    from autopar.capture import capture
    from autopar.mesh import MeshSpec
    from autopar.pipeline.plan3d import _coarse, price_mesh, search
    from autopar.planning.session import tp_meshes
    from autopar.solve.planner import PlanInfeasibleError
    from cost_models import ClusterSpec

    start = time.perf_counter()
    model, args, kwargs = cfg.build()
    captured = capture(model, args, kwargs)
    cluster = ClusterSpec.parse(cfg.cluster)
    ranked = search(captured, cluster, coarse_k=GRID_K, one_per_replica=True)
    budget, n_dev = ranked.budget, cluster.num_devices
    base: dict[str, dict[str, Any]] = {}
    flat_meshes = {"ddp": (MeshSpec.of(n_dev), "dp"), "fsdp": (MeshSpec.of(n_dev), "fsdp"),
                   "megatron": (_no_unit_axes(tp_meshes(cluster)[-1]), "tp")}  # fmt: skip
    for name, (mesh, preset) in flat_meshes.items():
        try:
            p = _flat(captured, cluster, mesh, preset, None)
        except ValueError as err:  # e.g. a batch that does not split over the devices
            base[name] = _entry(float("inf"), float("inf"), budget, str(err).split(";")[0][:90])
            continue
        mem = float(p.predicted.memory_per_device_bytes)
        base[name] = _entry(p.predicted.step_time_s, mem, budget, f"{mesh} {preset}")
    grid = None
    for pp, dp, tp, _ in _coarse(captured, cluster, ranked.global_batch, "auto", None, GRID_K):
        m = ranked.global_batch // dp
        for c in price_mesh(ranked.pricer, cluster, pp, dp, tp, m, budget, uniform=True):
            if grid is None or (c.fits, -c.step_s) > (grid.fits, -grid.step_s):
                grid = c
    if grid is not None:
        base["uniform grid"] = _entry(grid.step_s, grid.memory_bytes, budget,
                                      f"{grid.mesh} m={grid.microbatches} even 1f1b")  # fmt: skip
    ours: list[dict[str, Any]] = []
    best = ranked.best
    ours.append(_entry(best.step_s, best.memory_bytes, budget,
                       f"{best.mesh} m={best.microbatches} {best.schedule} stages "
                       f"{[j - i for i, j in best.bounds]} layer-plan level {best.level}"))  # fmt: skip
    for mesh, _ in (flat_meshes["ddp"], flat_meshes["megatron"]):
        try:
            p = _flat(captured, cluster, mesh, "auto", budget)
        except (PlanInfeasibleError, ValueError):
            continue
        modes = sorted(set(p.param_modes().values()))
        ours.append(_entry(p.predicted.step_time_s, float(p.predicted.memory_per_device_bytes),
                           budget, f"{mesh} auto ILP, params {'/'.join(modes)}"))  # fmt: skip
    fitting = [o for o in ours if o["fits"]]
    auto = min(fitting or ours, key=lambda o: o["step"])
    return {"cfg": cfg, "auto": auto, "base": base, "seconds": time.perf_counter() - start}


def report(r: dict[str, Any]) -> bool:
    cfg, auto, base = r["cfg"], r["auto"], r["base"]
    fitting = {k: b for k, b in base.items() if b["fits"]}
    print(f"\n{cfg.name} on {cfg.cluster} ({r['seconds']:.0f} s to plan and price)")
    print(f"  autopar        {auto['step']:10.4f} s  {auto['memory'] / 2**30:7.1f} GiB  "
          f"{'' if auto['fits'] else 'NO FIT '}{auto['what']}")  # fmt: skip
    for name, b in base.items():
        ratio = b["step"] / auto["step"]
        print(f"  {name:<14} {b['step']:10.4f} s  {b['memory'] / 2**30:7.1f} GiB  "
              f"{'fits' if b['fits'] else 'no fit'}  x{ratio:.2f}  {b['what']}")  # fmt: skip
    if not fitting:
        print("  no baseline fits in memory" + ("; autopar's plan does" if auto["fits"] else ""))
        return bool(auto["fits"])
    name, b = min(fitting.items(), key=lambda kv: kv[1]["step"])
    ratio = b["step"] / auto["step"]
    ok = auto["fits"] and ratio >= 1 - 1e-9
    verdict = "autopar at least as fast" if ok else "AUTOPAR SLOWER"
    print(
        f"  best baseline {name}: ratio {ratio:.3f} ({verdict}); autopar: {auto['what']}; "
        f"{name}: {b['what']}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="configuration names (prefix match)")
    opts = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    ok = True
    for cfg in CONFIGS:
        if opts.only and not any(cfg.name.startswith(o) for o in opts.only):
            continue
        ok = report(run(cfg)) and ok
    print(
        f"\ntotal {time.perf_counter() - start:.0f} s; "
        f"{'autopar <= best fitting baseline everywhere' if ok else 'autopar LOST somewhere'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

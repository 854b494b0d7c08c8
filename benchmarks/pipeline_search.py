"""Planning time of the 3D (pp x dp x tp) search on big shapes, on this machine.

For a 70B LLaMA (``autopar/zoo/llama.py`` ``build("70b")``, 80 layers) on ``8x8xH100`` at
global batch 64 x 4096 and a GPT-3 175B-shaped GPT-2 (96 layers, hidden 12288, 96 heads,
sequence 2048, vocabulary 51200) on ``128x8xA100-80GB`` at global batch 1536, both built
full depth on the meta device and cast to bf16 (mixed-precision training), it times
``capture`` (torch.export of the whole model), ``plan3d.search`` (coarse ranking, then
per-layer ILPs on each stage's submesh, stage DP, schedules) and ``plan3d.to_plan``.
Limits: 60 s and 120 s for capture + search + plan. Building the module on meta is
timed apart and not charged. ``pipeline_rows()`` is what ``benchmarks.planning_time``
adds to its table. Run: ``python3 -m benchmarks.pipeline_search``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PipelineCase:
    label: str
    key: str  # for --models
    cluster: str
    limit_s: float
    build: Callable[[], tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]]


def _llama_70b() -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:
    from autopar.zoo.llama import build

    model, args, kwargs = build("70b", device="meta", batch_size=64, seq_len=4096)
    return model.to(torch.bfloat16), args, kwargs


def _gpt3_175b() -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]:
    """The model file ``autopar plan benchmarks/gpt3_175b.py:build`` loads, loaded alike."""
    from pathlib import Path

    from autopar.models import resolve

    return resolve(f"{Path(__file__).with_name('gpt3_175b.py')}:build")


CASES = (
    PipelineCase("LLaMA 70B", "llama70b", "8x8xH100", 60.0, _llama_70b),
    PipelineCase("GPT-3 175B", "gpt3", "128x8xA100-80GB", 120.0, _gpt3_175b),
)


@dataclass(frozen=True)
class Timing:
    case: PipelineCase
    build_s: float
    capture_s: float
    search_s: float
    plan_s: float
    nodes: int
    plans_solved: int
    ranked: Any
    plan: Any

    @property
    def total_s(self) -> float:
        return self.capture_s + self.search_s + self.plan_s


def time_case(case: PipelineCase) -> Timing:
    from autopar.capture import capture
    from autopar.pipeline.plan3d import search, to_plan
    from cost_models import ClusterSpec

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    model, args, kwargs = case.build()
    t1 = time.perf_counter()
    captured = capture(model, args, kwargs)
    t2 = time.perf_counter()
    cluster = ClusterSpec.parse(case.cluster)
    ranked = search(captured, cluster)
    t3 = time.perf_counter()
    plan = to_plan(ranked, captured, cluster)
    t4 = time.perf_counter()
    return Timing(case, t1 - t0, t2 - t1, t3 - t2, t4 - t3, len(captured.graph_module.graph.nodes),
                  ranked.pricer.plans_solved, ranked, plan)  # fmt: skip


def report(t: Timing) -> None:
    verdict = "PASS" if t.total_s <= t.case.limit_s else "FAIL"
    print(f"{t.case.label} on {t.case.cluster}: capture {t.capture_s:.1f} s + search "
          f"{t.search_s:.1f} s + plan {t.plan_s:.2f} s = {t.total_s:.1f} s (limit "
          f"{t.case.limit_s:.0f} s) {verdict}; {t.nodes} nodes, {t.plans_solved} layer ILPs "
          f"(build on meta {t.build_s:.2f} s, not charged)", flush=True)  # fmt: skip
    for c in t.ranked.candidates[:5]:
        print(f"  {str(c.mesh):<30} m={c.microbatches:<4} {c.schedule:<16} step "
              f"{c.step_s:8.3f} s  bubble {c.bubble:.3f}  memory "
              f"{c.memory_bytes / 2**30:6.1f} GiB {'fits' if c.fits else 'OVER BUDGET'}")  # fmt: skip


def main() -> int:
    timings = [time_case(case) for case in CASES]
    for t in timings:
        report(t)
    return 0 if all(t.total_s <= t.case.limit_s for t in timings) else 1


if __name__ == "__main__":
    raise SystemExit(main())

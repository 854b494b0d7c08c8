"""Compute-only fidelity: one process, one thread, no communication.

Predicts (with a calibrated profile) and measures a training step (forward, backward,
SGD step) of the small GPT that ``benchmarks/cost_fidelity.py`` uses, at two shapes, and
prints measured / predicted with the predicted compute broken down by op. It isolates
the compute roofline from communication when the 2-rank fidelity misses.

    autopar calibrate --nproc 2 -o /tmp/profile.json
    python benchmarks/compute_fidelity.py --profile /tmp/profile.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = ((4, 64), (8, 128))


def main() -> int:
    import torch

    from autopar.capture import capture
    from autopar.mesh import MeshSpec
    from autopar.solve.planner import make_plan
    from benchmarks.cost_fidelity import _gpt
    from cost_models import ClusterSpec, CostModel
    from cost_models.profile import Profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="a profile from `autopar calibrate`")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    mesh = MeshSpec.of(1)
    cm = CostModel(ClusterSpec.cpu(1), mesh, Profile.load(args.profile))
    for batch, seq in SHAPES:
        model, margs, kwargs = _gpt(batch, seq)
        p = make_plan(capture(model, margs, kwargs), mesh, "auto", cm, optimizer="sgd").predicted
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        times = []
        for i in range(args.steps + 3):
            start = time.perf_counter()
            model(*margs, **kwargs).loss.backward()
            opt.step()
            opt.zero_grad()
            if i >= 3:  # warm-up excluded
                times.append(time.perf_counter() - start)
        measured = statistics.median(times)
        print(f"b{batch} s{seq}: measured {measured * 1e3:.1f} ms, predicted "
              f"{p.step_time_s * 1e3:.1f} ms (compute {p.compute_s * 1e3:.1f}, optimizer "
              f"{p.optimizer_s * 1e3:.1f}); measured / predicted {measured / p.step_time_s:.2f}")  # fmt: skip
    by_op: dict[str, float] = {}
    model, margs, kwargs = _gpt(*SHAPES[0])
    plan = make_plan(capture(model, margs, kwargs), mesh, "auto", cm, optimizer="sgd")
    for n in plan.nodes:
        if n.kind == "op":
            by_op[n.op] = by_op.get(n.op, 0.0) + n.compute_s
    print("predicted compute by op at b4 s64 (ms):",
          ", ".join(f"{k} {v * 1e3:.2f}" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

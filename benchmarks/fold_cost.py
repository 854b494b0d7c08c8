"""What follower folding costs in plan quality: the same plan solved with and without
folding (``solve.planner.follower_ties``), side by side, for the tiny examples.

Run: ``python benchmarks/fold_cost.py``. Prints predicted step times and their ratio.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autopar.capture import capture  # noqa: E402
from autopar.mesh import MeshSpec  # noqa: E402
from autopar.models import resolve  # noqa: E402
from autopar.solve import planner  # noqa: E402

CASES = [
    ("gpt2-tiny", "tp", {"tp": 2}),
    ("llama-tiny", "tp", {"tp": 2}),
    ("bert-tiny", "dp", {"dp": 2}),
    ("llama-tiny", "auto", {"dp": 2, "tp": 2}),
]


def main() -> None:
    warnings.simplefilter("ignore")
    print(
        f"{'model':<12} {'strategy':<8} {'mesh':<16} {'folded ms':>10} {'unfolded ms':>12} {'ratio':>6}"
    )
    for name, strategy, mesh in CASES:
        captured = capture(*resolve(name))
        spec = MeshSpec.of(mesh)
        folded = planner.make_plan(captured, spec, strategy).predicted.step_s
        with mock.patch.object(planner, "follower_ties", lambda graph, canon: {}):
            unfolded = planner.make_plan(captured, spec, strategy).predicted.step_s
        print(
            f"{name:<12} {strategy:<8} {str(spec):<16} {folded * 1e3:>10.3f} "
            f"{unfolded * 1e3:>12.3f} {folded / unfolded:>6.3f}"
        )


if __name__ == "__main__":
    main()

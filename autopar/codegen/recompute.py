"""Recomputed layers in the generated program (``Plan.recompute``).

Contract:
- ``layer_call(module, ins, mode)``: the source of one layer call: ``module(ins)``, or
  ``rt.recompute(module, mode, ins)`` for a recomputed layer (``runtime.recompute``).
- ``Recomputed(plan)`` collects, while ``lower`` writes each layer's statements, the
  forward collectives each layer issues (``add(path, before, after)`` with the lowering's
  forward counter around one node); ``counts()`` is what the recomputed layers issue again
  in backward (the program's ``RECOMPUTED``, added to ``expected_collectives``).
"""

from __future__ import annotations

from collections import Counter

from autopar.plan import Plan


def layer_call(module: str, ins: list[str], mode: str) -> str:
    if mode == "none":
        return f"{module}({', '.join(ins)})"
    return f"rt.recompute({', '.join([module, repr(mode), *ins])})"


class Recomputed:
    def __init__(self, plan: Plan) -> None:
        self.modes = dict(plan.recompute)
        self.forward: dict[str, Counter[str]] = {}

    def mode(self, path: str) -> str:
        return self.modes.get(path, "none")

    def add(self, path: str, before: Counter[str], after: Counter[str]) -> None:
        self.forward.setdefault(path, Counter()).update(after - before)

    def counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for path, c in self.forward.items():
            if self.mode(path) != "none":
                total.update(c)
        return dict(total)

"""Whole-batch twins of values computed from the inputs alone (a loss' targets).

Contract: ``whole_twin(value, scope, fresh, target_text, fmt)`` returns ``(var, lines)``:
statements that compute ``value`` on the WHOLE graph inputs (every rank holds them
whole; the captured graph's own arguments, global shapes included, so the statements are
the captured ones), ending in the variable ``var``; or None when ``value`` depends on
anything but graph inputs in ``scope`` and deterministic ops (a parameter, a buffer, a
random op, a tuple element). ``sharded_cross_entropy`` counts the counted targets of
the whole batch in it locally instead of summing the ranks' counts with a collective.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

MAX_NODES = 64  # a longer chain is not a target's preparation; leave it to the collective


def whole_twin(
    value: fx.Node,
    scope: dict[str, str],
    fresh: Callable[[str], str],
    target_text: Callable[[Any], str],
    fmt: Callable[[Any, dict[str, str]], str],
) -> tuple[str, list[str]] | None:
    chain: list[fx.Node] = []
    seen: set[str] = set()

    def visit(n: fx.Node) -> bool:
        if n.name in seen:
            return True
        seen.add(n.name)
        if n.op == "placeholder":
            return n.name in scope
        if n.op != "call_function" or n.target is operator.getitem:
            return False
        tags = getattr(n.target, "tags", ())
        if torch.Tag.nondeterministic_seeded in tags or len(seen) > MAX_NODES:
            return False
        if not all(visit(a) for a in n.all_input_nodes):
            return False
        chain.append(n)
        return True

    if not visit(value):
        return None
    names = {n: scope[n] for n in seen if n in scope}
    lines = []
    for n in chain:
        var = fresh(f"{n.name}_whole")
        parts = [fmt(a, names) for a in n.args] + [
            f"{k}={fmt(v, names)}" for k, v in n.kwargs.items()
        ]
        lines.append(f"{var} = {target_text(n.target)}({', '.join(parts)})")
        names[n.name] = var
    return names[value.name], lines

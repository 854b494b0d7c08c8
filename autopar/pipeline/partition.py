"""Stage partitioning: layers of a captured graph, and a DP over contiguous layer ranges.

Contract:
- ``find_units(gm, param_names)`` reads the module hierarchy of a captured graph and
  returns ``Units``: unit 0 holds what runs before the repeated blocks (embeddings),
  unit ``k+1`` is block ``<prefix>.<k>`` (the prefix with the most ``<prefix>.<int>``
  indices, e.g. ``transformer.h``), and ops after the last block (final norm, head,
  loss) join the last unit. Parameter-free ops that depend on a graph input (label
  shifting) run as late as their first consumer; ops that depend on no input and no
  parameter (position ids, masks) are ``const`` and get copied into every stage that
  reads them, so they never cross a stage boundary.
- ``partition(n, num_stages, microbatches, cost, ...)`` splits units ``0..n-1`` into
  ``num_stages`` contiguous ranges minimising the pipeline step time
  ``(m - 1) * slowest stage + sum of stages`` (Alpa's bound; Narayanan et al.), where a
  stage ``[i, j)`` costs ``cost(i, j)`` (forward + backward of one microbatch) plus
  ``p2p(j)`` to send the boundary activation after unit ``j-1``; ``memory(i, j, s)``
  bytes must fit ``memory_limit`` on stage ``s``. It enumerates the slowest-stage bound
  over the distinct stage prices from the least feasible one (found by bisection:
  feasibility only grows with the bound; pruned by a lower bound) and runs an exact DP
  under each. ``InfeasibleError`` says which limit failed and by how much.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.fx as fx

from autopar.solve.graph import module_path

_LAYER = re.compile(r"^(?P<prefix>.*?)\.(?P<idx>\d+)(?:\.|$)")


class NoLayersError(ValueError):
    """The graph has no repeated layers to cut pipeline stages at."""


class InfeasibleError(ValueError):
    """No partition satisfies the constraints."""


@dataclass(frozen=True)
class Units:
    prefix: str  # the repeated block list, e.g. "transformer.h"
    labels: tuple[str, ...]  # unit i's name: "<pre>", "transformer.h.0", ...
    unit: dict[str, int]  # fx node name -> unit (ops and placeholders)
    const: frozenset[str]  # fx node names copied into every stage that reads them

    @property
    def count(self) -> int:
        return len(self.labels)


def _block(path: str) -> tuple[str, int] | None:
    m = _LAYER.match(path)
    return (m.group("prefix"), int(m.group("idx"))) if m else None


def find_units(gm: fx.GraphModule, param_names: Sequence[str]) -> Units:
    nodes = list(gm.graph.nodes)
    params = set(param_names)
    indices: dict[str, set[int]] = {}
    for n in nodes:
        b = _block(module_path(n)) if n.op == "call_function" else None
        if b:
            indices.setdefault(b[0], set()).add(b[1])
    if not indices:
        raise NoLayersError(
            "found no repeated layers (module paths like `layers.0`, `h.1`) in the captured "
            "graph; pipeline stages are cut at such layers. Build the model from an "
            "nn.ModuleList of blocks, or use a non-pipeline strategy"
        )
    prefix = max(indices, key=lambda p: (len(indices[p]), -len(p)))
    order = sorted(indices[prefix])
    rank = {k: i + 1 for i, k in enumerate(order)}
    labels = ("<pre>", *(f"{prefix}.{k}" for k in order))
    # which nodes depend on a parameter, on a graph input, on nothing at all
    has_param: dict[str, bool] = {}
    has_input: dict[str, bool] = {}
    for n in nodes:
        ins = [a for a in n.all_input_nodes]
        if n.op == "placeholder":
            has_param[n.name], has_input[n.name] = False, True
        elif n.op == "get_attr":
            has_param[n.name], has_input[n.name] = str(n.target) in params, False
        else:
            has_param[n.name] = any(has_param[a.name] for a in ins)
            has_input[n.name] = any(has_input[a.name] for a in ins)
    const = frozenset(
        n.name
        for n in nodes
        if n.op in ("call_function", "get_attr") and not has_param[n.name] and not has_input[n.name]
    )
    unit: dict[str, int] = {}
    last = len(labels) - 1
    for n in nodes:  # parameter-dependent ops: their block, else after their inputs
        if n.op == "placeholder":
            unit[n.name] = 0
        elif n.op == "call_function" and n.name not in const and has_param[n.name]:
            b = _block(module_path(n))
            if b and b[0] == prefix:
                unit[n.name] = rank[b[1]]
            else:
                unit[n.name] = max((unit.get(a.name, 0) for a in n.all_input_nodes), default=0)
    for n in reversed(nodes):  # parameter-free ops on inputs: as late as their consumers
        if n.op == "call_function" and n.name not in const and not has_param[n.name]:
            users = [unit.get(u.name, last) if u.op != "output" else last for u in n.users]
            unit[n.name] = min(users, default=last)
    for n in nodes:  # an op never runs before one of its inputs
        if n.op == "call_function" and n.name not in const:
            first = max((unit[a.name] for a in n.all_input_nodes if a.name in unit), default=0)
            if unit[n.name] < first:
                unit[n.name] = first
    for n in nodes:  # a getitem stays with the op it reads from
        if n.op == "call_function" and n.target is operator.getitem and n.name not in const:
            src = n.args[0]
            if isinstance(src, fx.Node) and src.name in unit:
                unit[n.name] = unit[src.name]
    return Units(prefix, labels, unit, const)


@dataclass(frozen=True)
class Partition:
    bounds: tuple[tuple[int, int], ...]  # per stage: units [start, stop)
    stage_s: tuple[float, ...]  # per stage: cost + boundary send, one microbatch
    step_s: float  # (m - 1) * max(stage_s) + sum(stage_s)
    memory: tuple[float, ...]  # per stage, bytes (0 without a memory function)


def partition(
    n: int,
    num_stages: int,
    microbatches: int,
    cost: Callable[[int, int], float],
    *,
    p2p: Callable[[int], float] | None = None,
    memory: Callable[[int, int, int], float] | None = None,
    memory_limit: float | None = None,
) -> Partition:
    if num_stages < 1 or n < num_stages:
        raise InfeasibleError(
            f"cannot cut {n} layers into {num_stages} pipeline stages: each stage needs at "
            f"least one layer; use at most {n} stages"
        )
    m = microbatches
    send = [0.0] * (n + 1)
    if p2p is not None:
        send = [p2p(j) if 0 < j < n else 0.0 for j in range(n + 1)]
    price = [[0.0] * (n + 1) for _ in range(n + 1)]
    for i in range(n):
        for j in range(i + 1, n + 1):
            price[i][j] = cost(i, j) + send[j]

    fit_memo: dict[tuple[int, int, int], bool] = {}  # the DP asks the same ranges often

    def fits(i: int, j: int, s: int) -> bool:
        if memory is None or memory_limit is None:
            return True
        key = (i, j, s)
        ok = fit_memo.get(key)
        if ok is None:
            ok = fit_memo[key] = memory(i, j, s) <= memory_limit
        return ok

    lower_sum = min(sum(price[i][i + 1] for i in range(n)), price[0][n])
    candidates = sorted({price[i][j] for i in range(n) for j in range(i + 1, n + 1)})
    floor = max(price[i][i + 1] for i in range(n))
    candidates = [t for t in candidates if t >= floor]
    # feasibility only grows with the bound: bisect for the least feasible one first
    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        t = candidates[mid]
        ok = (
            _greedy_stages(n, price, t) <= num_stages
            and _min_sum(n, num_stages, price, t, fits) is not None
        )
        lo, hi = (lo, mid) if ok else (mid + 1, hi)
    best: tuple[float, list[tuple[int, int]]] | None = None
    for t_max in candidates[lo:]:
        if best is not None and (m - 1) * t_max + lower_sum >= best[0]:
            break
        if _greedy_stages(n, price, t_max) > num_stages:
            continue  # even the fewest stages under this bound are too many
        found = _min_sum(n, num_stages, price, t_max, fits)
        if found is None:
            continue
        total, bounds = found
        value = (m - 1) * max(price[i][j] for i, j in bounds) + total
        if best is None or value < best[0] - 1e-15:
            best = (value, bounds)
    if best is None:
        worst = _memory_report(n, num_stages, memory, memory_limit)
        raise InfeasibleError(
            f"no split of {n} layers into {num_stages} stages fits the memory limit "
            f"{memory_limit:.3g} B{worst}; use more stages, more devices per stage, or "
            "fewer microbatches in flight"
        )
    value, bounds = best
    mem = tuple(memory(i, j, s) if memory else 0.0 for s, (i, j) in enumerate(bounds))
    return Partition(tuple(bounds), tuple(price[i][j] for i, j in bounds), value, mem)


def _min_sum(n, stages, price, t_max, fits):  # type: ignore[no-untyped-def]
    """Exact DP: the least total over splits whose every stage costs at most ``t_max``.
    Ties keep the longest last stage (the first ``i`` found scanning down)."""
    inf = float("inf")
    prev = [inf] * (n + 1)
    prev[0] = 0.0
    args: list[list[int]] = []
    for s in range(1, stages + 1):
        cur = [inf] * (n + 1)
        arg = [-1] * (n + 1)
        for j in range(s, n - (stages - s) + 1):
            best, at = inf, -1
            for i in range(j - 1, s - 2, -1):  # a longer range only costs more
                p = price[i][j]
                if p > t_max:
                    break
                fi = prev[i]
                if fi == inf:
                    continue
                v = fi + p
                if v < best and fits(i, j, s - 1):
                    best, at = v, i
            cur[j], arg[j] = best, at
        args.append(arg)
        prev = cur
    if prev[n] == inf:
        return None
    bounds, j = [], n
    for s in range(stages, 0, -1):
        i = args[s - 1][j]
        bounds.append((i, j))
        j = i
    return prev[n], bounds[::-1]


def _greedy_stages(n: int, price: list[list[float]], t_max: float) -> int:
    """The fewest contiguous stages whose every price is at most ``t_max``."""
    count, i = 0, 0
    while i < n:
        j = i + 1
        if price[i][j] > t_max:
            return n + 1
        while j < n and price[i][j + 1] <= t_max:
            j += 1
        count, i = count + 1, j
    return count


def _memory_report(n, stages, memory, limit):  # type: ignore[no-untyped-def]
    if memory is None or limit is None:
        return ""
    per = max(n // stages, 1)
    worst = max(memory(i, min(i + per, n), s) for s, i in enumerate(range(0, n - per + 1, per))
                if s < stages)  # fmt: skip
    return (
        f" (an even split needs {worst:.3g} B on its fullest stage, {worst / limit:.2f}x the limit)"
    )


def uniform_cost(per_unit: Sequence[float]) -> Callable[[int, int], float]:
    """``cost(i, j)`` as a prefix sum of per-unit prices."""
    prefix = [0.0]
    for c in per_unit:
        prefix.append(prefix[-1] + c)
    return lambda i, j: prefix[j] - prefix[i]


def in_flight(schedule: str, stage: int, num_stages: int, microbatches: int) -> int:
    """Microbatches whose activations a stage holds at its peak."""
    if schedule == "gpipe":
        return microbatches
    return min(microbatches, num_stages - stage)

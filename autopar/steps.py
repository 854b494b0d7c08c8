"""Steps between layouts: the collectives a layout change runs, as data (pure; no torch).

Contract:
- A *step* is a tuple naming one operation on one mesh axis (an axis index from
  ``walk_axes``, an axis name from ``walk``): ``("all_gather", axis, dim)`` (S(dim) -> R),
  ``("all_reduce", axis)`` (P -> R), ``("all_reduce_avg", axis)`` (P(avg) -> R),
  ``("reduce_scatter", axis, dim)`` (P -> S(dim)), ``("all_to_all", axis, src, dst)``
  (S(src) -> S(dst)), ``("chunk", axis, dim)`` (R -> S(dim), local), ``("keep", axis)``
  (R -> P, local: the axis' rank 0 keeps the value, the others hold zeros) and
  ``("scale", axis[, k])`` (local: multiply by the axis size to the power ``k``, -1 when
  omitted). ``runtime.collectives.run_steps`` executes them; ``COLLECTIVES`` names the
  kinds that communicate. Local layouts follow DTensor's convention: mesh axes split in
  order, axis 0 outermost, even chunks; ``R`` is a valid ``P(avg)`` (the mean of copies).
- ``walk_axes(src, dst)`` finds the steps between ANY two layouts (``P(avg)`` and dims
  split by several axes included), each with the layout it starts from: axis by axis in
  mesh order, else in reverse order, else outermost pending axis first, moving the
  innermost axis that blocks it out of the way first. ``cost.transition`` prices exactly
  these steps (one ``Collective`` per communicating step) and the runtime runs them.
- ``plan_steps(src, dst, grad, names)`` gives one edge's ``(forward, backward)`` steps:
  forward ``src -> dst``; backward from the consumer's gradient layout ``grad`` to
  ``grad_layout(src)``. The gradient of a ``P(avg)`` value is 1/n of the average's
  gradient on each rank: it arrives so where the consumer reads ``P(avg)`` and must leave
  so where the producer wrote it, so an axis that is ``P(avg)`` on one side only scales
  the gradient by n (consumer side) or 1/n (producer side).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from autopar.placement import Layout, Partial, Placement, R, Replicate, Shard

Step = tuple[Any, ...]
COLLECTIVES = ("all_gather", "all_reduce", "all_reduce_avg", "reduce_scatter", "all_to_all")
AVG = Partial("avg")


def _touched(s: Placement, d: Placement) -> set[int]:
    return {p.dim for p in (s, d) if isinstance(p, Shard)}


def _blockers(cur: Layout, a: int, dims: set[int]) -> list[int]:
    """Axes after ``a`` that split one of ``dims`` (their pieces would interleave)."""
    return [b for b, p in enumerate(cur) if b > a and isinstance(p, Shard) and p.dim in dims]


def _axis_steps(s: Placement, d: Placement, a: int, before: Layout) -> tuple[Step, ...] | None:
    """Steps that move axis ``a`` from ``s`` to ``d`` while the axes hold ``before``; None
    when an axis after ``a`` splits a dim the move touches."""
    if s == d:
        return ()
    if _blockers(before, a, _touched(s, d)):
        return None
    if isinstance(d, Replicate):
        if isinstance(s, Shard):
            return (("all_gather", a, s.dim),)
        return (("all_reduce" if s == Partial() else "all_reduce_avg", a),)
    if isinstance(d, Shard):
        if isinstance(s, Replicate):
            return (("chunk", a, d.dim),)
        if isinstance(s, Shard):
            return (("all_to_all", a, s.dim, d.dim),)
        if s == Partial():
            return (("reduce_scatter", a, d.dim),)
        return (("reduce_scatter", a, d.dim), ("scale", a))  # an average: the sum / n
    gather = (("all_gather", a, s.dim),) if isinstance(s, Shard) else ()
    if d == AVG:  # a whole value is its own average; a sum is made whole first
        return (("all_reduce", a),) if isinstance(s, Partial) else gather
    # d is a sum: made whole (an average reduced), then kept on the axis' rank 0
    whole = (("all_reduce_avg", a),) if isinstance(s, Partial) else gather
    return (*whole, ("keep", a))


def _moved(steps: tuple[Step, ...], a: int, cur: list[Placement]) -> list[tuple[Step, Layout]]:
    """Each step of one axis' move with the layout it starts from (``cur`` updated)."""
    out = []
    for step in steps:
        out.append((step, tuple(cur)))
        kind = step[0]
        if kind in ("all_gather", "all_reduce", "all_reduce_avg"):
            cur[a] = R
        elif kind in ("reduce_scatter", "chunk", "all_to_all"):
            cur[a] = Shard(step[-1])
    return out


@cache
def walk_axes(src: Layout, dst: Layout) -> tuple[tuple[Step, Layout], ...]:
    """The steps from ``src`` to ``dst`` (axes as indices), each with its start layout."""
    if len(src) != len(dst):
        raise ValueError(f"layouts {src} and {dst} have different numbers of mesh axes")
    for order in (range(len(src)), reversed(range(len(src)))):
        found: list[tuple[Step, Layout]] = []
        cur = list(src)
        for a in order:
            got = _axis_steps(cur[a], dst[a], a, tuple(cur))
            if got is None:
                break
            found += _moved(got, a, cur)
            cur[a] = dst[a]
        else:
            return tuple(found)
    found, cur = [], list(src)
    # The outermost pending axis moves once and is never touched again; before it does,
    # only axes inside it move: finitely many steps.
    while True:
        pending = [a for a in range(len(src)) if cur[a] != dst[a]]
        if not pending:
            return tuple(found)
        a, dims = pending[0], _touched(cur[pending[0]], dst[pending[0]])
        target = dst[a]
        blocking = _blockers(tuple(cur), a, dims)
        if blocking:  # the innermost blocker is never blocked itself: it moves to its
            a = max(blocking)  # destination where that unblocks, else is gathered
            d = dst[a]
            clear = not (isinstance(d, Shard) and d.dim in dims)
            target = d if clear and not _blockers(tuple(cur), a, _touched(cur[a], d)) else R
        got = _axis_steps(cur[a], target, a, tuple(cur))
        assert got is not None, (src, dst, cur, a)
        found += _moved(got, a, cur)
        cur[a] = target


def walk(src: Layout, dst: Layout, names: tuple[str, ...]) -> list[tuple[Step, Layout]]:
    """``walk_axes`` with axes named."""
    if len(src) != len(names):
        raise ValueError(f"layout {src} does not match the mesh axes {names}")
    return [((s[0], names[s[1]], *s[2:]), before) for s, before in walk_axes(src, dst)]


def transition_steps(src: Layout, dst: Layout, names: tuple[str, ...]) -> tuple[Step, ...]:
    return tuple(step for step, _ in walk(src, dst, names))


def grad_layout(layout: Layout) -> Layout:
    """The layout a value's gradient must reach its producer in (Partial read as R)."""
    return tuple(R if isinstance(p, Partial) else p for p in layout)


def plan_steps(
    src: Layout, dst: Layout, grad: Layout, names: tuple[str, ...]
) -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    """(forward, backward) steps of one edge (see the module contract)."""
    fwd = transition_steps(src, dst, names)
    bwd = transition_steps(grad, grad_layout(src), names)
    scales = tuple(
        ("scale", names[a]) if s == AVG else ("scale", names[a], 1)
        for a, (s, d) in enumerate(zip(src, dst))
        if (s == AVG) != (d == AVG)
    )  # fmt: skip
    return fwd, bwd + scales

"""Placements: how one tensor is laid out along one mesh axis.

Contract:
- ``Shard(dim)``: the tensor is split evenly along tensor dim ``dim`` over the axis.
- ``Replicate()``: every rank on the axis holds the full tensor.
- ``Partial(op)``: every rank holds a partial value; the true value is the ``op``
  ("sum" or "avg") reduction over the axis.

A tensor's layout on a mesh is a ``Layout``: a tuple of placements, one per mesh axis.
Placements are frozen values. ``str()`` is short for people (``S(0)``, ``R``, ``P``);
``to_json()``/``from_json()`` are the full form for machines.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Shard:
    dim: int

    def __str__(self) -> str:
        return f"S({self.dim})"

    def to_json(self) -> dict[str, object]:
        return {"kind": "shard", "dim": self.dim}


@dataclass(frozen=True, order=True)
class Replicate:
    def __str__(self) -> str:
        return "R"

    def to_json(self) -> dict[str, object]:
        return {"kind": "replicate"}


@dataclass(frozen=True, order=True)
class Partial:
    op: str = "sum"

    def __post_init__(self) -> None:
        if self.op not in ("sum", "avg"):
            raise ValueError(f"Partial op must be 'sum' or 'avg', got {self.op!r}")

    def __str__(self) -> str:
        return "P" if self.op == "sum" else "P(avg)"

    def to_json(self) -> dict[str, object]:
        return {"kind": "partial", "op": self.op}


Placement = Shard | Replicate | Partial
Layout = tuple[Placement, ...]  # one placement per mesh axis

R = Replicate()
P = Partial()


def placement_from_json(obj: object) -> Placement:
    """Parse the full JSON form; raise ValueError naming what was wrong."""
    if not isinstance(obj, dict) or "kind" not in obj:
        raise ValueError(f"placement must be an object with a 'kind' key, got {obj!r}")
    kind = obj["kind"]
    if kind == "shard":
        dim = obj.get("dim")
        if not isinstance(dim, int) or dim < 0:
            raise ValueError(f"shard placement needs a non-negative int 'dim', got {obj!r}")
        return Shard(dim)
    if kind == "replicate":
        return R
    if kind == "partial":
        op = obj.get("op", "sum")
        if op not in ("sum", "avg"):
            raise ValueError(f"partial placement 'op' must be 'sum' or 'avg', got {obj!r}")
        return Partial(str(op))
    raise ValueError(f"unknown placement kind {kind!r}; expected shard, replicate or partial")


def parse_placement(text: str) -> Placement:
    """Parse the short form: ``S(0)``, ``R``, ``P``, ``P(avg)``."""
    t = text.strip()
    if t == "R":
        return R
    if t == "P":
        return P
    if t == "P(avg)":
        return Partial("avg")
    if t.startswith("S(") and t.endswith(")") and t[2:-1].isdigit():
        return Shard(int(t[2:-1]))
    raise ValueError(f"cannot parse placement {text!r}; expected S(<dim>), R, P or P(avg)")


def layout_str(layout: Layout) -> str:
    """Short form of a layout, e.g. ``S(0)R`` for a 2-axis mesh; one axis prints bare."""
    return "".join(str(p) for p in layout) if len(layout) > 1 else str(layout[0])


def layout_to_json(layout: Layout) -> list[dict[str, object]]:
    return [p.to_json() for p in layout]


def layout_from_json(obj: object, num_axes: int) -> Layout:
    if not isinstance(obj, list) or len(obj) != num_axes:
        raise ValueError(f"layout must be a list of {num_axes} placements, got {obj!r}")
    return tuple(placement_from_json(p) for p in obj)


def shard_factor(layout: Layout, dim: int, axis_sizes: tuple[int, ...]) -> int:
    """How many pieces ``dim`` is split into under ``layout``."""
    f = 1
    for p, n in zip(layout, axis_sizes):
        if isinstance(p, Shard) and p.dim == dim:
            f *= n
    return f


def local_shape(
    shape: tuple[int, ...], layout: Layout, axis_sizes: tuple[int, ...]
) -> tuple[int, ...]:
    """Shape of one rank's piece of a tensor of global ``shape`` (even shards only)."""
    return tuple(s // shard_factor(layout, d, axis_sizes) for d, s in enumerate(shape))


def is_replicated(layout: Layout) -> bool:
    return all(isinstance(p, Replicate) for p in layout)


def to_dtensor_placements(layout: Layout) -> tuple[object, ...]:
    """The same layout as torch.distributed.tensor placement objects."""
    from torch.distributed.tensor import Partial as TPartial
    from torch.distributed.tensor import Replicate as TReplicate
    from torch.distributed.tensor import Shard as TShard

    out: list[object] = []
    for p in layout:
        if isinstance(p, Shard):
            out.append(TShard(p.dim))
        elif isinstance(p, Partial):
            out.append(TPartial(p.op))
        else:
            out.append(TReplicate())
    return tuple(out)


def from_dtensor_placement(p: object) -> Placement:
    """The inverse of ``to_dtensor_placements`` for one torch placement."""
    from torch.distributed.tensor import Partial as TPartial
    from torch.distributed.tensor import Shard as TShard

    if isinstance(p, TShard):
        return Shard(p.dim)
    if isinstance(p, TPartial):
        return Partial(p.reduce_op)
    return R

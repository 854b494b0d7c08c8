"""Value types shared by the sharding rules, the enumerator and the solver.

Contract:
- ``TensorMeta`` is the global shape and dtype of one tensor flowing on a graph edge.
- ``OpView`` is what a rule sees of one node: its target, its args with every fx.Node
  replaced by an ``Arg`` (the input's position and metadata), and its output metas.
- ``AxisStrategy`` is one way to run a node on ONE mesh axis of size ``n``: the placement
  each tensor input must arrive in, the placement of each output, and whether the
  node's compute is divided ``n`` ways. Rules only ever reason about one axis.
- ``Strategy`` is the joint choice over all mesh axes (a tuple of per-axis placements,
  a ``Layout``, per tensor), built by ``strategies.enumerate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from autopar.placement import Layout, Placement


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point or self.dtype.is_complex


@dataclass(frozen=True)
class Arg:
    """Stand-in for a tensor input inside an OpView's args: ``index`` is its input slot."""

    index: int
    meta: TensorMeta


@dataclass(frozen=True)
class OpView:
    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: tuple[TensorMeta, ...]  # tensor inputs, in slot order
    outputs: tuple[TensorMeta, ...]  # tensor outputs (one unless the op returns a tuple)

    def arg(self, pos: int, name: str, default: Any = None) -> Any:
        if pos < len(self.args):
            return self.args[pos]
        return self.kwargs.get(name, default)

    @property
    def out(self) -> TensorMeta:
        return self.outputs[0]


@dataclass(frozen=True)
class AxisStrategy:
    ins: tuple[Placement | None, ...]  # None for an input slot that is not a tensor
    outs: tuple[Placement, ...]
    split: bool  # the node's compute is divided over the axis
    kernel: str | None = None  # a custom local kernel (see codegen.kernels); None = the op itself


@dataclass(frozen=True)
class Strategy:
    ins: tuple[Layout, ...]
    outs: tuple[Layout, ...]
    grads: tuple[Layout, ...]  # layout of each input's gradient, as produced by this node
    compute_div: int  # total ways the compute is divided
    kernels: tuple[str | None, ...] = field(default=())  # per axis
    # parameters only: a sharded parameter's gathered copy is freed after forward and
    # gathered again in backward (FSDP's reshard_after_forward); False keeps it (ZeRO-2)
    regather: bool = False

    @property
    def kernel(self) -> str | None:
        ks = {k for k in self.kernels if k}
        return ks.pop() if ks else None

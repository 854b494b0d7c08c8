"""What a generated program is built from: its context, parameters and weights.

Contract:
- ``Context(device_mesh, precision)``: the mesh, this rank's ``Axes``, the device and the
  precision ("fp32" | "bf16-mixed" | "bf16"); ``Context.create(MESH, precision, timeout=)``
  builds the DeviceMesh inside an initialised process group (NCCL ranks use their local
  GPU; each mesh dimension's group waits at most ``timeout`` s per collective).
- ``Param(shape, dtype, layout, mode, fsdp=None, reduce=())``: one parameter of the plan
  (global shape, stored layout as text such as ``"S(0)R"``, the mode ``lower`` chose).
  ``Param.local_shape(sizes)`` is the shape of the local tensor the program holds before
  FSDP shards it further.
- ``param(module, path, spec)`` / ``buffer(...)`` / ``layers(...)`` / ``submodule(...)``
  register parameters (meta tensors of their local shape, in the precision's storage
  dtype), buffers and layer submodules under their original module paths, creating plain
  container modules on the way, so ``state_dict()`` keys are the original model's.
- ``Program(ctx)``: the root module of a generated program; ``materialize(state)`` moves
  it to the context's device and copies each parameter's and buffer's local piece out of
  the full tensors in ``state`` (the original model's ``named_parameters`` and
  ``named_buffers``), broadcast from the mesh's first rank first so every rank starts
  equal.
- ``precision(ctx)``: the autocast context a program's forward runs in (bf16 compute
  for "bf16-mixed", nothing otherwise).
- ``load_source(text, name)``: executes generated source as a fresh module.
"""

from __future__ import annotations

import contextlib
import linecache
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from autopar.placement import Layout, Shard
from autopar.precision import PRECISIONS
from autopar.runtime.collectives import Axes
from autopar.runtime.layouts import parse_layout
from autopar.runtime.ranks import timed_device_mesh
from autopar.timeouts import DEFAULT_TIMEOUT_S


class Context:
    def __init__(
        self, device_mesh: Any, precision: str = "fp32", reduce_dtype: torch.dtype | None = None
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.mesh = device_mesh
        self.axes = Axes(device_mesh)
        index = _device_index(device_mesh)
        self.device = torch.device(device_mesh.device_type, index) if index is not None else (
            torch.device(device_mesh.device_type)
        )  # fmt: skip
        self.precision = precision
        self.autocast = precision == "bf16-mixed"
        self.reduce_dtype = reduce_dtype  # None: the gradients' own dtype

    @staticmethod
    def create(
        mesh: tuple[tuple[str, int], ...],
        precision: str = "fp32",
        reduce_dtype: torch.dtype | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> Context:
        cuda = torch.cuda.is_available() and dist.get_backend() == "nccl"
        if cuda:
            torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
        names = tuple(n for n, _ in mesh)
        sizes = tuple(s for _, s in mesh)
        device_mesh = timed_device_mesh("cuda" if cuda else "cpu", sizes, names, timeout)
        return Context(device_mesh, precision, reduce_dtype)

    @property
    def storage_dtype(self) -> torch.dtype | None:
        """The dtype parameters are stored in (None: as the model has them)."""
        return torch.bfloat16 if self.precision == "bf16" else None


def _device_index(device_mesh: Any) -> int | None:
    if device_mesh.device_type == "cuda":
        return torch.cuda.current_device()
    return None


@dataclass(frozen=True)
class Param:
    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str
    mode: str
    fsdp: tuple[str, int] | None = None
    reduce: tuple[str, ...] = ()

    @property
    def placements(self) -> Layout:
        return parse_layout(self.layout)

    def held(self, names: tuple[str, ...]) -> Layout:
        """The local layout the program holds before FSDP (the FSDP axis replicated)."""
        lay = self.placements
        if self.fsdp is None:
            return lay
        a = names.index(self.fsdp[0])
        from autopar.placement import R

        return tuple(R if i == a else p for i, p in enumerate(lay))

    def local_shape(self, names: tuple[str, ...], sizes: tuple[int, ...]) -> tuple[int, ...]:
        shape = list(self.shape)
        for p, n in zip(self.held(names), sizes):
            if isinstance(p, Shard):
                shape[p.dim] //= n
        return tuple(shape)


def _container(module: torch.nn.Module, path: str) -> tuple[torch.nn.Module, str]:
    *parts, leaf = path.split(".")
    for part in parts:
        child = getattr(module, part, None) if part in module._modules else None
        if child is None:
            child = torch.nn.Module()
            module.add_module(part, child)
        module = child
    return module, leaf


def _ctx_of(module: torch.nn.Module) -> Context:
    ctx = getattr(module, "ctx", None)
    if not isinstance(ctx, Context):
        raise TypeError(f"{type(module).__name__} has no autopar runtime context (self.ctx)")
    return ctx


def param(module: torch.nn.Module, path: str, spec: Param) -> None:
    ctx = _ctx_of(module)
    names, sizes = ctx.axes.names, tuple(ctx.axes.size[n] for n in ctx.axes.names)
    dtype = ctx.storage_dtype if ctx.storage_dtype and spec.dtype.is_floating_point else spec.dtype
    owner, leaf = _container(module, path)
    t = torch.empty(spec.local_shape(names, sizes), dtype=dtype, device="meta")
    owner.register_parameter(leaf, torch.nn.Parameter(t))


def buffer(module: torch.nn.Module, path: str, spec: tuple[tuple[int, ...], torch.dtype]) -> None:
    owner, leaf = _container(module, path)
    owner.register_buffer(leaf, torch.empty(spec[0], dtype=spec[1], device="meta"))


def layers(module: torch.nn.Module, path: str, blocks: Mapping[str, torch.nn.Module]) -> None:
    owner, leaf = _container(module, path)
    owner.add_module(leaf, torch.nn.ModuleDict(dict(blocks)))


def submodule(module: torch.nn.Module, path: str, child: torch.nn.Module) -> None:
    owner, leaf = _container(module, path)
    owner.add_module(leaf, child)


@contextlib.contextmanager
def precision(ctx: Context) -> Iterator[None]:
    if not ctx.autocast:
        yield
        return
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
        yield


def local_piece(full: torch.Tensor, layout: Layout, axes: Axes) -> torch.Tensor:
    """This rank's piece of ``full`` under ``layout`` (mesh axes split in order)."""
    t = full
    for name, p in zip(axes.names, layout):
        if isinstance(p, Shard):
            t = t.chunk(axes.size[name], p.dim)[axes.rank[name]]
    return t


class Program(torch.nn.Module):
    """Base of a generated program's root module."""

    ctx: Context

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx

    def materialize(
        self, state: Mapping[str, torch.Tensor], params: Mapping[str, Param], broadcast: bool = True
    ) -> None:
        """Fill every parameter and buffer from full tensors (see the module docstring)."""
        ctx = self.ctx
        self.to_empty(device=ctx.device)
        names = ctx.axes.names
        group = _mesh_group(ctx)
        with torch.no_grad():
            for fqn, p in self.named_parameters():
                full = _source(state, fqn)
                if broadcast and group is not None:
                    full = full.to(ctx.device, copy=True).contiguous()
                    dist.broadcast(full, group=group, group_src=0)
                piece = local_piece(full.to(ctx.device), params[fqn].held(names), ctx.axes)
                p.copy_(piece)
            for fqn, b in self.named_buffers():
                if fqn in state:
                    b.copy_(state[fqn].to(ctx.device))


def _mesh_group(ctx: Context) -> Any:
    """The group of every rank of this program's mesh (None for a single rank)."""
    if ctx.mesh.size() == 1:
        return None
    if ctx.mesh.ndim == 1:
        return ctx.mesh.get_group()
    return ctx.mesh._flatten().get_group()


def _source(state: Mapping[str, torch.Tensor], fqn: str) -> torch.Tensor:
    if fqn not in state:
        raise KeyError(
            f"the weights given have no tensor {fqn!r}; pass the state of the model the "
            "program was generated from (named_parameters and named_buffers)"
        )
    t = state[fqn]
    if t.device.type == "meta":
        raise ValueError(f"{fqn} is on the meta device; load real weights first")
    return t.detach()


def load_source(text: str, name: str = "autopar_program") -> types.ModuleType:
    """Execute generated source as a new module (registered for tracebacks)."""
    filename = f"<{name}>"
    module = types.ModuleType(name)
    module.__file__ = filename
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    code = compile(text, filename, "exec")
    exec(code, module.__dict__)  # noqa: S102 - our own generated program
    return module

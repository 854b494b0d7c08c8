"""Run one op under every strategy its rule offers, on the ranks of a 1-axis mesh, and
compare with the unsharded op, forward and backward (how DTensor checks its own rules).

Contract: ``check_op(label, target, args, kwargs, strategies, mesh, seed)`` is called on
every rank with the same whole tensors in ``args``/``kwargs``; for each strategy:
- each input is laid out as the strategy says, DTensor being the oracle of a layout
  (``distribute_tensor(...).to_local()``); a ``Partial`` input is a random split whose sum
  (mean, for ``avg``) is the value;
- the op runs on the local tensors: the runtime's custom kernel where the strategy names
  one, view/expand shape arguments made local as the code generator makes them;
- each output, read in its declared layout (``DTensor.from_local(...).full_tensor()``),
  must equal the unsharded op's (rtol 1e-5, atol 1e-5); ``values=False`` checks the local
  shapes only (``empty_like``);
- backward: one upstream gradient, laid out as the runtime delivers it (the output's
  layout with ``Partial`` read as replicated, 1/n of it for ``Partial("avg")``); each
  input's local gradient must equal the reference gradient in the layout ``Strategy.grads``
  declares (``Partial``: the local gradients sum to it; the gradient of a ``Partial("avg")``
  input is 1/n of it on every rank).
Every rank returns the same list of failure messages; the ranks agree after each
strategy's local work, so one rank's exception never leaves the other in a collective.
``op_view`` builds the OpView ``solve.graph`` would build for such a call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from autopar.codegen.lower import SIZE_ARG_OPS
from autopar.placement import Partial, Placement, Replicate, Shard, local_shape
from autopar.strategies.registry import op_name
from autopar.strategies.types import Arg, OpView, Strategy, TensorMeta

N = 2
RTOL = ATOL = 1e-5
AVG = Partial("avg")


def _map(obj: Any, fn: Any) -> Any:
    """``fn`` on every tensor of nested args, in the order ``fx.node.map_arg`` visits."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_map(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _tensors(obj: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _map(obj, found.append)
    return found


def _with(obj: Any, values: list[Any]) -> Any:
    it = iter(values)
    return _map(obj, lambda _t: next(it))


def _outs(value: Any) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _meta(t: torch.Tensor) -> TensorMeta:
    return TensorMeta(tuple(int(s) for s in t.shape), t.dtype)


def op_view(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> OpView:
    """The OpView ``solve.graph`` builds for this call: tensors replaced by Arg(slot)."""
    ins = _tensors((args, kwargs))
    counter = iter(range(len(ins)))
    view = _map((args, kwargs), lambda t: Arg(next(counter), _meta(t)))
    outs = tuple(_meta(t) for t in _outs(target(*args, **kwargs)))
    return OpView(target, view[0], view[1], tuple(_meta(t) for t in ins), outs)


def _dt(p: Placement) -> Any:
    from torch.distributed.tensor import Partial as TPartial
    from torch.distributed.tensor import Replicate as TReplicate
    from torch.distributed.tensor import Shard as TShard

    if isinstance(p, Shard):
        return TShard(p.dim)
    return TPartial(p.op) if isinstance(p, Partial) else TReplicate()


def _piece(full: torch.Tensor, p: Placement, mesh: Any, seed: int = 0) -> torch.Tensor:
    """This rank's local tensor of ``full`` laid out ``p`` (DTensor's own slicing)."""
    from torch.distributed.tensor import distribute_tensor

    if isinstance(p, Partial):
        g = torch.Generator().manual_seed(seed ^ 0x5EED)  # not the case's own stream
        parts = [torch.randn(full.shape, generator=g, dtype=full.dtype) for _ in range(N - 1)]
        parts.append(full * (N if p == AVG else 1) - sum(parts))
        return parts[dist.get_rank()].clone()
    if isinstance(p, Shard) and p.dim >= full.ndim:
        raise AssertionError(f"Shard({p.dim}) of a {full.ndim}-d tensor")
    return distribute_tensor(full, mesh, [_dt(p)], src_data_rank=None).to_local().clone()


def _whole(local: torch.Tensor, p: Placement, mesh: Any, like: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    dt = DTensor.from_local(
        local.detach(), mesh, [_dt(p)], run_check=False, shape=like.shape, stride=like.stride()
    )
    return dt.full_tensor()


def _kernel(name: str, mesh: Any) -> Any:
    """The runtime's custom kernel a strategy names (``autopar.runtime.kernels``), as the
    generated program calls it on a one-axis mesh."""
    from autopar.runtime.collectives import Axes
    from autopar.runtime.kernels import sharded_cross_entropy, vocab_embedding

    axes = Axes(mesh)
    axis = axes.names[0]
    if name == "vocab_embedding":
        return lambda w, ids, *rest: vocab_embedding(w, ids, axes, axis, *rest)
    if name == "sharded_cross_entropy":
        return lambda logits, t, *rest: sharded_cross_entropy(logits, t, axes, (axis,), *rest)
    raise AssertionError(f"the strategy names an unknown kernel {name!r}")


def _close(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"shape {list(a.shape)} != {list(b.shape)}"
    if a.dtype.is_floating_point or a.dtype.is_complex:
        if torch.allclose(a.to(b.dtype), b, rtol=RTOL, atol=ATOL, equal_nan=True):
            return ""
        return f"max |diff| {(a.to(b.dtype) - b).abs().max().item():.3g}"
    return "" if torch.equal(a, b) else "values differ"


def _agree(ok: bool) -> bool:
    flag = torch.tensor([0 if ok else 1])
    dist.all_reduce(flag)
    return int(flag.item()) == 0


def _lay(layout: tuple[Placement, ...]) -> str:
    return "".join(str(p) for p in layout)


def describe(s: Strategy) -> str:
    ins, outs = ",".join(_lay(p) for p in s.ins), ",".join(_lay(p) for p in s.outs)
    grads = ",".join(_lay(p) for p in s.grads)
    return f"[{ins} -> {outs}; grads {grads}" + (f"; {s.kernel}]" if s.kernel else "]")


class _Call:
    """One call of the op: its whole inputs, reference outputs, upstream and input grads."""

    def __init__(self, target: Any, args: Any, kwargs: Any, seed: int, frozen: tuple[int, ...]):
        self.target, self.args, self.kwargs, self.seed = target, args, kwargs, seed
        self.inputs = _tensors((args, kwargs))
        self.n_args = len(_tensors(args))
        self.grad_in = [
            t.is_floating_point() and k not in frozen for k, t in enumerate(self.inputs)
        ]
        leaves = [t.detach().clone().requires_grad_(g) for t, g in zip(self.inputs, self.grad_in)]
        self.refs = self.run(target, leaves)
        g = torch.Generator().manual_seed(seed + 1)
        self.ups = [
            torch.randn(o.shape, generator=g, dtype=o.dtype) if o.requires_grad else None
            for o in self.refs
        ]
        self.diff_out = [k for k, o in enumerate(self.refs) if o.requires_grad]
        self.diff_in = [k for k, t in enumerate(leaves) if t.requires_grad]
        self.grads = self.backward(self.refs, leaves, [self.ups[k] for k in self.diff_out])

    def run(self, fn: Any, values: list[torch.Tensor], size: list[int] | None = None) -> list[Any]:
        args = _with(self.args, values[: self.n_args])
        if size is not None:
            args = (args[0], size, *args[2:])
        torch.manual_seed(self.seed)  # random ops draw the reference's numbers
        return _outs(fn(*args, **_with(self.kwargs, values[self.n_args :])))

    def backward(self, outs: list[Any], values: list[torch.Tensor], ups: list[Any]) -> list[Any]:
        used = [k for k in self.diff_out if outs[k].requires_grad]
        if not used or not self.diff_in:
            return [torch.zeros_like(values[k]) for k in self.diff_in]
        got = torch.autograd.grad(
            [outs[k] for k in used], [values[k] for k in self.diff_in],
            [ups[self.diff_out.index(k)] for k in used], allow_unused=True,
        )  # fmt: skip
        return [torch.zeros_like(values[k]) if g is None else g for k, g in zip(self.diff_in, got)]


def _local(call: _Call, s: Strategy, mesh: Any) -> tuple[list[Any], list[Any]]:
    """The strategy's local outputs and local input gradients on this rank."""
    values = [
        _piece(t.detach(), s.ins[k][0], mesh, call.seed + 7 * k).requires_grad_(call.grad_in[k])
        for k, t in enumerate(call.inputs)
    ]
    size = None
    if op_name(call.target) in SIZE_ARG_OPS and any(
        not isinstance(p, Replicate) for p in s.outs[0]
    ):
        size = list(local_shape(tuple(call.refs[0].shape), s.outs[0], (N,)))
    outs = call.run(_kernel(s.kernel, mesh) if s.kernel else call.target, values, size)
    for k, (o, r) in enumerate(zip(outs, call.refs)):
        want = local_shape(tuple(r.shape), s.outs[k], (N,))
        if tuple(o.shape) != want:
            raise AssertionError(
                f"output {k} has local shape {list(o.shape)}, but layout {_lay(s.outs[k])} "
                f"of {list(r.shape)} needs {list(want)}"
            )
    ups = []
    for k in call.diff_out:
        q, up = s.outs[k][0], call.ups[k]
        ups.append(_piece(up, q, mesh) if isinstance(q, Shard) else up / N if q == AVG else up)
    return outs, call.backward(outs, values, ups)


def check_op(
    label: str, target: Any, args: Any, kwargs: Any, strategies: list[Strategy], mesh: Any,
    seed: int, values: bool = True, frozen: tuple[int, ...] = (),
) -> list[str]:  # fmt: skip
    """Every strategy of one node, checked; the failures, one line each."""
    call = _Call(target, args, kwargs, seed, frozen)
    failures: list[str] = []
    for s in strategies:
        where = f"{label} {describe(s)}"
        error, outs, grads = "", [], []
        try:
            outs, grads = _local(call, s, mesh)
        except Exception as err:  # noqa: BLE001 - reported with the strategy
            error = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        if not _agree(not error):
            failures.append(f"{where}: {error or 'the other rank failed'}")
            continue
        for k, (o, r) in enumerate(zip(outs, call.refs)):
            bad = _close(_whole(o, s.outs[k][0], mesh, r), r.detach()) if values else ""
            if bad:
                failures.append(f"{where}: output {k} ({_lay(s.outs[k])}) {bad}")
        for k, local, want in zip(call.diff_in, grads, call.grads):
            gp = s.grads[k][0]
            if isinstance(gp, Partial):
                local = _whole(local, gp, mesh, want)
            elif isinstance(gp, Shard):
                want = _piece(want, gp, mesh)
            elif s.ins[k][0] == AVG:
                want = want / N
            bad = _close(local, want)
            if bad:
                failures.append(f"{where}: grad of input {k} (declared {_lay(s.grads[k])}) {bad}")
    return failures


def mesh_1d() -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (N,), mesh_dim_names=("x",))

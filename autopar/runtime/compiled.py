"""The compiled model a user trains: a generated program behind the original call.

Contract: ``CompiledModel(program, module, in_spec=None, out_spec=None, aliases=None)``
wraps the root ``Program`` of a generated ``module``:
- ``forward(*args, **kwargs)`` takes the original model's GLOBAL inputs (the same on
  every rank), runs the program and returns outputs of the original type and value: the
  loss is replicated by the plan; other outputs are made whole here (a gather only when
  someone asks for them through ``forward``).
- ``step(*args, target=None, loss_fn=None, **kwargs)`` is one training step (forward and
  backward) that reads only the loss, so no other output is ever gathered; returns the
  detached loss.
- ``parameters()`` are the program's (what an optimizer steps); ``no_sync()`` accumulates
  gradients without reducing them; ``full_state_dict()`` gathers full tensors under the
  original model's state-dict keys (``aliases``: captured FQN -> every original key of
  that tensor, for tied weights); ``code`` is the generated source.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.distributed.tensor import DTensor

from autopar.placement import R, is_replicated
from autopar.runtime.collectives import plan_steps, reshard
from autopar.runtime.layouts import parse_layout
from autopar.runtime.program import Context


def loss_of(out: Any) -> torch.Tensor:
    """``out.loss``, a scalar output, or a tuple's scalar first element."""
    loss = getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        if out[0].dim() == 0:
            return out[0]
    raise ValueError(
        f"cannot find a scalar loss in the model's output ({type(out).__name__}); pass "
        "step(..., target=y, loss_fn=fn) with fn(output, target) -> scalar mean loss"
    )


class CompiledModel(torch.nn.Module):
    ctx: Context

    def __init__(
        self,
        program: torch.nn.Module,
        module: Any,
        in_spec: Any = None,
        out_spec: Any = None,
        aliases: dict[str, list[str]] | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        self.program = program
        self.ctx = program.ctx  # type: ignore[assignment]
        self.outputs: tuple[tuple[str, str], ...] = tuple(module.OUTPUTS)
        self.loss_index: int | None = module.LOSS
        self.params_spec = module.PARAMS
        self.inputs: tuple[str, ...] = tuple(module.INPUTS)
        self._in_spec, self._out_spec = in_spec, out_spec
        self._aliases = aliases or {}
        self.code = source
        self.plan: Any = None
        self._explicit = getattr(module, "COLLECTIVES", {})
        self.module = module

    # ---- calling -------------------------------------------------------------------------
    def _flat(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if self._in_spec is None:  # positional first, then the program's inputs by name
            rest = [n for n in self.inputs[len(args) :] if n in kwargs]
            return [*args, *(kwargs[n] for n in rest)]
        from torch.fx._pytree import tree_flatten_spec

        return list(tree_flatten_spec((args, kwargs), self._in_spec))

    def _whole(self, x: Any, layout: str) -> Any:
        lay = parse_layout(layout)
        if not isinstance(x, torch.Tensor) or is_replicated(lay):
            return x
        full = tuple(R for _ in lay)
        steps = plan_steps(lay, full, full, self.ctx.axes.names)
        assert steps is not None, f"output layout {layout} cannot be gathered"
        return reshard(x, self.ctx.axes, *steps)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outs = self.program(*self._flat(args, kwargs))
        if not torch.is_grad_enabled():  # no backward follows: FSDP2 frees its gathers now
            for m in self.program.modules():
                reshard = getattr(m, "reshard", None)
                if callable(reshard) and hasattr(m, "unshard"):
                    reshard()
        leaves = [self._whole(o, lay) for o, (_, lay) in zip(outs, self.outputs)]
        if self._out_spec is None:
            return leaves[0] if len(leaves) == 1 else tuple(leaves)
        return pytree.tree_unflatten(leaves, self._out_spec)

    def step(
        self,
        *args: Any,
        target: Any = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if loss_fn is None and self.loss_index is not None:
            i = self.loss_index
            loss = self._whole(self.program(*self._flat(args, kwargs))[i], self.outputs[i][1])
        else:
            out = self(*args, **kwargs)
            loss = loss_fn(out, target) if loss_fn is not None else loss_of(out)
        loss.backward()
        return loss.detach()

    def module_meta(self, name: str, whole: bool) -> list[tuple[tuple[int, ...], str]]:
        """The program's ``INPUT_META``/``OUTPUT_META`` (global shapes); with ``whole`` False
        each one's local shape on this rank: an output's by its layout in ``OUTPUTS``, an
        input's by the layout it arrives in (``INPUT_LAYOUTS``; whole where it has none)."""
        from autopar.placement import local_shape

        meta = list(getattr(self.module, name))
        if whole:
            return meta
        sizes = tuple(self.ctx.axes.size[n] for n in self.ctx.axes.names)
        if name == "INPUT_META":
            whole_lay = "R" * len(sizes)
            lays = list(getattr(self.module, "INPUT_LAYOUTS", ())) or [whole_lay] * len(meta)
        else:
            lays = [lay for _, lay in self.outputs]
        return [(local_shape(tuple(shape), parse_layout(lay), sizes), dtype)
                for (shape, dtype), lay in zip(meta, lays, strict=True)]  # fmt: skip

    def whole(self, fqn: str, t: torch.Tensor) -> torch.Tensor:
        """A parameter-shaped local tensor (the parameter, its gradient) made whole."""
        from autopar.runtime.collectives import general_reshard

        t = t.full_tensor() if isinstance(t, DTensor) else t
        held = self.params_spec[fqn].held(self.ctx.axes.names)
        if is_replicated(held):
            return t
        text = "".join(str(x) for x in held)
        return general_reshard(t.detach(), self.ctx.axes, text, "R" * len(held), "R" * len(held))

    def expected_collectives(self, phase: str | None = None) -> dict[str, int]:
        """The collectives one training step issues, from the program's structure: its
        explicit statements, one gather per FSDP2 module in forward (and again in backward
        where it reshards after forward), one reduce-scatter per FSDP2 module and one
        all-reduce per gradient bucket in backward; the recomputed layers' forward
        collectives once more in backward (``RECOMPUTED``)."""
        from collections import Counter

        from torch.distributed.fsdp import FSDPModule

        out: dict[str, Counter[str]] = {ph: Counter(self._explicit.get(ph, {}))
                                        for ph in ("forward", "backward")}  # fmt: skip
        out["backward"].update(getattr(self.module, "RECOMPUTED", {}))
        for m in self.program.modules():
            if not isinstance(m, FSDPModule):
                continue
            group = getattr(m._get_fsdp_state(), "_fsdp_param_group", None)  # type: ignore[attr-defined]
            if group is None:
                continue
            out["forward"]["all_gather"] += 1
            out["backward"]["reduce_scatter"] += 1
            if group.post_forward_mesh_info is not None:
                out["backward"]["all_gather"] += 1
        reducer = getattr(self.program, "grad_reducer", None)
        if reducer is not None:
            out["backward"]["all_reduce"] += len(reducer.buckets)
        phases = ("forward", "backward") if phase is None else (phase,)
        total: Counter[str] = Counter()
        for ph in phases:
            total.update(out[ph])
        return {k: v for k, v in total.items() if v}

    # ---- gradients ----------------------------------------------------------------------
    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        reducer = getattr(self.program, "grad_reducer", None)
        fsdp = getattr(self.program, "set_requires_gradient_sync", None)
        with reducer.no_sync() if reducer is not None else contextlib.nullcontext():
            if fsdp is not None:
                fsdp(False)
            try:
                yield
            finally:
                if fsdp is not None:
                    fsdp(True)

    # ---- state ----------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Full tensors under the original keys (a collective: call on every rank)."""
        out: dict[str, torch.Tensor] = {}
        for fqn, p in self.program.named_parameters():
            t = self.whole(fqn, p)
            for key in self._aliases.get(fqn, [fqn]):
                out[key] = t.detach()
        for fqn, b in self.program.named_buffers():
            for key in self._aliases.get(fqn, [fqn]):
                out[key] = b.detach()
        return out


def instantiate(
    source: str,
    ctx: Any,
    state: dict[str, torch.Tensor],
    *,
    name: str = "autopar_program",
    in_spec: Any = None,
    out_spec: Any = None,
    aliases: dict[str, list[str]] | None = None,
) -> CompiledModel:
    """Run generated ``source``: build its Program on ``ctx``, fill it from the full
    tensors in ``state`` (see ``Program.materialize``), shard it (``parallelize``)."""
    from autopar.runtime.program import load_source

    module = load_source(source, name)
    return build_program(module, ctx, state, in_spec=in_spec, out_spec=out_spec,
                         aliases=aliases, source=source)  # fmt: skip


def build_program(
    module: Any,
    ctx: Any,
    state: dict[str, torch.Tensor],
    *,
    in_spec: Any = None,
    out_spec: Any = None,
    aliases: dict[str, list[str]] | None = None,
    source: str = "",
) -> CompiledModel:
    """A generated ``module`` (imported from an emitted program.py, or executed source) on
    ``ctx``: its Program, filled from ``state``, sharded by its ``parallelize``."""
    program = module.Program(ctx)
    program.materialize(state, module.PARAMS)
    module.parallelize(program, ctx)
    return CompiledModel(program, module, in_spec, out_spec, aliases, source)

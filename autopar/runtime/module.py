"""The compiled model: an nn.Module that runs the generated per-rank program.

Contract: ``DistributedModel(captured, plan, device_mesh, original)`` turns every
trainable parameter into a DTensor ``nn.Parameter`` in the plan's layout (values
broadcast from rank 0, so every rank starts from the same weights), lowers the graph
with ``codegen.lower`` and runs it. ``forward`` takes the same global inputs as the
original model on every rank and returns outputs of the same type and value.
``parameters()`` are what a ``torch.optim`` optimizer steps. ``full_state_dict()``
gathers full tensors under the original model's state-dict keys. ``code`` is the
generated program's source.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from autopar.capture import Captured
from autopar.codegen.lower import lower
from autopar.placement import to_dtensor_placements
from autopar.plan import Plan


def _owner(root: torch.nn.Module, fqn: str) -> tuple[torch.nn.Module, str]:
    *path, leaf = fqn.split(".")
    mod = root
    for p in path:
        mod = getattr(mod, p)
    return mod, leaf


class DistributedModel(torch.nn.Module):
    def __init__(
        self, captured: Captured, plan: Plan, device_mesh: Any, original: torch.nn.Module
    ) -> None:
        super().__init__()
        self.plan = plan
        self.device_mesh = device_mesh
        gm = captured.graph_module
        layouts = plan.params
        # the original state-dict keys of each captured tensor (tied weights share one)
        ids: dict[int, list[str]] = {}
        for key, t in original.state_dict(keep_vars=True).items():
            ids.setdefault(id(t), []).append(key)
        self._keys: dict[str, list[str]] = {}
        for fqn in (*captured.param_names, *captured.buffer_names):
            mod, leaf = _owner(gm, fqn)
            t = getattr(mod, leaf)
            self._keys[fqn] = ids.get(id(t), [fqn])
        for fqn in captured.param_names:
            mod, leaf = _owner(gm, fqn)
            p = getattr(mod, leaf)
            placements = to_dtensor_placements(layouts[fqn])
            dt = distribute_tensor(p.detach().clone(), device_mesh, placements)  # type: ignore[arg-type]
            mod.register_parameter(leaf, torch.nn.Parameter(dt, requires_grad=p.requires_grad))
        self.graph_module = lower(captured, plan, device_mesh)
        self._regather = any(n.reshard_after_forward for n in plan.nodes if n.kind == "param")
        self._buffers_fqn = captured.buffer_names
        self._params_fqn = captured.param_names

    @property
    def code(self) -> str:
        return self.graph_module.code

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._regather:
            return self.graph_module(*args, **kwargs)
        with self.graph_module.reshard.saving():  # type: ignore[union-attr,operator]
            return self.graph_module(*args, **kwargs)

    # ---- training step (the same call as autopar.pipeline's PipelineModel.step) ------
    def step(
        self, *args: Any, target: Any = None, loss_fn: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        """Forward and backward of one global batch; returns the detached loss
        (``out.loss``, a scalar output, or ``loss_fn(out, target)``)."""
        from autopar.pipeline.loss import loss_of

        out = self(*args, **kwargs)
        loss = loss_fn(out, target) if loss_fn is not None else loss_of(out)
        loss.backward()
        return loss.detach()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for fqn in (*self._params_fqn, *self._buffers_fqn):
            mod, leaf = _owner(self.graph_module, fqn)
            t = getattr(mod, leaf)
            full = t.full_tensor() if isinstance(t, DTensor) else t
            for key in self._keys.get(fqn, [fqn]):
                out[key] = full.detach()
        return out

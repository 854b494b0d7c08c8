"""Parameter sharding with FSDP2 (``torch.distributed.fsdp.fully_shard``), as the plan says.

Contract: ``fully_shard(module, ctx, params, path, axis=, reshard_after_forward=)`` applies
FSDP2 to ``module`` (a layer submodule at ``path``, or the root with ``path == ""``) over
the mesh axis ``axis``: the parameters whose plan mode is "fsdp"/"zero2" on that axis
are sharded on their planned dim (``shard_placement_fn``), every other parameter is left
to the program (``ignored_params``: used where stored; its gradient reduced by the
``GradReducer``). Gradients are SUMMED (divide factor 1: the program's loss is the
global-batch loss, so each rank's gradient is a partial sum). Under "bf16-mixed" the
gathered parameters are bf16 and gradients are reduced in ``ctx.reduce_dtype`` (fp32 by
default). Each layer prefetches the next layer's gather in forward and the previous
one's in backward (``set_modules_to_forward_prefetch`` / ``..._backward_prefetch``),
issued asynchronously so it overlaps the current layer's compute.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from autopar.runtime.program import Context, Param


def _policy(ctx: Context) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if ctx.precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                    reduce_dtype=ctx.reduce_dtype or torch.float32)  # fmt: skip
    return MixedPrecisionPolicy()


def fully_shard(
    module: torch.nn.Module,
    ctx: Context,
    params: Mapping[str, Param],
    path: str,
    *,
    axis: str,
    reshard_after_forward: bool,
) -> None:
    from torch.distributed.fsdp import fully_shard as fsdp
    from torch.distributed.tensor import Shard

    prefix = f"{path}." if path else ""
    dims: dict[int, int] = {}
    ignored: set[torch.nn.Parameter] = set()
    for rel, p in module.named_parameters():
        if isinstance(p, DTensor):  # already sharded by a layer's own call
            continue
        spec = params[prefix + rel]
        if spec.mode in ("fsdp", "zero2") and spec.fsdp is not None and spec.fsdp[0] == axis:
            dims[id(p)] = spec.fsdp[1]
        else:
            ignored.add(p)
    fsdp(
        module,
        mesh=ctx.mesh[axis],
        reshard_after_forward=reshard_after_forward,
        shard_placement_fn=lambda p: Shard(dims.get(id(p), 0)),
        mp_policy=_policy(ctx),
        ignored_params=ignored or None,
    )
    module.set_gradient_divide_factor(1.0)  # type: ignore[operator]
    module.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]
    if not path:
        _prefetch(module)


def _prefetch(root: torch.nn.Module) -> None:
    """Chain the FSDP layers: gather layer i+1 while layer i computes."""
    from torch.distributed.fsdp import FSDPModule

    chain = [m for m in root.modules() if isinstance(m, FSDPModule) and m is not root]
    for i, m in enumerate(chain):
        state = m._get_fsdp_state()  # type: ignore[attr-defined]
        group = getattr(state, "_fsdp_param_group", None)
        if group is not None:
            group.unshard_async_op = True
        if i + 1 < len(chain):
            m.set_modules_to_forward_prefetch([chain[i + 1]])
        if i > 0:
            m.set_modules_to_backward_prefetch([chain[i - 1]])

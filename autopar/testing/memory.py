"""Measure what a compiled model's training step really holds for backward.

Contract: ``saved_bytes(compiled, *args, **kwargs) -> int`` runs one training step (forward
reading only the loss, then backward) of ``compiled`` (a ``CompiledModel``) and returns the
bytes this rank's autograd graph holds when backward starts: every distinct storage packed
by ``torch.autograd.graph.saved_tensors_hooks`` during forward that is still allocated at
the end of forward, except the program's own parameters (counted as parameters) and the
step's inputs. A gathered parameter copy kept for backward (ZeRO-2) counts; one FSDP2 has
freed after forward (to gather again in backward) does not. A recomputed layer
(``rt.recompute``) packs only its inputs through the hooks (its checkpoint saves them so);
what a selective checkpoint keeps besides (the matmul outputs, in its own storage,
``runtime.recompute.observe``) is counted too. This is the figure the plan calls
``activations``.
"""

from __future__ import annotations

from typing import Any

import torch


def saved_bytes(compiled: Any, *args: Any, **kwargs: Any) -> int:
    import torch.utils._pytree as pytree

    packed: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        packed.setdefault(s.data_ptr(), s)
        return t

    from autopar.runtime.recompute import observe

    caches: list[Any] = []
    program = compiled.program
    i = compiled.loss_index
    # parameters as stored (before forward: FSDP2 swaps in gathered copies during it)
    own = {_ptr(p) for p in program.parameters()} | {_ptr(b) for b in program.buffers()}
    own |= {_ptr(t) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
    stop = observe(caches.append)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outs = program(*compiled._flat(args, kwargs))
            loss = compiled._whole(outs[i], compiled.outputs[i][1])
    finally:
        stop()
    for storage in caches:  # selective checkpoints: {op: {index: outputs}}
        for leaf in pytree.tree_leaves([list(v.values()) for v in storage.values()]):
            t = getattr(leaf, "val", None)
            if isinstance(t, torch.Tensor):
                pack(t)
    held = sum(s.nbytes() for ptr, s in packed.items() if ptr not in own and s.nbytes() > 0)
    loss.backward()
    return int(held)


def _ptr(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return int(local.untyped_storage().data_ptr())

"""Per-device memory of a plan: what the planner's memory constraint adds up.

Contract (all figures are bytes held by ONE device, for a symmetric SPMD plan):
- a trainable parameter in storage layout L holds its local shard, a gradient of the same
  size and dtype, the optimizer's state (``cost_models.memory``: Adam keeps two fp32
  moments per element and one fp32 step scalar per tensor) and, for bf16/fp16
  parameters, an fp32 master copy; a buffer holds its local bytes;
- an op holds, until backward, the local bytes of each output that autograd saves
  (``solve.saved``), views excepted (they alias their input);
- a sharded parameter gathered for an op that saves it is held until backward unless the
  parameter re-gathers in backward (``Strategy.regather``, FSDP): that copy is an edge term
  because its size depends on the consuming op's layout;
- likewise an activation moved into a larger layout for an op that saves it (Megatron-SP's
  sequence gathered before a column-parallel projection): the edge adds the gathered
  copy's bytes beyond the producer's value, which the producer's term already counts.
Peak = the sum, i.e. everything saved by the forward pass is alive when backward starts.
Transient buffers (a collective's output, one op's workspace) are not modelled: the
budget's headroom covers them.
"""

from __future__ import annotations

from autopar.placement import Layout, Shard
from autopar.solve.graph import PNode
from autopar.solve.saved import Saved, aliases
from autopar.strategies.types import Strategy, TensorMeta
from cost_models import (
    TrainingMemory,
    master_weight_bytes,
    optimizer_state_bytes,
    optimizer_step_bytes,
)


def local_bytes(meta: TensorMeta, layout: Layout, sizes: tuple[int, ...]) -> int:
    div = 1
    for p, n in zip(layout, sizes):
        if isinstance(p, Shard):
            div *= n
    return meta.nbytes // div


def node_memory(
    node: PNode, s: Strategy, saved: Saved, sizes: tuple[int, ...], optimizer: str
) -> TrainingMemory:
    if node.kind == "param":
        meta = node.out_metas[0]
        nbytes = local_bytes(meta, s.outs[0], sizes)
        numel = nbytes // meta.dtype.itemsize
        if not node.requires_grad:
            return TrainingMemory(params=nbytes)
        return TrainingMemory(
            params=nbytes,
            grads=nbytes,
            optimizer_state=optimizer_state_bytes(numel, optimizer)
            + optimizer_step_bytes(optimizer),
            master_weights=master_weight_bytes(numel, meta.dtype),
        )
    if node.kind == "buffer":
        return TrainingMemory(params=local_bytes(node.out_metas[0], s.outs[0], sizes))
    if node.kind != "op" or aliases(node):  # its storage is its input's
        return TrainingMemory()
    held = sum(
        local_bytes(m, lay, sizes)
        for i, (m, lay) in enumerate(zip(node.out_metas, s.outs))
        if (node.name, i) in saved.values
    )
    held += int(saved.internal.get(node.name, 0.0) / s.compute_div)
    return TrainingMemory(activations=held)


def held_gather_bytes(
    src: PNode,
    s_src: Strategy,
    dst_layout: Layout,
    saved_slot: bool,
    sizes: tuple[int, ...],
    idx: int = 0,
) -> int:
    """Bytes an edge's moved copy adds to what autograd keeps for backward: a gathered
    parameter copy (ZeRO-2 style; FSDP's is freed and gathered again), or the growth of an
    activation gathered for an op that saves it; else 0."""
    if s_src.regather or not saved_slot:
        return 0
    meta = src.out_metas[idx]
    if src.kind != "param":
        return max(
            0, local_bytes(meta, dst_layout, sizes) - local_bytes(meta, s_src.outs[idx], sizes)
        )
    if s_src.outs[0] == dst_layout or not any(isinstance(p, Shard) for p in s_src.outs[0]):
        return 0
    return local_bytes(meta, dst_layout, sizes)

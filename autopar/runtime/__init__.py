"""The runtime a generated program imports: collectives on local tensors, kernels,
parameter registration and weights, FSDP2 sharding, bucketed gradient reduction.

Contract: ``import autopar.runtime as rt`` gives every name a generated program uses
(``rt.reshard``, ``rt.general_reshard``, ``rt.vocab_embedding``,
``rt.sharded_cross_entropy``, ``rt.Param``, ``rt.Program``, ``rt.Context``, ``rt.param``,
``rt.buffer``, ``rt.layers``, ``rt.submodule``, ``rt.precision``, ``rt.fully_shard``,
``rt.reduce_gradients``, ``rt.recompute``). It imports torch and nothing of autopar's planner: no capture,
strategies, cost model, solver or planning module.
"""

from autopar.runtime.collectives import Axes, general_reshard, reshard
from autopar.runtime.compiled import CompiledModel, build_program, instantiate
from autopar.runtime.fsdp import fully_shard
from autopar.runtime.grads import GradReducer, reduce_gradients
from autopar.runtime.kernels import sharded_cross_entropy, vocab_embedding
from autopar.runtime.pipeline import PipelineModel, build_pipeline_program
from autopar.runtime.program import (
    Context,
    Param,
    Program,
    buffer,
    layers,
    load_source,
    param,
    precision,
    submodule,
)
from autopar.runtime.recompute import recompute

__all__ = [
    "Axes", "CompiledModel", "Context", "PipelineModel", "build_pipeline_program",
    "build_program", "instantiate", "GradReducer", "Param", "Program", "buffer", "fully_shard",
    "general_reshard", "layers", "load_source", "param", "precision", "recompute",
    "reduce_gradients",
    "reshard", "sharded_cross_entropy", "submodule", "vocab_embedding",
]  # fmt: skip

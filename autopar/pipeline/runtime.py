"""Build a pipeline plan's program on this rank: its stage programs in a ``PipelineModel``.

Contract: ``build_pipeline(model, captured_mb, plan, timeout)`` runs on every rank of the
plan's full mesh (``plan.pipeline["mesh"]``: pp x dp x tp, pp outermost). ``captured_mb`` is
the model captured at the microbatch shape; it is cut into stages exactly as the planner
cut it (``planning.pipeline.stage_graphs``), each stage of this rank (stage ``s`` runs on
pipeline rank ``s % pp``) is checked against its stage plan (``plan.stages[s]``), generated
by the same code generator as ``autopar.compile`` and built with the original model's
weights by ``runtime.pipeline.build_pipeline_program`` — the call an emitted pipeline
program makes. Returns ``runtime.pipeline.PipelineModel``. ``microbatch_capture(model,
args, kwargs)`` gives ``m -> the model captured on the first m samples``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from autopar.capture import Captured
from autopar.plan import Plan
from autopar.plan_check import check_against
from autopar.runtime.pipeline import PipelineModel, build_pipeline_program


def build_pipeline(
    model: torch.nn.Module, captured_mb: Captured, plan: Plan, timeout: float | None = None
) -> PipelineModel:
    from autopar.api import state_keys
    from autopar.codegen import program_source
    from autopar.planning.pipeline import stage_graphs
    from autopar.runtime.program import load_source

    info = plan.pipeline or {}
    degrees = {n: int(s) for n, s in info["mesh"].items()}
    axes = tuple(degrees.items()) if len(degrees) > 1 else (("pp", degrees["pp"]), ("dp", 1))
    bounds = tuple(tuple(st["units"]) for st in info["stages"])
    split = stage_graphs(captured_mb, bounds)  # type: ignore[arg-type]
    pp, rank = degrees["pp"], dist.get_rank() // (dist.get_world_size() // degrees["pp"])
    state = {**model.state_dict(keep_vars=True), **dict(model.named_buffers())}
    modules = {}
    for st in split.stages:
        if st.index % pp != rank:
            continue
        check_against(plan.stages[st.index], st.captured)
        source = program_source(st.captured, plan.stages[st.index], plan.precision,
                                f"autopar pipeline stage {st.index} of {len(split.stages)}")  # fmt: skip
        for b in st.captured.buffer_names:
            state.setdefault(b, _get(st.captured.graph_module, b))
        modules[st.index] = load_source(source, f"autopar_stage{st.index}")
    shared = {fqn: tuple(_get(captured_mb.graph_module, fqn).shape) for fqn in split.shared_params}
    pipe = build_pipeline_program(
        modules, axes, len(split.stages), str(info["schedule"]), int(info["microbatches"]),
        state, precision=plan.precision, shared=shared, timeout=timeout,
        aliases=state_keys(captured_mb, model), in_spec=split.in_spec, out_spec=split.out_spec,
        info=info,
    )  # fmt: skip
    for m, index in zip(pipe._models, pipe.stage_indices):
        m.plan = plan.stages[index]
    pipe.plan = plan
    return pipe


def microbatch_capture(model: torch.nn.Module, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:  # fmt: skip
    """``m -> model captured on the first m samples of every batched input``."""
    import torch.utils._pytree as pytree

    from autopar.capture import capture

    batch = next(t.shape[0] for t in pytree.tree_leaves((args, kwargs))
                 if isinstance(t, torch.Tensor) and t.dim() > 0)  # fmt: skip

    def cut(m: int) -> Captured:
        def piece(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == batch:
                return x[:m]
            return x

        return capture(model, pytree.tree_map(piece, args), pytree.tree_map(piece, kwargs))

    return cut


def _get(root: torch.nn.Module, fqn: str) -> Any:
    obj: Any = root
    for part in fqn.split("."):
        obj = getattr(obj, part)
    return obj

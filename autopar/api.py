"""``autopar.compile``: the one call a training script makes.

Contract: call on every rank after ``torch.distributed.init_process_group``. It
captures the model, plans it on the mesh (``strategy`` "auto" solves the ILP; "dp",
"tp", "fsdp" and "zero" are presets, see ``solve.presets``) under a per-device memory
budget (``memory_budget`` bytes, default the device's memory x 0.9, priced for
``optimizer``'s state) and returns a ``DistributedModel``. Every rank computes the same
plan (the solver is deterministic), so no plan has to be broadcast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from autopar.capture import capture
from autopar.mesh import MeshSpec
from autopar.plan import Plan
from autopar.runtime.module import DistributedModel
from autopar.solve.planner import make_plan
from autopar.solve.presets import PRESETS

if TYPE_CHECKING:
    from autopar.pipeline.runtime import PipelineModel


def compile(  # noqa: A001 - the public name users asked for
    model: torch.nn.Module,
    example_inputs: tuple[Any, ...] = (),
    example_kwargs: dict[str, Any] | None = None,
    *,
    strategy: str = "auto",
    mesh: Mapping[str, int] | MeshSpec | None = None,
    cluster: str | None = None,
    plan: Plan | None = None,
    memory_budget: float | None = None,
    optimizer: str = "adamw",
    pipeline: Mapping[str, Any] | None = None,
) -> DistributedModel | PipelineModel:
    if strategy not in PRESETS and strategy != "pp":
        raise ValueError(f"strategy must be one of {', '.join(PRESETS)}, got {strategy!r}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "autopar.compile needs an initialised process group: call "
            "torch.distributed.init_process_group('gloo' or 'nccl') on every rank first "
            "(torchrun sets up the environment for it)"
        )
    world = dist.get_world_size()
    spec = MeshSpec.of(mesh if mesh is not None else world)
    spec.check_world(world)
    if strategy == "pp" or "pp" in spec.names:  # pipeline stages: autopar.pipeline
        from autopar.pipeline.runtime import compile_pipeline

        spec = MeshSpec.of({"pp": world}) if mesh is None else spec
        return compile_pipeline(model, tuple(example_inputs), example_kwargs, spec, strategy,
                                cluster, pipeline)  # fmt: skip
    captured = capture(model, tuple(example_inputs), example_kwargs)
    if plan is None:
        cost_model = None
        if cluster is not None:
            from cost_models import ClusterSpec, CostModel

            cost_model = CostModel(ClusterSpec.parse(cluster), spec)
        plan = make_plan(
            captured, spec, strategy, cost_model, memory_budget=memory_budget, optimizer=optimizer
        )
    elif plan.mesh != spec:
        raise ValueError(f"the plan was made for mesh {plan.mesh}, but mesh={spec} was given")
    device_type = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    device_mesh = spec.device_mesh(device_type)
    return DistributedModel(captured, plan, device_mesh, model)

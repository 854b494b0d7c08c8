"""``autopar.compile``: the one call a training script makes.

Contract: call on every rank after ``torch.distributed.init_process_group``. It
captures the model, plans it on the mesh (``strategy`` "auto" solves the ILP; "dp",
"tp", "fsdp" and "zero" are presets, see ``solve.presets``) under a per-device memory
budget (``memory_budget`` bytes, default the device's memory x 0.9, priced for
``optimizer``'s state) and returns a ``DistributedModel``. Every rank computes the same
plan (the solver is deterministic), so no plan has to be broadcast. A ``plan=`` given
is checked against the captured graph first (``plan_check.check_against``). Every
collective on the mesh's groups waits at most ``timeout`` seconds (default 300) for its
peers, then raises on the ranks waiting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from autopar.capture import Captured, capture
from autopar.codegen import program_source
from autopar.mesh import MeshSpec
from autopar.plan import Plan
from autopar.plan_check import check_against
from autopar.precision import PRECISIONS, default_for
from autopar.runtime.compiled import CompiledModel, instantiate
from autopar.runtime.program import Context
from autopar.runtime.ranks import timed_device_mesh
from autopar.solve.planner import make_plan
from autopar.solve.presets import PRESETS
from autopar.timeouts import DEFAULT_TIMEOUT_S, check_timeout

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
    precision: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> CompiledModel | PipelineModel:
    timeout = check_timeout(timeout, "timeout")
    if plan is not None and not isinstance(plan, Plan):
        raise TypeError(f"plan must be an autopar Plan (Plan.load(path)), got {type(plan).__name__}")
    if strategy not in PRESETS and strategy != "pp":
        raise ValueError(f"strategy must be one of {', '.join(PRESETS)}, got {strategy!r}")
    if precision is None:  # how the plan was made, else what the world's devices train in
        cuda = torch.cuda.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
        precision = plan.precision if plan is not None else default_for(cuda)
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}; "
            "bf16-mixed keeps fp32 master weights and computes in bf16"
        )
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
        if "pp" not in spec.names:
            raise ValueError(
                f"strategy='pp' cuts the model into pipeline stages along a mesh axis named "
                f"'pp', but mesh {spec} has none; pass a mesh with one (e.g. "
                f"mesh={{'pp': {world}}}), or leave mesh out to pipeline over all {world} ranks"
            )
        return compile_pipeline(model, tuple(example_inputs), example_kwargs, spec, strategy,
                                cluster, pipeline, precision)  # fmt: skip
    captured = capture(model, tuple(example_inputs), example_kwargs)
    if plan is None:

        def solve() -> Plan:
            cost_model = None
            if cluster is not None:
                from cost_models import ClusterSpec, CostModel

                cost_model = CostModel(ClusterSpec.parse(cluster), spec)
            return make_plan(captured, spec, strategy, cost_model, memory_budget=memory_budget,
                             optimizer=optimizer, precision=precision)  # fmt: skip

        plan = plan_on_rank0(solve)
    elif plan.mesh != spec:
        raise ValueError(f"the plan was made for mesh {plan.mesh}, but mesh={spec} was given")
    elif plan.precision != precision:
        raise ValueError(
            f"the plan was made for precision {plan.precision!r}, but precision={precision!r} "
            "was given; leave precision out to use the plan's, or re-plan"
        )
    else:
        check_against(plan, captured)  # a plan is untrusted data: refused before it runs
    device_type = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    ctx = Context(timed_device_mesh(device_type, spec.sizes, spec.names, timeout), precision)
    compiled = build(captured, plan, model, ctx)
    return compiled


def plan_on_rank0(solve: Any) -> Plan:
    """Rank 0 solves; every rank gets its plan (a time-limited solver under load may
    return different incumbents on different ranks, and ranks must run one program).
    A failure on rank 0 is raised on every rank."""
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", solve().dumps())
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return Plan.from_json(json.loads(value))


def build(captured: Captured, plan: Plan, model: torch.nn.Module, ctx: Context) -> CompiledModel:
    """Generate the program for ``plan``, run it on ``ctx`` with ``model``'s weights."""
    source = program_source(captured, plan, ctx.precision)
    state = {**model.state_dict(keep_vars=True), **dict(model.named_buffers())}
    for name in captured.buffer_names:  # constants lifted by export
        if name not in state:
            state[name] = _get(captured.graph_module, name)
    info = getattr(captured.graph_module.graph._codegen, "pytree_info", None)
    compiled = instantiate(
        source, ctx, state, in_spec=getattr(info, "in_spec", None),
        out_spec=getattr(info, "out_spec", None), aliases=state_keys(captured, model),
    )  # fmt: skip
    compiled.plan = plan
    return compiled


def state_keys(captured: Captured, model: torch.nn.Module) -> dict[str, list[str]]:
    """Captured parameter FQN -> every key of that tensor in ``model.state_dict()``
    (a tied weight has several; the captured graph reads it under one)."""
    ids: dict[int, list[str]] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        ids.setdefault(id(t), []).append(key)
    return {
        fqn: ids.get(id(_get(captured.graph_module, fqn)), [fqn]) for fqn in captured.param_names
    }


def _get(root: torch.nn.Module, fqn: str) -> Any:
    obj: Any = root
    for part in fqn.split("."):
        obj = getattr(obj, part)
    return obj

"""``autopar.compile``: the one call a training script makes.

Contract: call on every rank after ``torch.distributed.init_process_group``. It
captures the model and plans it with the one planning entry (``autopar.planning.plan``)
for the world it runs in (``cluster`` names another of the same size): ``strategy``
"auto" with no ``mesh`` searches pp x dp x tp, stages, schedule and the per-node ILP;
presets, fixed degrees, a ``mesh`` and ``pipeline={"schedule", "microbatches"}`` are
constraints on it; under a per-device memory budget (``memory_budget`` bytes, default the
device's memory x 0.9, priced for ``optimizer``'s state) and in ``precision`` (default:
bf16-mixed on GPUs, fp32 on CPUs). Rank 0 plans and every rank receives its plan. It
returns a ``CompiledModel`` (one stage) or a ``PipelineModel`` (stages), both running
the program the code generator writes for the plan. A ``plan=`` given
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

from autopar import planning
from autopar.capture import Captured, capture
from autopar.codegen import program_source
from autopar.mesh import MeshSpec
from autopar.pipeline.runtime import microbatch_capture
from autopar.plan import Plan
from autopar.plan_check import check_against
from autopar.planning.request import constraints, parse_strategy
from autopar.precision import check as check_precision
from autopar.precision import default_for
from autopar.runtime.compiled import CompiledModel, instantiate
from autopar.runtime.program import Context
from autopar.runtime.ranks import timed_device_mesh
from autopar.timeouts import DEFAULT_TIMEOUT_S, check_timeout

if TYPE_CHECKING:
    from autopar.runtime.pipeline import PipelineModel


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
    options = _pipeline_options(pipeline)
    parse_strategy(strategy)  # bad options fail before anything else
    if precision is not None:
        check_precision(precision)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "autopar.compile needs an initialised process group: call "
            "torch.distributed.init_process_group('gloo' or 'nccl') on every rank first "
            "(torchrun sets up the environment for it)"
        )
    cuda = torch.cuda.is_available() and dist.get_backend() == "nccl"
    if precision is None:  # how the plan was made, else what the world's devices train in
        precision = plan.precision if plan is not None else default_for(cuda)
    check_precision(precision)
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if precision == "bf16" and floats != {torch.bfloat16}:
        raise ValueError(
            f"precision='bf16' trains the model in bf16 as it is, but its parameters are "
            f"{', '.join(sorted(str(d) for d in floats))}; build it in bf16 "
            "(model.to(torch.bfloat16)) first, or use precision='bf16-mixed' to keep fp32 "
            "master weights and compute in bf16"
        )
    world = dist.get_world_size()
    spec_cluster = world_cluster(world, cluster, cuda)
    want = constraints(strategy, mesh, world)  # bad options fail here, on every rank
    args, kwargs = tuple(example_inputs), dict(example_kwargs or {})
    captured = capture(model, args, kwargs)
    per_microbatch = microbatch_capture(model, args, kwargs)
    if plan is None:
        plan = plan_on_rank0(lambda: planning.plan(
            captured, spec_cluster, strategy=strategy, mesh=want.mesh, precision=precision,
            memory_budget=memory_budget, optimizer=optimizer, microbatch_capture=per_microbatch,
            schedule=options.get("schedule"), microbatches=options.get("microbatches"),
        ))  # fmt: skip
    elif plan.precision != precision:
        raise ValueError(
            f"the plan was made for precision {plan.precision!r}, but precision={precision!r} "
            "was given; leave precision out to use the plan's, or re-plan"
        )
    if plan.stages:
        from autopar.pipeline.rebatch import batch_of
        from autopar.pipeline.runtime import build_pipeline

        mb = batch_of(captured) // int((plan.pipeline or {})["microbatches"])
        return build_pipeline(model, per_microbatch(mb), plan, timeout)
    if want.mesh is not None and plan.mesh != want.mesh:
        raise ValueError(f"the plan was made for mesh {plan.mesh}, but mesh={want.mesh} was given")
    plan.mesh.check_world(world)
    check_against(plan, captured)  # a plan is untrusted data: refused before it runs
    device_type = "cuda" if cuda else "cpu"
    ctx = Context(timed_device_mesh(device_type, plan.mesh.sizes, plan.mesh.names, timeout),
                  precision)  # fmt: skip
    return build(captured, plan, model, ctx)


def world_cluster(world: int, cluster: str | None, cuda: bool) -> Any:
    """The cluster ``compile`` plans for: the one named, else the ranks it runs on."""
    from cost_models import ClusterSpec, detect_cluster

    if cluster is not None:
        spec = ClusterSpec.parse(cluster)
        if spec.num_devices != world:
            raise ValueError(
                f"cluster {cluster!r} has {spec.num_devices} devices but the process group has "
                f"{world} ranks; name a cluster of {world} devices (e.g. cpu:{world}) or "
                "leave cluster out"
            )
        return spec
    if not cuda:
        return ClusterSpec.cpu(world)
    here = detect_cluster()
    per = min(here.devices_per_node, world)
    return ClusterSpec(max(1, world // per), per, here.device)


def _pipeline_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = dict(options or {})
    unknown = set(opts) - {"schedule", "microbatches"}
    if unknown:
        raise ValueError(
            f"unknown pipeline options {sorted(unknown)}; use schedule (1f1b, gpipe, "
            "interleaved_1f1b) and microbatches"
        )
    if opts.get("schedule") not in (None, "1f1b", "gpipe", "interleaved_1f1b"):
        raise ValueError(
            f"pipeline schedule must be 1f1b, gpipe or interleaved_1f1b, got {opts['schedule']!r}"
        )
    m = opts.get("microbatches")
    if m is not None and (not isinstance(m, int) or m < 1):
        raise ValueError(f"pipeline microbatches must be a positive int, got {m!r}")
    return opts


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

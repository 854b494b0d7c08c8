"""Planning a named model: build it on the meta device, capture, plan, price the baselines.

Contract (used by every CLI command, ``autopar emit`` and the benchmarks):
- ``Request`` holds how a plan is made (model spec, cluster, strategy, mesh text, batch,
  sequence, memory budget, profile path, precision). ``make(request)`` checks every option,
  builds the model on the meta device and captures it (``capture_model``), plans it with
  the one entry (``autopar.planning.plan``); the stage graphs are that capture re-batched
  to the microbatch (``pipeline.rebatch``: the nodes, names and shapes a capture at the
  microbatch has, since torch.export specializes only size 1), captured again at a
  microbatch of 1 or where re-batching fails; and returns ``(plan, captured)`` with ``plan.source`` recording the request, so
  ``rebuild(plan, model=None)`` can redo it: only a bundled model is rebuilt from what a
  plan names, a user's file only when the user names it (``model``); the plan is checked
  against the rebuilt graph (``plan_check.check_against``) before anything uses it.
- ``baselines(captured, request, plan)``: DDP, FSDP and Megatron-style TP inside a node +
  DP across, planned by the same entry with those presets and no memory limit; name ->
  figures and the speedup of ``plan`` over each, or ``error`` when one cannot be built.
- ``figures(plan)``: the headline predictions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

from autopar.mesh import MeshSpec
from autopar.plan import Plan

NO_BUDGET = float(1 << 62)  # bytes: plans priced without a memory limit


@dataclass(frozen=True)
class Request:
    model: str
    cluster: str | None = None
    strategy: str = "auto"
    mesh: str | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    memory_budget: int | None = None
    profile: str | None = None
    precision: str | None = None


def load_profile(profile: str | None) -> Any:
    from cost_models import Profile

    if not profile:
        return None
    try:
        return Profile.load(profile)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"--profile {profile}: cannot use it ({type(err).__name__}: {err}); pass a profile "
            "JSON written by `autopar calibrate -o PATH`, or leave --profile out"
        ) from None


def cluster_of(text: str | None) -> Any:
    from cost_models import ClusterSpec, detect_cluster

    if text is not None and not text.strip():
        raise ValueError(
            "--cluster is empty; name the hardware to plan for, e.g. --cluster 8xH100 or "
            "--cluster cpu:2, or leave --cluster out to plan for this machine"
        )
    return ClusterSpec.parse(text) if text else detect_cluster()


def capture_model(model: str, batch_size: int | None, seq_len: int | None,
                  precision: str | None = None) -> Any:  # fmt: skip
    """Build ``model`` on the meta device and capture it (in bf16 for precision "bf16");
    a spec that cannot work is refused before anything runs, and an error raised in the
    user's own file is one paragraph."""
    import torch

    from autopar.capture import capture
    from autopar.models import check_model, resolve, user_code_error

    check_model(model)
    try:
        module, args, kwargs = resolve(model, "meta", batch_size, seq_len)
    except Exception as err:
        wrapped = user_code_error(err, model)
        if wrapped is not None:
            raise wrapped from None
        if ":" not in model and isinstance(err, ValueError):  # a bundled model's own check
            raise ValueError(
                f"cannot build {model} with --batch-size {batch_size or 'default'} and "
                f"--seq-len {seq_len or 'default'}: {err}; choose sizes the model supports "
                "(or leave them out for its defaults)"
            ) from None
        raise
    if precision == "bf16":
        module = module.to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # torch.export's own dumps: the CLI says why itself
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                return capture(module, args, kwargs)
        finally:
            logging.disable(logging.NOTSET)


def make(req: Request, captured: Any = None) -> tuple[Plan, Any]:
    """(plan, captured) for a request; every option is checked before the slow capture."""
    from autopar.cli.common import parse_mesh
    from autopar.planning import constraints, plan

    cluster = cluster_of(req.cluster)
    mesh = parse_mesh(req.mesh, cluster.num_devices) if req.mesh else None
    constraints(req.strategy, mesh, cluster.num_devices)
    profile = load_profile(req.profile)
    if captured is None:
        captured = capture_model(req.model, req.batch_size, req.seq_len, req.precision)
    batch, seq = _sizes(captured)

    def at_microbatch(m: int) -> Any:
        from autopar.pipeline.rebatch import RebatchError, rebatch

        if m > 1 and (batch or 0) > 1:  # torch specializes size 1 only: same graph as a capture
            with contextlib.suppress(RebatchError):
                return rebatch(captured, m)
        return capture_model(req.model, m, req.seq_len or seq, req.precision)

    result = plan(captured, cluster, strategy=req.strategy, mesh=mesh,
                  memory_budget=req.memory_budget, precision=req.precision, profile=profile,
                  microbatch_capture=at_microbatch if req.batch_size or batch else None)  # fmt: skip
    source = {**result.source, **dataclasses.asdict(req), "cluster": str(cluster),
              "precision": result.precision, "batch_size": req.batch_size or batch,
              "seq_len": req.seq_len or seq}  # fmt: skip
    return dataclasses.replace(result, source=source), captured


def _source_size(src: dict[str, Any], key: str) -> int | None:
    value = src.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            f"the plan's source.{key} is {value!r}, but it must be a whole number >= 1 or "
            "null; re-create the plan with `autopar plan MODEL --json PATH`"
        )
    return value


def rebuild(plan: Plan, model: str | None = None) -> tuple[Any, Any]:
    """(captured, cost model) for a saved plan, checked against it (``check_against``).

    A plan is data: the model it names in ``source.model`` is rebuilt only when it is a
    bundled one (``autopar.zoo.names()``); a file it names is never imported. ``model``
    (given by the user, e.g. ``--model file.py:fn``) is used instead when given."""
    from autopar import zoo
    from autopar.plan_check import check_against
    from cost_models import CostModel

    src = plan.source
    spec = model or src.get("model")
    if not spec or not isinstance(spec, str):
        raise ValueError(
            "this plan does not record how it was made (no source.model); pass the model "
            "with --model NAME_OR_FILE.py:fn, or re-create the plan with `autopar plan MODEL "
            "--json PATH`"
        )
    if model is None and spec not in zoo.names():
        raise ValueError(
            f"the plan names the model {spec!r}, which is not a bundled model; autopar does "
            "not import or run code because a plan file names it. If you trust that file, "
            f"pass it yourself: --model {spec}"
        )
    batch, seq = _source_size(src, "batch_size"), _source_size(src, "seq_len")
    profile = src.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise ValueError(f"the plan's source.profile must be a path or null, got {profile!r}")
    cluster = src.get("cluster")
    if cluster is not None and not isinstance(cluster, str):
        raise ValueError(f"the plan's source.cluster must be text like 8xH100, got {cluster!r}")
    precision = (
        src.get("precision") if src.get("precision") in ("fp32", "bf16-mixed", "bf16") else None
    )
    captured = capture_model(spec, batch, seq, precision)
    if plan.stages:
        raise ValueError(
            "this is a pipeline plan; its nodes are checked stage by stage where a program is "
            "built (autopar.compile, autopar emit). Explain single nodes of a plan without "
            "pipeline stages, or of one stage (each stage's plan is in plan.stages)"
        )
    check_against(plan, captured)
    return captured, CostModel(cluster_of(cluster), plan.mesh, profile=load_profile(profile))


def _sizes(captured: Any) -> tuple[int | None, int | None]:
    for n in captured.graph_module.graph.nodes:
        val = n.meta.get("val")
        if n.op == "placeholder" and hasattr(val, "shape") and not val.dtype.is_floating_point:
            shape = list(val.shape)
            return (shape[0] if shape else None), (shape[1] if len(shape) > 1 else None)
    return None, None


def figures(plan: Plan) -> dict[str, Any]:
    p = plan.predicted
    return {
        "step_time_s": p.step_time_s, "tokens_per_s": p.tokens_per_s,
        "tflops_per_gpu": p.tflops_per_gpu, "mfu": p.mfu,
        "memory_per_device_bytes": p.memory_per_device_bytes,
        "memory_budget_bytes": p.memory_budget_bytes, "memory": p.memory,
    }  # fmt: skip


def tp_meshes(cluster: Any) -> list[MeshSpec]:
    """Megatron's layouts: tensor parallel inside a node (2, 4, 8 wide), data across."""
    if cluster.num_nodes > 1:
        return [MeshSpec.of({"dp": cluster.num_nodes, "tp": cluster.devices_per_node})]
    n = cluster.devices_per_node
    return [MeshSpec.of({"dp": n // t, "tp": t}) for t in (2, 4, 8) if t <= n and n % t == 0]


def baselines(captured: Any, req: Request, plan: Plan) -> dict[str, Any]:
    from autopar.planning import plan as plan_entry

    cluster = cluster_of(req.cluster)
    n = cluster.num_devices
    step = plan.predicted.step_time_s
    budget = plan.predicted.memory_budget_bytes
    profile = load_profile(req.profile)
    cands: dict[str, list[tuple[MeshSpec, str]]] = {
        "ddp": [(MeshSpec.of(n), "dp")],
        "fsdp": [(MeshSpec.of(n), "fsdp")],
        "megatron_tp_dp": [(m, "tp") for m in tp_meshes(cluster)],
    }
    out: dict[str, Any] = {}
    for name, options in cands.items():
        best: dict[str, Any] | None = None
        errors = []
        for mesh, strategy in options:
            try:  # no budget: a baseline that does not fit is still priced, and marked so
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    p = plan_entry(captured, cluster, strategy=strategy, mesh=mesh,
                                   memory_budget=NO_BUDGET, precision=plan.precision,
                                   profile=profile)  # fmt: skip
            except (ValueError, NotImplementedError) as err:
                errors.append(str(err).split(";")[0][:120])
                continue
            entry: dict[str, Any] = {**figures(p), "mesh": dict(mesh.axes), "strategy": strategy}
            entry["memory_budget_bytes"] = budget
            used = entry.get("memory_per_device_bytes")
            entry["fits"] = None if not used or not budget else bool(float(used) <= float(budget))
            if best is None or entry["step_time_s"] < best["step_time_s"]:
                best = entry
        if best is None:
            out[name] = {"error": errors[0] if errors else "no mesh fits this cluster"}
            continue
        best["speedup"] = best["step_time_s"] / step if step > 0 else None
        out[name] = best
    return out

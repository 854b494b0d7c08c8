"""Planning as the CLI does it: parse the options, build on meta, plan, price the baselines.

Contract:
- ``parse_strategy(text, devices)`` -> ``(strategy, mesh or None, pp)``: a preset name
  (auto, dp, tp, fsdp, zero, pp, 3d) or a fixed mix ``tp=8,pp=4,dp=2`` whose degrees must
  multiply to ``devices`` (else ValueError naming both); the mix's non-pp axes become the
  mesh and the placements on it are solved ("auto").
- ``pp``, ``3d`` and mixes with ``pp > 1`` go through the 3D search (``plan_3d``,
  ``autopar.pipeline.plan3d``): ``pp`` forces pipeline stages, ``3d`` searches every
  pp x dp x tp, a mix fixes the degrees it names (axes pp, dp, tp only). The plan is the
  representative block's intra-op plan with the whole pipeline step in ``predicted``
  and the stages, schedule, microbatches and ranked runners-up in ``plan.pipeline``.
- ``parse_bytes("40GB" | "38GiB" | "1e9")`` -> int bytes > 0; ValueError on anything else.
- ``Request`` holds how a plan is made; ``make(request)`` builds the model on the meta
  device, captures, plans and returns ``(plan, captured)`` with ``plan.source`` filled so
  that ``rebuild(plan, model=None)`` can redo it (``explain --node`` re-prices
  alternatives with it): only a bundled model is rebuilt from what a plan names, a
  user's file only when the user names it (``model``); the plan is checked against the
  rebuilt graph (``plan_check.check_against``) before anything uses it.
- ``baselines(captured, request, plan)``: DDP, FSDP and Megatron-style TP inside a node +
  DP across, planned with the same cost model; name -> figures and the speedup of ``plan``
  over each; a baseline that cannot be built records ``error`` instead.
- ``figures(plan)``: the headline predictions, read with fallbacks while Plan grows them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any

from autopar.mesh import MeshSpec
from autopar.plan import Plan

NO_BUDGET = 1 << 62  # bytes: plans priced without a memory limit
PRESET_NAMES = ("auto", "dp", "tp", "fsdp", "zero", "pp", "3d")
PIPELINE_AXES = ("pp", "dp", "tp")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_strategy(text: str, devices: int) -> tuple[str, MeshSpec | None, int]:
    text = text.strip().lower()
    if "=" not in text:
        if text not in PRESET_NAMES:
            raise ValueError(
                f"--strategy {text!r} is not known; use one of {', '.join(PRESET_NAMES)} or a "
                "fixed mix of degrees such as tp=8,pp=4,dp=2"
            )
        return text, None, 1
    degrees: dict[str, int] = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        name = name.strip()
        if (not size.strip().isdigit() or int(size) < 1 or not name.isidentifier()
                or name in degrees):  # fmt: skip
            raise ValueError(
                f"--strategy {text!r}: each part must be axis=degree with a new axis name and "
                "a degree >= 1, e.g. tp=8,pp=4,dp=2"
            )
        degrees[name] = int(size)
    total = 1
    for degree in degrees.values():
        total *= degree
    if total != devices:
        raise ValueError(
            f"--strategy {text!r} multiplies to {total} devices but the cluster has {devices}; "
            f"choose degrees whose product is {devices} (or change --cluster)"
        )
    pp = degrees.pop("pp", 1)
    mesh = MeshSpec(tuple(degrees.items())) if degrees else MeshSpec.of(1)
    return ("pp" if pp > 1 else "auto"), mesh, pp


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(
            f"--memory-budget {text!r} is not a size; write the bytes each device may use "
            "like 40GB, 38GiB or 80e9"
        )
    value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 1:
        raise ValueError(
            f"--memory-budget {text!r} is {value} bytes; the budget is the memory each device "
            "may use and must be > 0, e.g. --memory-budget 40GB (leave it out for the "
            "device's memory x 0.9)"
        )
    return value


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


def cost_model(cluster: Any, mesh: MeshSpec, profile: str | None) -> Any:
    from cost_models import CostModel, Profile

    if not profile:
        return CostModel(cluster, mesh)
    try:
        loaded = Profile.load(profile)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"--profile {profile}: cannot use it ({type(err).__name__}: {err}); pass a profile "
            "JSON written by `autopar calibrate -o PATH`, or leave --profile out"
        ) from None
    return CostModel(cluster, mesh, profile=loaded)


def _cluster(text: str | None) -> Any:
    from cost_models import ClusterSpec, detect_cluster

    if text is not None and not text.strip():
        raise ValueError(
            "--cluster is empty; name the hardware to plan for, e.g. --cluster 8xH100 or "
            "--cluster cpu:2, or leave --cluster out to plan for this machine"
        )
    return ClusterSpec.parse(text) if text else detect_cluster()


def plan_on(captured: Any, mesh: MeshSpec, strategy: str, cm: Any, budget: int | None) -> Plan:
    from autopar.solve.planner import make_plan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if budget is None:
            return make_plan(captured, mesh, strategy, cm)
        try:
            return make_plan(captured, mesh, strategy, cm, memory_budget=budget)  # type: ignore[call-arg]
        except TypeError:  # the planner has no memory budget yet
            return make_plan(captured, mesh, strategy, cm)


def capture_model(model: str, batch_size: int | None, seq_len: int | None) -> Any:
    """Build ``model`` on the meta device and capture it; a spec that cannot work is
    refused before anything runs, and an error raised in the user's own file is one
    paragraph (``cli.common.user_code_error``)."""
    from autopar.capture import capture
    from autopar.cli.common import check_model, user_code_error
    from autopar.models import resolve

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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # torch.export's own dumps: the CLI says why itself
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                return capture(module, args, kwargs)
        finally:
            logging.disable(logging.NOTSET)


def prepare(req: Request) -> tuple[Any, str, MeshSpec, Any]:
    """(cluster, strategy, mesh, cost model): every option checked before the slow capture."""
    from autopar.cli.common import parse_mesh

    cluster = _cluster(req.cluster)
    strategy, mix, pp = parse_strategy(req.strategy, cluster.num_devices)
    if mix is not None and req.mesh:
        raise ValueError(f"give either --mesh {req.mesh} or a fixed mix in --strategy, not both")
    mesh = mix or parse_mesh(req.mesh, cluster.num_devices)
    if pipelined(strategy, pp):
        odd = [n for n in (mix.names if mix is not None else ()) if n not in PIPELINE_AXES]
        if odd or (req.mesh and strategy in ("pp", "3d")):
            raise ValueError(
                f"--strategy {req.strategy!r}: a pipeline plan names its axes pp, dp and tp "
                f"(got {', '.join(odd) or '--mesh ' + str(req.mesh)}); write e.g. "
                "--strategy tp=8,pp=4,dp=2, or --strategy pp to let autopar choose"
            )
        mesh = MeshSpec.of(cluster.num_devices)  # the stages' submeshes come from the search
    return cluster, strategy, mesh, cost_model(cluster, mesh, req.profile)


def pipelined(strategy: str, pp: int) -> bool:
    """Whether a request goes through the 3D (pp x dp x tp) search."""
    return strategy in ("pp", "3d") or pp > 1


def plan_3d(captured: Any, cluster: Any, req: Request) -> Plan:
    """The 3D search (``autopar.pipeline.plan3d``): ``pp`` forces pipeline stages, a
    fixed mix fixes every degree it names, ``3d`` lets pp = 1 win."""
    from autopar.pipeline.plan3d import search, to_plan
    from autopar.solve.planner import PlanInfeasibleError

    strategy, mix, pp = parse_strategy(req.strategy, cluster.num_devices)
    fixed = None
    if mix is not None:  # the degrees multiply to the cluster: all three are fixed
        sizes = dict(mix.axes)
        fixed = {"pp": pp, "dp": sizes.get("dp", 1), "tp": sizes.get("tp", 1)}
    ranked = search(captured, cluster, strategy="pp" if strategy == "pp" else "auto",
                    fixed=fixed, memory_budget=req.memory_budget)  # fmt: skip
    best = ranked.best
    if not best.fits:
        raise PlanInfeasibleError(
            f"no pipeline plan fits in memory: the smallest autopar finds (mesh {best.mesh}, "
            f"{best.microbatches} microbatches, {best.schedule}) needs "
            f"{best.memory_bytes / 2**30:.2f} GiB per device, but the budget is "
            f"{ranked.budget / 2**30:.2f} GiB. Fix: use more devices, a smaller batch or "
            "sequence, or a larger --memory-budget"
        )
    return to_plan(ranked, captured, cluster)


def make(req: Request, captured: Any = None) -> tuple[Plan, Any, Any]:
    """(plan, captured, cost model) for a request."""
    cluster, strategy, mesh, cm = prepare(req)
    captured = (
        captured if captured is not None else capture_model(req.model, req.batch_size, req.seq_len)
    )
    _, _, pp = parse_strategy(req.strategy, cluster.num_devices)
    if pipelined(strategy, pp):
        plan = plan_3d(captured, cluster, req)
    else:
        plan = plan_on(captured, mesh, strategy, cm, req.memory_budget)
    source = {**dataclasses.asdict(req), "cluster": str(cluster), "mesh": mesh.to_json(),
              "batch_size": _batch(captured, req.batch_size), "seq_len": _seq(captured, req.seq_len)}  # fmt: skip
    return dataclasses.replace(plan, source=source), captured, cm


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
    captured = capture_model(spec, batch, seq)
    check_against(plan, captured)
    return captured, cost_model(_cluster(cluster), plan.mesh, profile)


def _input_shape(captured: Any) -> list[int]:
    for n in captured.graph_module.graph.nodes:
        val = n.meta.get("val")
        if n.op == "placeholder" and hasattr(val, "shape") and not val.dtype.is_floating_point:
            return list(val.shape)
    return []


def _batch(captured: Any, given: int | None) -> int | None:
    shape = _input_shape(captured)
    return given or (shape[0] if shape else None)


def _seq(captured: Any, given: int | None) -> int | None:
    shape = _input_shape(captured)
    return given or (shape[1] if len(shape) > 1 else None)


def figures(plan: Plan) -> dict[str, float | None]:
    p = plan.predicted
    step = float(getattr(p, "step_time_s", None) or p.step_s)
    tokens = getattr(p, "tokens_per_s", None)
    b, s = plan.source.get("batch_size"), plan.source.get("seq_len")
    if tokens is None and b and s and step > 0:
        tokens = b * s / step
    return {
        "step_time_s": step,
        "tokens_per_s": tokens,
        "tflops_per_gpu": getattr(p, "tflops_per_gpu", None),
        "mfu": getattr(p, "mfu", None),
        "memory_per_device_bytes": getattr(p, "memory_per_device_bytes", None),
        "memory_budget_bytes": getattr(p, "memory_budget_bytes", None),
        "memory": getattr(p, "memory", None),
    }


def _tp_meshes(cluster: Any) -> list[MeshSpec]:
    if cluster.num_nodes > 1:
        return [MeshSpec.of({"dp": cluster.num_nodes, "tp": cluster.devices_per_node})]
    n = cluster.devices_per_node
    return [MeshSpec.of({"dp": n // t, "tp": t}) for t in (2, 4, 8) if t <= n and n % t == 0]


def baselines(captured: Any, req: Request, plan: Plan) -> dict[str, Any]:
    cluster = _cluster(req.cluster)
    n = cluster.num_devices
    step = figures(plan)["step_time_s"] or 0.0
    budget = figures(plan)["memory_budget_bytes"]
    cands: dict[str, list[tuple[MeshSpec, str]]] = {
        "ddp": [(MeshSpec.of(n), "dp")],
        "fsdp": [(MeshSpec.of(n), "fsdp")],
        "megatron_tp_dp": [(m, "tp") for m in _tp_meshes(cluster)],
    }
    out: dict[str, Any] = {}
    for name, options in cands.items():
        best: dict[str, Any] | None = None
        errors = []
        for mesh, strategy in options:
            try:
                cm = cost_model(cluster, mesh, req.profile)
                # no budget: a baseline that does not fit is still priced, and marked so
                p = plan_on(captured, mesh, strategy, cm, NO_BUDGET)
            except (ValueError, NotImplementedError) as err:
                errors.append(str(err).split(";")[0][:120])
                continue
            p = dataclasses.replace(p, source=plan.source)
            f = figures(p)
            entry: dict[str, Any] = {**f, "mesh": dict(mesh.axes), "strategy": strategy}
            entry["memory_budget_bytes"] = budget
            used = entry.get("memory_per_device_bytes")
            entry["fits"] = (
                None if used is None or budget is None else bool(float(used) <= float(budget))
            )
            if best is None or entry["step_time_s"] < best["step_time_s"]:
                best = entry
        if best is None:
            out[name] = {"error": errors[0] if errors else "no mesh fits this cluster"}
            continue
        best["speedup"] = best["step_time_s"] / step if step > 0 else None
        out[name] = best
    return out

"""The one planning entry: a captured model and a cluster -> the Plan of the whole program.

Contract: ``plan(captured, cluster=None, *, strategy="auto", mesh=None, memory_budget=None,
precision=None, optimizer="adamw", profile=None, microbatch_capture=None) -> Plan`` is what
``autopar.compile``, every CLI command, ``autopar emit`` and the benchmarks call.
- ``cluster``: a ``ClusterSpec``, a string (``"8xH100"``, ``"2x8xH100"``, ``"cpu:2"``) or
  None (this machine, ``cost_models.detect_cluster``).
- ``strategy``/``mesh`` are constraints on one search (``planning.request.constraints``):
  ``"auto"`` with no mesh searches pp x dp x tp (tp inside a node), then stages and
  microbatches, then the schedule (GPipe, 1F1B, interleaved 1F1B), each layer planned by
  the per-node ILP on its stage's submesh with parameter modes under the memory budget
  (``pipeline.plan3d.search``); the best candidate without pipeline stages is re-planned
  node by node on its ``dp x tp`` mesh, one with stages becomes a pipeline plan
  (``planning.pipeline``). Fixed degrees (``"tp=8,pp=4,dp=2"``) and ``"pp"`` constrain the
  same search; a mesh with a ``pp`` axis fixes all three degrees. A preset (``dp``,
  ``tp``, ``fsdp``, ``zero``) or a mesh without ``pp`` is the per-node ILP on that mesh
  (default: one ``dp`` axis over the devices; ``tp`` on one node: one ``tp`` axis, on
  several nodes tensor parallel inside a node and data parallel across).
- ``precision`` None: ``autopar.precision.default_for`` the cluster's devices (bf16-mixed on
  GPUs); prices and memory follow it (``solve.autocast``).
- ``schedule``/``microbatches`` fix the pipeline's schedule and microbatch count.
- ``microbatch_capture(m)`` returns the model captured at microbatch size ``m``, for
  runnable stage graphs (compile and emit pass it); without it the stage graphs are the
  global graph re-batched for pricing (``pipeline.rebatch``).
``Plan.source`` records the request (strategy, mesh, budget, precision); the caller adds
how the model was built.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from autopar.capture import Captured
from autopar.mesh import MeshSpec
from autopar.plan import Plan
from autopar.planning.request import Constraints, constraints, parse_bytes, parse_strategy
from autopar.precision import check, default_for

__all__ = ["Constraints", "constraints", "default_mesh", "parse_bytes", "parse_strategy", "plan"]


def as_cluster(cluster: Any) -> Any:
    from cost_models import ClusterSpec, detect_cluster

    if cluster is None:
        return detect_cluster()
    if isinstance(cluster, str):
        return ClusterSpec.parse(cluster)
    return cluster


def default_mesh(preset: str, cluster: Any) -> MeshSpec:
    n = cluster.num_devices
    if preset == "tp":
        if cluster.num_nodes > 1:
            return MeshSpec((("dp", cluster.num_nodes), ("tp", cluster.devices_per_node)))
        return MeshSpec((("tp", n),))
    return MeshSpec.of(n)


def plan(
    captured: Captured,
    cluster: Any = None,
    *,
    strategy: str = "auto",
    mesh: Mapping[str, int] | MeshSpec | None = None,
    memory_budget: float | None = None,
    precision: str | None = None,
    optimizer: str = "adamw",
    profile: Any = None,
    microbatch_capture: Callable[[int], Captured] | None = None,
    schedule: str | None = None,
    microbatches: int | None = None,
) -> Plan:
    from cost_models import CostModel

    cluster = as_cluster(cluster)
    precision = check(precision or default_for(not cluster.device.is_cpu))
    want = constraints(strategy, mesh, cluster.num_devices)
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    source = {"strategy": strategy, "mesh": None if want.mesh is None else want.mesh.to_json(),
              "memory_budget": memory_budget, "precision": precision}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if not want.search:
            spec = want.mesh or default_mesh(want.preset, cluster)
            result = _flat(captured, spec, want.preset, CostModel(cluster, spec, profile=profile),
                           memory_budget, optimizer, precision)  # fmt: skip
        else:
            result = _searched(captured, cluster, want, memory_budget, optimizer, precision,
                               profile, microbatch_capture, schedule, microbatches)  # fmt: skip
    _warn_unknown(result)
    return dataclasses.replace(result, source={**source, **result.source})


def _flat(captured: Captured, spec: MeshSpec, preset: str, cm: Any, budget: float | None,
          optimizer: str, precision: str) -> Plan:  # fmt: skip
    from autopar.solve.planner import make_plan

    return make_plan(captured, spec, preset, cm, memory_budget=budget, optimizer=optimizer,
                     precision=precision)  # fmt: skip


def _searched(captured: Captured, cluster: Any, want: Constraints, budget: float | None,
              optimizer: str, precision: str, profile: Any,
              microbatch_capture: Callable[[int], Captured] | None,
              schedule: str | None = None, microbatches: int | None = None) -> Plan:  # fmt: skip
    from autopar.pipeline.layers import sub_cluster, submesh
    from autopar.pipeline.partition import NoLayersError
    from autopar.pipeline.plan3d import search
    from autopar.pipeline.rebatch import batch_of, rebatch
    from autopar.planning.pipeline import pipeline_plan
    from autopar.solve.planner import PlanInfeasibleError
    from cost_models import CostModel

    schedules = (schedule,) if schedule else ("1f1b", "gpipe", "interleaved_1f1b")
    try:
        ranked = search(captured, cluster, strategy="pp" if want.pipelined else "auto",
                        fixed=want.degrees, memory_budget=budget, optimizer=optimizer,
                        precision=precision, schedules=schedules,
                        microbatches=microbatches)  # fmt: skip
    except NoLayersError:
        if want.pipelined:
            raise
        return _flat_meshes(captured, cluster, want, budget, optimizer, precision, profile)
    best = ranked.best
    flat_best = next((c for c in ranked.candidates if c.pp == 1 and c.fits), None)
    if not best.fits:
        raise PlanInfeasibleError(
            f"no plan fits in memory: the smallest autopar finds (mesh {best.mesh}, "
            f"{best.microbatches} microbatches, {best.schedule}) needs "
            f"{best.memory_bytes / 2**30:.2f} GiB per device, but the budget is "
            f"{ranked.budget / 2**30:.2f} GiB. Fix: use more devices, a smaller batch or "
            "sequence, or a larger memory budget"
        )
    flat: Plan | None = None
    if flat_best is not None and not want.pipelined:  # the best mesh without stages, node by node
        spec = submesh(flat_best.dp, flat_best.tp)
        cm = CostModel(sub_cluster(cluster, flat_best.dp * flat_best.tp), spec, profile=profile)
        runners = [c.to_json() for c in ranked.candidates[:11] if c is not flat_best]
        try:
            flat = _flat(captured, spec, want.preset, cm, budget, optimizer, precision)
            flat = dataclasses.replace(flat, source={"searched": True, "runners_up": runners})
        except PlanInfeasibleError:
            flat = None
        if best.pp == 1 and flat is not None:
            return flat
    mb = batch_of(captured) // best.microbatches
    captured_mb = microbatch_capture(mb) if microbatch_capture else rebatch(captured, mb)
    piped = pipeline_plan(ranked, captured, captured_mb, cluster, strategy=want.preset,
                          optimizer=optimizer, precision=precision, profile=profile)  # fmt: skip
    # each priced as the program it is: keep the faster
    if flat is not None and flat.predicted.step_time_s <= piped.predicted.step_time_s:
        return flat
    return piped


def _flat_meshes(captured: Captured, cluster: Any, want: Constraints, budget: float | None,
                 optimizer: str, precision: str, profile: Any) -> Plan:  # fmt: skip
    """A model without repeated layers has no stages to cut: the fastest node-by-node plan
    over the ``dp x tp`` meshes (tensor parallel inside a node) that fit."""
    from autopar.pipeline.layers import submesh
    from autopar.solve.planner import PlanInfeasibleError
    from cost_models import CostModel

    n, per_node = cluster.num_devices, cluster.devices_per_node
    fixed = want.degrees or {}
    best: Plan | None = None
    error: PlanInfeasibleError | None = None
    for tp in (t for t in range(1, per_node + 1) if per_node % t == 0 and n % t == 0):
        dp = n // tp
        if any(fixed.get(k, v) != v for k, v in (("pp", 1), ("dp", dp), ("tp", tp))):
            continue
        spec = submesh(dp, tp)
        cm = CostModel(cluster, spec, profile=profile)
        try:
            got = _flat(captured, spec, want.preset, cm, budget, optimizer, precision)
        except PlanInfeasibleError as err:
            error = err
            continue
        if best is None or got.predicted.step_time_s < best.predicted.step_time_s:
            best = got
    if best is None:
        raise error or PlanInfeasibleError(
            f"no dp x tp mesh of {cluster} matches the degrees {fixed}; this model has no "
            "repeated layers, so it cannot be cut into pipeline stages: ask for degrees "
            "whose product is the device count, without pp"
        )
    return dataclasses.replace(best, source={"searched": True})


def _warn_unknown(result: Plan) -> None:
    if result.unknown_ops:
        warnings.warn(
            f"autopar has no sharding rule for {', '.join(result.unknown_ops)}; these ops run "
            "replicated (correct, possibly slower)",
            stacklevel=3,
        )

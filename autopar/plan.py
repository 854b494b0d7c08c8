"""Plan: the solver's decision as a typed value that round-trips through JSON.

Contract: a ``Plan`` holds the mesh, the strategy preset, every node's chosen layouts
(inputs, outputs, gradients, custom kernel), every inserted reshard with the
collectives it issues in forward and backward, and the predicted costs. ``to_json`` /
``Plan.from_json`` round-trip exactly. Plans are untrusted data: ``from_json`` (and
``load``) checks every field (types, finite non-negative costs, known kinds, unique node
names, reshards consistent with their nodes: ``autopar.plan_check.check_fields``) and
raises ``PlanError`` naming the field or node, what it must be and how to get a good
plan; ``plan_check.check_against(plan, captured)`` checks it against a captured graph.
Plans are never pickled. ``summary()`` prints a per-layer table a person can read.
``recompute`` holds the layers whose activations are recomputed in backward, as
(layer path, mode) pairs with mode "selective" or "full" (``RECOMPUTE_MODES``; layers left
out are "none"); the JSON key is optional (missing: no recomputation). A pipeline plan's
stages each carry their own.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopar.mesh import MeshSpec
from autopar.placement import Layout, Shard, layout_from_json, layout_str, layout_to_json

SCHEMA_VERSION = 2
RECOMPUTE_MODES = ("none", "selective", "full")  # activation checkpointing per layer
REMAKE = (
    "re-create the plan with `autopar plan MODEL --json PATH` (or Plan.save) instead of "
    "editing it by hand"
)


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class CollectivePlan:
    kind: str
    axis: str
    nbytes: int
    phase: str  # forward | backward


@dataclass(frozen=True)
class NodePlan:
    name: str
    op: str
    kind: str  # input | param | buffer | op | output
    module: str
    ins: tuple[Layout, ...]
    outs: tuple[Layout, ...]
    grads: tuple[Layout, ...]
    kernel: str | None
    compute_s: float
    collectives: tuple[CollectivePlan, ...] = ()  # issued inside a custom kernel
    # a sharded parameter: its gathered copy is freed after forward and gathered again
    # in backward (FSDP); False keeps it until backward (ZeRO-2)
    reshard_after_forward: bool = False


@dataclass(frozen=True)
class ReshardPlan:
    src: str
    out_index: int
    dst: str
    slot: int
    src_layout: Layout
    dst_layout: Layout
    grad_layout: Layout
    collectives: tuple[CollectivePlan, ...]
    seconds: float


@dataclass(frozen=True)
class Predicted:
    """The cost model's forecast for one training step on each device.

    step_time_s = compute_s + exposed_comm_s + optimizer_s + framework_s, where
    exposed_comm_s is the communication not hidden under compute (parameter collectives
    may overlap; see solve.ilp), optimizer_s the optimizer step over the local shards and
    framework_s the runtime's per-reshard-call overhead (calibrated; 0 without a profile).
    memory is
    the per-device breakdown (params, grads, optimizer_state, master_weights, activations,
    total) and memory_per_device_bytes its total."""

    compute_s: float
    comm_s: float
    step_time_s: float
    solver: str
    solve_status: str
    solve_s: float
    num_variables: int
    exposed_comm_s: float = 0.0
    flops_per_step: float = 0.0  # model FLOPs of one step, all devices together
    tflops_per_gpu: float = 0.0
    mfu: float = 0.0
    tokens_per_step: int = 0
    tokens_per_s: float = 0.0
    memory: dict[str, int] = field(default_factory=dict)
    memory_per_device_bytes: int = 0
    memory_budget_bytes: int = 0
    optimizer: str = "adamw"
    optimizer_s: float = 0.0
    framework_s: float = 0.0

    @property
    def step_s(self) -> float:
        return self.step_time_s


_PREDICTED_FLOATS = (
    "exposed_comm_s", "flops_per_step", "tflops_per_gpu", "mfu", "tokens_per_s", "optimizer_s",
    "framework_s",
)  # fmt: skip
_PREDICTED_INTS = ("tokens_per_step", "memory_per_device_bytes", "memory_budget_bytes")


@dataclass(frozen=True)
class Plan:
    mesh: MeshSpec
    strategy: str
    cluster: str
    nodes: tuple[NodePlan, ...]
    reshards: tuple[ReshardPlan, ...]
    predicted: Predicted
    unknown_ops: tuple[str, ...] = ()
    # free-form, JSON-able facts about where the plan came from (model spec, batch, ...)
    source: dict[str, Any] = field(default_factory=dict, compare=False)
    # pipeline stages and schedule (None: one stage); filled by autopar.pipeline
    pipeline: dict[str, Any] | None = field(default=None, compare=False)
    # the standard baselines priced beside this plan: name -> {"step_time_s": ..., ...}
    baselines: dict[str, Any] = field(default_factory=dict, compare=False)
    precision: str = "fp32"  # autopar.precision: how the program stores and computes
    # a pipeline: one whole Plan per stage, on the stage submesh (this plan's ``mesh``);
    # ``nodes``/``reshards`` above are then their union, for reading and pictures
    stages: tuple[Plan, ...] = field(default=(), compare=False)
    # layers recomputed in backward: (layer path, "selective" | "full"), in layer order
    recompute: tuple[tuple[str, str], ...] = ()
    version: int = SCHEMA_VERSION
    _index: dict[str, NodePlan] = field(default_factory=dict, compare=False, repr=False)

    def node(self, name: str) -> NodePlan:
        if not self._index:
            self._index.update({n.name: n for n in self.nodes})
        return self._index[name]

    @property
    def params(self) -> dict[str, Layout]:
        return {n.module: n.outs[0] for n in self.nodes if n.kind == "param"}

    def programs(self) -> list[tuple[int, Plan]]:
        """(stage index, the plan of that stage's program): one entry, this plan, without
        pipeline stages."""
        return list(enumerate(self.stages)) if self.stages else [(0, self)]

    def param_modes(self) -> dict[str, str]:
        """How each parameter is held, by what the plan does with it: "replicated";
        "sharded" (used where it is stored, e.g. tensor parallel); "zero2" (stored sharded,
        gathered for use once per step, gradients reduce-scattered: ZeRO-2's memory and
        traffic); "fsdp" (as zero2, but the gathered copy is freed after forward and
        gathered again in backward: ZeRO-3 / FSDP)."""
        gathered, regathered = set(), set()
        for r in self.reshards:
            phases = {(c.phase, c.kind) for c in r.collectives}
            if any(ph == "forward" for ph, _ in phases):
                gathered.add(r.src)
                if ("backward", "all_gather") in phases:
                    regathered.add(r.src)
        modes = {}
        for n in self.nodes:
            if n.kind != "param":
                continue
            if all(not isinstance(p, Shard) for p in n.outs[0]):
                modes[n.module] = "replicated"
            elif n.name not in gathered:
                modes[n.module] = "sharded"
            else:
                modes[n.module] = "fsdp" if n.name in regathered else "zero2"
        return modes

    def collectives(self, phase: str | None = None) -> Counter[str]:
        """How many collectives of each kind one training step issues."""
        inside = [c for n in self.nodes for c in n.collectives]
        between = [c for r in self.reshards for c in r.collectives]
        return Counter(c.kind for c in (*between, *inside) if phase in (None, c.phase))

    # ---- JSON ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "mesh": self.mesh.to_json(),
            "strategy": self.strategy,
            "cluster": self.cluster,
            "predicted": self.predicted.__dict__,
            "unknown_ops": list(self.unknown_ops),
            "source": self.source,
            "pipeline": self.pipeline,
            "baselines": self.baselines,
            "precision": self.precision,
            "stages": [st.to_json() for st in self.stages],
            "recompute": [[path, mode] for path, mode in self.recompute],
            "nodes": [
                {
                    "name": n.name, "op": n.op, "kind": n.kind, "module": n.module,
                    "ins": [layout_to_json(x) for x in n.ins],
                    "outs": [layout_to_json(x) for x in n.outs],
                    "grads": [layout_to_json(x) for x in n.grads],
                    "kernel": n.kernel, "compute_s": n.compute_s,
                    "collectives": [c.__dict__ for c in n.collectives],
                    "reshard_after_forward": n.reshard_after_forward,
                }
                for n in self.nodes
            ],
            "reshards": [
                {
                    "src": r.src, "out_index": r.out_index, "dst": r.dst, "slot": r.slot,
                    "src_layout": layout_to_json(r.src_layout),
                    "dst_layout": layout_to_json(r.dst_layout),
                    "grad_layout": layout_to_json(r.grad_layout),
                    "collectives": [c.__dict__ for c in r.collectives],
                    "seconds": r.seconds,
                }
                for r in self.reshards
            ],
        }  # fmt: skip

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps())

    @staticmethod
    def load(path: str | Path) -> Plan:
        try:
            obj = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise PlanError(
                f"cannot read plan {path}: {err}. Pass a JSON file written by "
                "`autopar plan --json` or Plan.save"
            ) from err
        try:
            return Plan.from_json(obj)
        except PlanError as err:
            raise PlanError(f"plan {path}: {err}") from None

    @staticmethod
    def from_json(obj: Any) -> Plan:
        """Parse and validate (``plan_check.check_fields``): a bad field raises
        ``PlanError`` naming it, what it must be, and how to get a good plan."""
        try:
            return _from_json(obj)
        except PlanError as err:
            raise PlanError(f"{err}; {REMAKE}") from None
        except KeyError as err:
            raise PlanError(f"invalid plan JSON: the field {err} is missing; {REMAKE}") from None
        except (TypeError, ValueError) as err:
            raise PlanError(f"invalid plan JSON ({err}); {REMAKE}") from None

    # ---- people ----------------------------------------------------------------------
    def summary(self) -> str:
        names = self.mesh.names
        pr = self.predicted
        gib = 2**30
        mem = ", ".join(f"{k} {v / gib:.2f}" for k, v in pr.memory.items() if k != "total")
        modes = Counter(self.param_modes().values())
        lines = [
            f"autopar plan  strategy={self.strategy}  mesh={self.mesh}  cluster={self.cluster}",
            f"predicted step {pr.step_time_s * 1e3:.3f} ms (compute {pr.compute_s * 1e3:.3f} ms, "
            f"comm {pr.comm_s * 1e3:.3f} ms of which exposed {pr.exposed_comm_s * 1e3:.3f} ms); "
            f"{pr.tflops_per_gpu:.1f} TFLOP/s per device, MFU {pr.mfu:.1%}, "
            f"{pr.tokens_per_s:,.0f} tokens/s",
            f"memory per device {pr.memory_per_device_bytes / gib:.2f} GiB of "
            f"{pr.memory_budget_bytes / gib:.2f} GiB budget ({mem}); "
            f"parameters: {', '.join(f'{v} {k}' for k, v in sorted(modes.items()))}",
            f"solver {pr.solver} {pr.solve_status} in {pr.solve_s:.2f} s, "
            f"{pr.num_variables} variables",
        ]
        if self.recompute:
            lines.append(f"recompute: {recompute_summary(self.recompute)}")
        by_layer: dict[str, list[NodePlan]] = defaultdict(list)
        for n in self.nodes:
            if n.kind == "param":
                by_layer[_layer_key(n.module)].append(n)
        coll_by_layer: dict[str, Counter[str]] = defaultdict(Counter)
        node_module = {n.name: n.module for n in self.nodes}
        for r in self.reshards:
            for c in r.collectives:
                coll_by_layer[_layer_key(node_module.get(r.dst, "") or node_module.get(r.src, ""))][
                    f"{c.kind}@{c.axis}"
                ] += 1
        lines.append(f"{'layer':<28} {'parameters (' + ','.join(names) + ')':<58} collectives/step")
        for layer in sorted(set(by_layer) | set(coll_by_layer), key=_natural):
            params = ", ".join(
                f"{p.module.rsplit('.', 2)[-2] if '.' in p.module else p.module}"
                f".{p.module.rsplit('.', 1)[-1]}={layout_str(p.outs[0])}"
                for p in by_layer.get(layer, [])
            )
            colls = ", ".join(f"{k}x{v}" for k, v in sorted(coll_by_layer.get(layer, {}).items()))
            lines.append(f"{layer or '<top>':<28} {params[:58]:<58} {colls}")
        if self.unknown_ops:
            lines.append(f"replicated (no sharding rule): {', '.join(self.unknown_ops)}")
        return "\n".join(lines)


def recompute_summary(recompute: tuple[tuple[str, str], ...]) -> str:
    """``full x 4 layers (h.0-h.3)``, one part per mode."""
    parts = []
    for mode in RECOMPUTE_MODES[1:]:
        paths = [p for p, m in recompute if m == mode]
        if not paths:
            continue
        short = [".".join(p.split(".")[-2:]) for p in paths]
        span = short[0] if len(short) == 1 else f"{short[0]}-{short[-1]}"
        parts.append(f"{mode} x {len(paths)} layer{'s' if len(paths) > 1 else ''} ({span})")
    return "; ".join(parts)


def _layer_key(module: str) -> str:
    parts = module.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) if len(parts) > 1 else module


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in key.replace(".", " . ").split()]


def _precision(value: Any) -> str:
    from autopar.precision import PRECISIONS

    if value not in PRECISIONS:
        raise PlanError(f"plan precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return str(value)


def _from_json(obj: Any) -> Plan:
    from autopar.plan_check import (
        _float,
        _int,
        _list,
        _node,
        _recompute,
        _reshard,
        _str,
        check_fields,
    )  # fmt: skip

    if not isinstance(obj, dict):
        raise PlanError(f"a plan must be a JSON object, got {type(obj).__name__}")
    if obj.get("version") != SCHEMA_VERSION:
        raise PlanError(
            f"plan schema version {obj.get('version')!r} is not supported (need {SCHEMA_VERSION}); "
            "re-run `autopar plan` with this version of autopar"
        )
    for key in ("mesh", "strategy", "cluster", "nodes", "reshards", "predicted"):
        if key not in obj:
            raise PlanError(f"plan JSON is missing the key {key!r}")
    mesh = MeshSpec.from_json(obj["mesh"])
    k = mesh.ndim

    def lay(x: Any, where: str) -> Layout:
        try:
            return layout_from_json(x, k)
        except ValueError as err:
            raise PlanError(f"{where}: {err}") from None

    nodes = tuple(_node(n, lay) for n in _list(obj["nodes"], "nodes"))
    reshards = tuple(_reshard(r, lay) for r in _list(obj["reshards"], "reshards"))
    p = obj["predicted"]
    if not isinstance(p, dict):
        raise PlanError(f"predicted must be an object, got {p!r}")
    step = p["step_time_s"] if "step_time_s" in p else p["step_s"]
    memory = p.get("memory") or {}
    if not isinstance(memory, dict):
        raise PlanError(f"predicted memory must be an object, got {memory!r}")
    predicted = Predicted(
        _float(p["compute_s"], "predicted compute_s"), _float(p["comm_s"], "predicted comm_s"),
        _float(step, "predicted step_time_s"), _str(p["solver"], "predicted solver"),
        _str(p["solve_status"], "predicted solve_status"), _float(p["solve_s"], "predicted solve_s"),
        _int(p["num_variables"], "predicted num_variables"),
        **{k: _float(p[k], f"predicted {k}") for k in _PREDICTED_FLOATS if k in p},  # type: ignore[arg-type]
        **{k: _int(p[k], f"predicted {k}") for k in _PREDICTED_INTS if k in p},
        memory={str(k): _int(v, f"predicted memory {k}") for k, v in memory.items()},
        optimizer=_str(p.get("optimizer", "adamw"), "predicted optimizer"),
    )  # fmt: skip
    unknown = tuple(
        _str(u, "unknown_ops entry") for u in _list(obj.get("unknown_ops", []), "unknown_ops")
    )
    for key in ("source", "baselines"):
        if not isinstance(obj.get(key) or {}, dict):
            raise PlanError(f"plan {key} must be an object, got {obj.get(key)!r}")
    if obj.get("pipeline") is not None and not isinstance(obj["pipeline"], dict):
        raise PlanError(f"plan pipeline must be an object or null, got {obj['pipeline']!r}")
    plan = Plan(
        mesh, _str(obj["strategy"], "strategy"), _str(obj["cluster"], "cluster"), nodes, reshards,
        predicted, unknown, dict(obj.get("source") or {}), obj.get("pipeline"),
        dict(obj.get("baselines") or {}),
        _precision(obj.get("precision", "fp32")),
        tuple(_from_json(st) for st in _list(obj.get("stages") or [], "stages")),
        _recompute(obj.get("recompute") or []),
    )  # fmt: skip
    check_fields(plan)
    return plan

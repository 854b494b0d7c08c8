"""Lowering: a captured graph + its Plan -> the per-rank program, statement by statement.

Contract: ``lower(captured, plan) -> ProgramIR`` decides everything the generated source
says, and nothing is decided later:
- every op runs on LOCAL tensors; before an op input whose planned layout differs from
  its producer's (or whose gradient must come back in another layout) a
  ``rt.reshard(x, axes, fwd, bwd)`` statement issues exactly the plan's collectives
  (``runtime.collectives.plan_steps``; layouts it cannot express go through
  ``rt.general_reshard``); graph inputs arrive whole on every rank and are sliced locally,
  except in a pipeline stage that receives them: there they arrive in the stage boundary
  layout (``solve.graph.arrival_layout``; ``ProgramIR.input_layouts``);
- shape arguments of view/reshape/expand become local shapes; ops whose strategy names a
  kernel call it (``rt.vocab_embedding``, ``rt.sharded_cross_entropy``);
- each parameter gets a mode (``ParamIR``): "replicated" or "sharded" (used where it is
  stored; a partial gradient is reduced by the bucketed ``GradReducer`` over
  ``reduce_axes``), "fsdp" / "zero2" (stored sharded on one data axis, gathered per layer
  by FSDP2, the gathered copy freed after forward for "fsdp"), or "explicit" (any other
  use: reshard statements at each use carry its gathers and gradient reductions);
- repeated layers (``pipeline.partition.find_units``) become one submodule each, and
  layers whose code is identical up to names share one class; a layer the plan recomputes
  is called through ``rt.recompute`` (``codegen.recompute``), and the forward collectives
  it issues again in backward are ``ProgramIR.recomputed``;
- outputs are returned local with their layouts (``ProgramIR.output_layouts``); only the
  loss is planned replicated (a pipeline stage's outputs: the boundary layout), other
  outputs are made whole by the caller on demand.
"""

from __future__ import annotations

import keyword
import math
import operator
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from autopar.capture import Captured
from autopar.codegen.recompute import Recomputed, layer_call
from autopar.codegen.units import Item, assign, canonical, module_type, node_index, order
from autopar.placement import Layout, Partial, R, Replicate, Shard, layout_str, local_shape
from autopar.plan import NodePlan, Plan, PlanError
from autopar.runtime.collectives import grad_layout as grad_of_layout
from autopar.runtime.collectives import plan_steps
from autopar.solve.graph import arrival_layout, input_slots, tensor_meta

SIZE_ARG_OPS = {"view", "_unsafe_view", "reshape", "expand"}
_SHORT = {"all_reduce": "ar", "all_gather": "ag", "reduce_scatter": "rs", "chunk": "sl",
          "keep": "kp", "all_to_all": "a2a", "all_reduce_avg": "ar", "scale": "sc"}  # fmt: skip


@dataclass
class ParamIR:
    fqn: str
    shape: tuple[int, ...]  # global
    dtype: torch.dtype
    layout: Layout  # stored
    mode: str  # replicated | sharded | fsdp | zero2 | explicit
    reduce_axes: tuple[str, ...] = ()  # partial-gradient axes the reducer all-reduces
    fsdp_axis: str | None = None
    fsdp_axis_index: int = -1
    fsdp_dim: int = 0
    unit: str = ""  # the module path of the submodule that owns it ("" = the root)

    @property
    def held_layout(self) -> Layout:
        """The layout of the local tensor the program holds before FSDP shards it."""
        if self.fsdp_axis is None:
            return self.layout
        return tuple(R if a == self.fsdp_axis_index else p for a, p in enumerate(self.layout))


@dataclass
class UnitIR:
    path: str  # "transformer.h.0"
    cls: str  # class name (shared by identical layers)
    inputs: list[str]
    outputs: list[str]
    lines: list[str]
    canon: str = ""


@dataclass
class ProgramIR:
    names: tuple[str, ...]  # mesh axis names
    sizes: tuple[int, ...]
    inputs: list[str]
    outputs: list[str]
    output_layouts: list[str]
    params: list[ParamIR]
    buffers: list[tuple[str, tuple[int, ...], torch.dtype]]
    root_lines: list[str]
    units: list[UnitIR]
    unit_prefix: str = ""
    classes: dict[str, str] = field(default_factory=dict)  # class -> module type name
    notes: list[str] = field(default_factory=list)
    collectives: dict[str, dict[str, int]] = field(default_factory=dict)  # explicit, per step
    input_meta: list[tuple[tuple[int, ...], str]] = field(default_factory=list)  # global
    output_meta: list[tuple[tuple[int, ...], str]] = field(default_factory=list)  # global
    recomputed: dict[str, int] = field(default_factory=dict)  # issued again in backward
    recompute: dict[str, str] = field(default_factory=dict)  # layer path -> mode
    input_layouts: list[str] = field(default_factory=list)  # as each input arrives


def _target_text(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        name = target._schema.name.split("::")[-1]
        head = "aten" if ns == "aten" else f"torch.ops.{ns}"
        return f"{head}.{name}.{target._overloadname}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return f"torch.ops.{target._qualified_op_name.replace('::', '.')}"
    mod = getattr(target, "__module__", "") or ""
    name = getattr(target, "__qualname__", getattr(target, "__name__", ""))
    if mod in ("torch", "torch.functional") or mod.startswith("torch."):
        return f"{mod}.{name}" if mod != "torch._C._nn" else f"torch._C._nn.{name}"
    raise PlanError(f"cannot generate code for call target {target!r} ({mod}.{name})")


def fmt(value: Any, names: dict[str, str]) -> str:
    """Python source for one argument (fx nodes by their variable names)."""
    if isinstance(value, fx.Node):
        return names[value.name]
    if isinstance(value, (list, tuple)):
        inner = ", ".join(fmt(v, names) for v in value)
        if isinstance(value, tuple):
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        return f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {fmt(v, names)}" for k, v in value.items()) + "}"
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, torch.device):
        return "ctx.device"
    if isinstance(value, torch.memory_format):
        return f"torch.{str(value).split('.')[-1]}"
    if isinstance(value, torch.layout):
        return str(value)
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return f"float({str(value)!r})"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise PlanError(f"cannot write argument {value!r} ({type(value).__name__}) as source")


_LOCAL = ("chunk", "keep", "scale")
_KIND = {"all_reduce": "all_reduce", "all_reduce_avg": "all_reduce", "all_gather": "all_gather",
         "reduce_scatter": "reduce_scatter", "all_to_all": "all_to_all"}  # fmt: skip


def _needs_grad(gm: fx.GraphModule, captured: Captured) -> dict[str, bool]:
    """Which values carry a gradient: trainable parameters and float ops reading one."""
    params = set(captured.param_names)
    out: dict[str, bool] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            out[n.name] = str(n.target) in params
        elif n.op == "call_function":
            out[n.name] = _is_float(n) and any(out.get(a.name, False) for a in n.all_input_nodes)
            if n.target is operator.getitem:
                out[n.name] = _is_float(n) and out.get(n.args[0].name, False)  # type: ignore[union-attr]
        elif n.op == "placeholder":
            out[n.name] = captured.input_grads and _is_float(n)
        else:
            out[n.name] = False
    return out


def _is_float(n: fx.Node) -> bool:
    val = n.meta.get("val")
    vals = val if isinstance(val, (list, tuple)) else (val,)
    return any(isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())
               for v in vals)  # fmt: skip


def _op_short(target: Any) -> str:
    return getattr(getattr(target, "overloadpacket", None), "__name__", "")


def _is_replicated(layout: Layout) -> bool:
    return all(isinstance(p, Replicate) for p in layout)


class _Lowering:
    def __init__(self, captured: Captured, plan: Plan) -> None:
        self.captured = captured
        self.plan = plan
        self.gm = captured.graph_module
        self.names = plan.mesh.names
        self.sizes = plan.mesh.sizes
        self.by_name: dict[str, NodePlan] = {n.name: n for n in plan.nodes}
        self.alias: dict[str, tuple[str, int]] = {}
        self.taken = {n.name for n in self.gm.graph.nodes}
        self.params = set(captured.param_names)
        self.counter = 0
        self._uses: dict[str, list[tuple[fx.Node, int]]] = {}
        self.collectives: dict[str, Counter[str]] = {"forward": Counter(), "backward": Counter()}
        self.needs_grad = _needs_grad(self.gm, captured)

    # ---- layouts ------------------------------------------------------------------
    def source(self, n: fx.Node) -> tuple[str, int]:
        return self.alias.get(n.name, (n.name, 0))

    def node_plan(self, name: str) -> NodePlan:
        if name not in self.by_name:
            raise PlanError(f"plan has no node {name!r}; it was made for another model")
        return self.by_name[name]

    def layout_of(self, n: fx.Node) -> Layout:
        src, idx = self.source(n)
        np_ = self.node_plan(src)
        if np_.kind == "input":
            return self.arrival(n)
        return np_.outs[idx]

    def arrival(self, n: fx.Node) -> Layout:
        """The layout graph input ``n`` reaches the program in (``solve.graph``)."""
        meta = tensor_meta(n.meta.get("val"))
        if meta is None:
            return tuple(R for _ in self.sizes)
        return arrival_layout(self.captured, meta, self.names, self.sizes)

    def fresh(self, base: str) -> str:
        name = base
        while name in self.taken:
            self.counter += 1
            name = f"{base}_{self.counter}"
        self.taken.add(name)
        return name

    # ---- parameters ----------------------------------------------------------------
    def uses(self) -> dict[str, list[tuple[fx.Node, int]]]:
        found: dict[str, list[tuple[fx.Node, int]]] = defaultdict(list)
        for node in self.gm.graph.nodes:
            if node.op != "call_function" or node.target is operator.getitem:
                continue
            for k, a in enumerate(input_slots(node)):
                if a.op == "get_attr" and str(a.target) in self.params:
                    found[str(a.target)].append((node, k))
        return found

    def param_modes(self, unit_of_param: dict[str, str]) -> dict[str, ParamIR]:
        out: dict[str, ParamIR] = {}
        for pnode in (n for n in self.plan.nodes if n.kind == "param"):
            fqn = pnode.module
            if fqn not in self.params:
                continue
            val = _get(self.gm, fqn)
            stored = pnode.outs[0]
            ir = ParamIR(fqn, tuple(val.shape), val.dtype, stored, "explicit",
                         unit=unit_of_param.get(fqn, ""))  # fmt: skip
            out[fqn] = ir
            uses = [(self.node_plan(u.name).ins[k], self.node_plan(u.name).grads[k])
                    for u, k in self._uses.get(fqn, [])]  # fmt: skip
            if not uses:
                ir.mode = "replicated" if _is_replicated(stored) else "sharded"
                continue
            if all(dst == stored for dst, _ in uses):
                partial = [self.names[a] for a in range(len(stored))
                           if any(isinstance(g[a], Partial) for _, g in uses)]  # fmt: skip
                mixed = any(
                    not isinstance(g[self.names.index(a)], Partial)
                    for _, g in uses
                    for a in partial
                )
                if not mixed:
                    ir.mode = "replicated" if _is_replicated(stored) else "sharded"
                    ir.reduce_axes = tuple(partial)
                continue
            self._fsdp(ir, pnode, uses)
        return out

    def _fsdp(self, ir: ParamIR, pnode: NodePlan, uses: list[tuple[Layout, Layout]]) -> None:
        """Stored sharded on exactly one axis, used gathered there and in place elsewhere,
        every gradient partial on that axis: FSDP2's case."""
        stored = ir.layout
        moved = {a for dst, _ in uses for a in range(len(stored)) if dst[a] != stored[a]}
        if len(moved) != 1:
            return
        (a,) = moved
        p = stored[a]
        if not isinstance(p, Shard) or any(dst[a] != R for dst, _ in uses):
            return
        if any(not isinstance(g[a], Partial) for _, g in uses):
            return
        for dst, g in uses:  # other axes: used where stored, no partial gradient
            for b in range(len(stored)):
                if b != a and (isinstance(g[b], Partial) or dst[b] != stored[b]):
                    return
        ir.mode = "fsdp" if pnode.reshard_after_forward else "zero2"
        ir.fsdp_axis, ir.fsdp_dim, ir.fsdp_axis_index = self.names[a], p.dim, a

    # ---- statements ------------------------------------------------------------------
    def reshard_line(self, var: str, base: str, src: Layout, dst: Layout, grad: Layout,
                     out: list[str]) -> str:  # fmt: skip
        steps = plan_steps(src, dst, grad, self.names)
        if steps is not None:
            fwd, bwd = steps
            if not fwd and not bwd:
                return var
            for phase, group in (("forward", fwd), ("backward", bwd)):
                for step in group:
                    if step[0] not in _LOCAL:
                        self.collectives[phase][_KIND[step[0]]] += 1
            tag = _SHORT[fwd[-1][0]] if fwd else "g"
            name = self.fresh(f"{base}_{tag}")
            out.append(f"{name} = rt.reshard({var}, ctx.axes, {fwd!r}, {bwd!r})")
            return name
        from autopar.cost import transition
        from autopar.strategies.types import TensorMeta

        unit = TensorMeta(tuple(1 for _ in range(8)), torch.float32)
        for phase, (a, b) in (("forward", (src, dst)), ("backward", (grad, grad_of_layout(src)))):
            for c in transition(a, b, unit, self.sizes):
                self.collectives[phase][c.kind] += 1
        name = self.fresh(f"{base}_re")
        out.append(f"{name} = rt.general_reshard({var}, ctx.axes, {_lay(src)!r}, "
                   f"{_lay(dst)!r}, {_lay(grad)!r})")  # fmt: skip
        return name

    def op_lines(self, node: fx.Node, names: dict[str, str], modes: dict[str, ParamIR],
                 out: list[str]) -> None:  # fmt: skip
        if node.target is operator.getitem:
            src = node.args[0]
            assert isinstance(src, fx.Node)
            self.alias[node.name] = (self.source(src)[0], int(node.args[1]))  # type: ignore[arg-type]
            out.append(f"{node.name} = {names.get(src.name, src.name)}[{node.args[1]}]")
            names[node.name] = node.name
            return
        np_ = self.node_plan(node.name)
        slots = input_slots(node)
        if len(slots) != len(np_.ins):
            raise PlanError(
                f"plan node {node.name!r} has {len(np_.ins)} inputs, the graph has {len(slots)}"
            )
        local: dict[str, str] = {}
        moved: list[str] = []
        for k, a in enumerate(slots):
            var = names.get(a.name, a.name)
            is_param = a.op == "get_attr" and str(a.target) in self.params
            lay = self.layout_of(a) if a.op != "get_attr" else self._attr_layout(a)
            if is_param and modes[str(a.target)].mode != "explicit":
                mode = modes[str(a.target)]
                held = mode.held_layout
                if np_.ins[k] != held and mode.mode not in ("fsdp", "zero2"):
                    raise PlanError(f"parameter {a.target} used as {_lay(np_.ins[k])}")
                local[f"{k}"] = var
                continue
            grad = np_.grads[k] if self.needs_grad.get(a.name, False) else grad_of_layout(lay)
            local[f"{k}"] = self.reshard_line(var, var, lay, np_.ins[k], grad, moved)
        out.extend(moved)
        counter = iter(range(len(slots)))

        def arg(_: fx.Node) -> Any:
            return _Raw(local[f"{next(counter)}"])

        args = fx.node.map_arg(node.args, arg)
        kwargs = fx.node.map_arg(node.kwargs, arg)
        name = _op_short(node.target)
        if name in SIZE_ARG_OPS and not _is_replicated(np_.outs[0]):
            shape = tuple(int(s) for s in node.meta["val"].shape)
            args = (args[0], list(local_shape(shape, np_.outs[0], self.sizes)))
        call = self._call(node, np_, args, kwargs)
        out.append(f"{node.name} = {call}")
        names[node.name] = node.name

    def outputs(self, leaves: list[fx.Node], lines: list[str]) -> tuple[list[str], list[str]]:
        """Return statements for the outputs: those the plan's sink needs (the loss; every
        output of a pipeline stage) are moved to the sink's layout here; the others are
        returned where they are, with their layouts."""
        sink = self.by_name.get("output")
        wanted = [a for a in leaves if isinstance(a.meta.get("val"), torch.Tensor)
                  and (self.captured.whole_outputs or a.meta["val"].dim() == 0)]  # fmt: skip
        slot = {a.name: k for k, a in enumerate(wanted)}
        names, layouts = [], []
        for a in leaves:
            src = self.layout_of(a) if a.op != "get_attr" else self._attr_layout(a)
            if sink is not None and a.name in slot and slot[a.name] < len(sink.ins):
                k = slot[a.name]
                grad = sink.grads[k] if self.needs_grad.get(a.name, False) else grad_of_layout(src)
                names.append(self.reshard_line(a.name, a.name, src, sink.ins[k], grad, lines))
                layouts.append(_lay(sink.ins[k]))
            else:
                names.append(a.name)
                layouts.append(_lay(src))
        return names, layouts

    def _attr_layout(self, a: fx.Node) -> Layout:
        if str(a.target) in self.params:
            return self.node_plan(a.name).outs[0]
        return tuple(R for _ in self.sizes)  # buffers and constants are replicated

    def _call(self, node: fx.Node, np_: NodePlan, args: Any, kwargs: Any) -> str:
        parts = [_src(a) for a in args] + [f"{k}={_src(v)}" for k, v in kwargs.items()]
        if np_.kernel == "vocab_embedding":
            axis = next(self.names[a] for a, p in enumerate(np_.ins[0]) if p == Shard(0))
            return f"rt.vocab_embedding({parts[0]}, {parts[1]}, ctx.axes, {axis!r})"
        if np_.kernel == "sharded_cross_entropy":
            axes = tuple(self.names[a] for a, p in enumerate(np_.ins[0]) if isinstance(p, Shard))
            self.collectives["forward"]["all_reduce"] += len(axes)
            rest = ", ".join(parts[2:])
            return (f"rt.sharded_cross_entropy({parts[0]}, {parts[1]}, ctx.axes, {axes!r}"
                    + (f", {rest})" if rest else ")"))  # fmt: skip
        if np_.kernel:
            raise PlanError(f"unknown kernel {np_.kernel!r} in plan node {node.name!r}")
        return f"{_target_text(node.target)}({', '.join(parts)})"


def attr_expr(path: str) -> str:
    """Python source reading the attribute at ``path`` below ``self``."""
    expr = "self"
    for seg in path.split("."):
        if seg.isidentifier() and not keyword.iskeyword(seg):
            expr += f".{seg}"
        else:
            expr = f"getattr({expr}, {seg!r})"
    return expr


def _local_name(rel: str) -> str:
    return re.sub(r"\W", "_", rel)


class _Cycle(Exception):
    pass


def lower(captured: Captured, plan: Plan) -> ProgramIR:
    try:
        return _lower(captured, plan, layers=True)
    except _Cycle:
        return _lower(captured, plan, layers=False)


def _unify_fsdp(modes: dict[str, ParamIR]) -> list[str]:
    """One FSDP2 call per submodule: one axis and one reshard choice per unit."""
    notes = []
    by_unit: dict[str, list[ParamIR]] = defaultdict(list)
    for ir in modes.values():
        if ir.mode in ("fsdp", "zero2"):
            by_unit[ir.unit].append(ir)
    for group in by_unit.values():
        weight: dict[str, int] = defaultdict(int)
        for ir in group:
            weight[str(ir.fsdp_axis)] += math.prod(ir.shape)
        axis = max(weight, key=lambda a: weight[a])
        regather = any(ir.mode == "fsdp" for ir in group)
        for ir in group:
            if ir.fsdp_axis != axis:
                ir.mode, ir.fsdp_axis, ir.fsdp_axis_index = "explicit", None, -1
                notes.append(f"{ir.fqn}: gathered at each use (its layer shards on {axis})")
            elif (ir.mode == "fsdp") != regather:
                notes.append(f"{ir.fqn}: {'fsdp' if regather else 'zero2'} like its layer")
                ir.mode = "fsdp" if regather else "zero2"
    return notes


def _lower(captured: Captured, plan: Plan, layers: bool) -> ProgramIR:
    lw = _Lowering(captured, plan)
    rec = Recomputed(plan)
    gm = lw.gm
    nodes = list(gm.graph.nodes)
    where, prefix = assign(captured) if layers else ({}, "")
    index = node_index(gm.graph)
    paths = sorted({p for p in where.values() if p}, key=lambda p: (len(p.split(".")), p))
    paths.sort(key=lambda p: min(index[n] for n, q in where.items() if q == p))

    def owner(fqn: str) -> str:
        return next((p for p in paths if fqn.startswith(p + ".")), "")

    lw._uses = lw.uses()
    modes = lw.param_modes({fqn: owner(fqn) for fqn in captured.param_names})
    notes = _unify_fsdp(modes)
    attrs = {n.name: str(n.target) for n in nodes if n.op == "get_attr"}
    # ---- statements per scope --------------------------------------------------------
    root_items: list[Item] = []
    layer_lines: dict[str, list[str]] = {p: [] for p in paths}
    layer_defs: dict[str, set[str]] = {p: set() for p in paths}
    layer_reads: dict[str, set[str]] = {p: set() for p in paths}
    layer_names: dict[str, dict[str, str]] = {p: {} for p in paths}
    root_names: dict[str, str] = {n.name: n.name for n in nodes if n.op == "placeholder"}
    for n in nodes:
        if n.op == "get_attr" and owner(str(n.target)) == "":
            root_names[n.name] = n.name
            root_items.append(Item(n.name, index[n.name], "", {n.name}, set(),
                                   [f"{n.name} = {attr_expr(str(n.target))}"]))  # fmt: skip
    for n in nodes:
        if n.op != "call_function":
            continue
        path = where.get(n.name, "")
        if not path:
            lines: list[str] = []
            before = set(lw.taken)
            lw.op_lines(n, root_names, modes, lines)
            made = (lw.taken - before) | {n.name}
            reads = {a.name for a in n.all_input_nodes}
            root_items.append(Item(n.name, index[n.name], "", made, reads, lines))
            continue
        names = layer_names[path]
        for a in n.all_input_nodes:
            if a.name in names:
                continue
            if a.op == "get_attr" and owner(attrs[a.name]) == path:
                rel = attrs[a.name][len(path) + 1 :]
                names[a.name] = _local_name(rel)
                layer_lines[path].append(f"{names[a.name]} = {attr_expr(rel)}")
            else:
                names[a.name] = a.name
                layer_reads[path].add(a.name)
        before, sent = set(lw.taken), Counter(lw.collectives["forward"])
        lw.op_lines(n, names, modes, layer_lines[path])
        rec.add(path, sent, lw.collectives["forward"])
        layer_defs[path] |= (lw.taken - before) | {n.name}
    # ---- layer interfaces --------------------------------------------------------------
    out_node = next(n for n in nodes if n.op == "output")
    leaves = [a for a in _flat(out_node.args)]
    read_outside: set[str] = {a.name for a in leaves}
    for n in nodes:
        if n.op == "call_function":
            p = where.get(n.name, "")
            read_outside |= {a.name for a in n.all_input_nodes if where.get(a.name, "") != p}
    units: list[UnitIR] = []
    for p in paths:
        ins = sorted(layer_reads[p], key=lambda v: index.get(v, -1))
        outs = sorted((v for v in layer_defs[p] if v in read_outside), key=lambda v: index[v])
        units.append(UnitIR(p, "", ins, outs, layer_lines[p]))
        first = min(index[n] for n, q in where.items() if q == p)
        call = _layer_call(p, prefix, ins, outs, rec.mode(p))
        root_items.append(Item(p, first, p, set(outs), set(ins), [call]))
    available = [n.name for n in nodes if n.op == "placeholder"]
    ordered = order(root_items, available)
    if ordered is None:
        raise _Cycle
    root_lines = [line for it in ordered for line in it.lines]
    out_names, out_layouts = lw.outputs(leaves, root_lines)
    if captured.whole_outputs:
        out_names = _stage_boundary(leaves, out_names)
    classes = _classes(captured, units, modes)
    buffers = [(b, tuple(_get(gm, b).shape), _get(gm, b).dtype) for b in captured.buffer_names
               if b in attrs.values()]  # fmt: skip
    return ProgramIR(lw.names, lw.sizes, [n.name for n in nodes if n.op == "placeholder"],
                     out_names, out_layouts, list(modes.values()), buffers, root_lines, units,
                     prefix, classes, notes,
                     {ph: dict(c) for ph, c in lw.collectives.items()},
                     [_meta(n) for n in nodes if n.op == "placeholder"],
                     [_meta(a) for a in leaves], rec.counts(),
                     {p: rec.mode(p) for p in paths if rec.mode(p) != "none"},
                     [_lay(lw.arrival(n)) for n in nodes if n.op == "placeholder"])  # fmt: skip


def _stage_boundary(leaves: list[fx.Node], outs: list[str]) -> list[str]:
    """A pipeline stage sends its outputs to the next stage, and a send needs a contiguous
    tensor (a stage may end in a transpose or an expand). The gradients sent back are the
    inputs' ``.grad``, which autograd already lays out like the (contiguous) inputs."""
    return [f"{o}.contiguous()" if isinstance(a.meta.get("val"), torch.Tensor) else o
            for o, a in zip(outs, leaves)]  # fmt: skip


def _meta(n: fx.Node) -> tuple[tuple[int, ...], str]:
    val = n.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return ((), "float32")
    return tuple(int(d) for d in val.shape), str(val.dtype).removeprefix("torch.")


def _flat(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, lambda a: found.append(a) or a)  # type: ignore[func-returns-value]
    return found


def _layer_call(path: str, prefix: str, ins: list[str], outs: list[str], mode: str) -> str:
    rest = path[len(prefix) + 1 :] if prefix and path.startswith(prefix + ".") else ""
    if rest.isdigit():
        module = f"{attr_expr(prefix)}[{rest!r}]"
    else:
        module = attr_expr(path)
    target = ", ".join(outs)
    return f"{target} = {layer_call(module, ins, mode)}"


def _classes(captured: Captured, units: list[UnitIR], modes: dict[str, ParamIR]) -> dict[str, str]:
    """Name each layer's class; identical layers share one."""
    seen: dict[str, str] = {}
    types: dict[str, str] = {}
    for u in units:
        local = {v for v in u.outputs} | {line.split(" = ", 1)[0].strip() for line in u.lines}
        decl = [f"{ir.fqn[len(u.path) + 1:]}:{ir.shape}:{ir.dtype}:{ir.layout}:{ir.mode}:"
                f"{ir.fsdp_axis}:{ir.fsdp_dim}:{ir.reduce_axes}"
                for ir in modes.values() if ir.unit == u.path]  # fmt: skip
        u.canon = canonical(u.lines, u.inputs, u.outputs, local) + "\n" + "\n".join(decl)
        if u.canon in seen:
            u.cls = seen[u.canon]
            continue
        base = module_type(captured, u.path)
        name, k = base, 1
        while name in types:
            name, k = f"{base}_{k}", k + 1
        types[name] = base
        seen[u.canon] = u.cls = name
    return types


class _Raw:
    """An argument already written as source."""

    def __init__(self, text: str) -> None:
        self.text = text


def _src(value: Any) -> str:
    if isinstance(value, _Raw):
        return value.text
    if isinstance(value, (list, tuple)) and any(isinstance(v, _Raw) for v in value):
        inner = ", ".join(_src(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner},)"
    return fmt(value, {})


def _lay(layout: Layout) -> str:
    return "".join(str(p) for p in layout)


def _get(gm: torch.nn.Module, fqn: str) -> Any:
    obj: Any = gm
    for part in fqn.split("."):
        obj = getattr(obj, part)
    return obj


__all__ = ["ParamIR", "ProgramIR", "UnitIR", "fmt", "layout_str", "lower"]

"""The generated program as Python source a person can read and torchrun can run.

Contract: ``write_source(ir, title, output_names, loss_index, precision) -> str`` returns
one module that imports only torch and ``autopar.runtime``:
- ``MESH``, ``INPUTS``, ``OUTPUTS`` (name, layout), ``LOSS`` (index of the loss output or
  None), ``PRECISION``, ``COLLECTIVES`` and ``RECOMPUTED`` (per step), ``RECOMPUTE``
  (recomputed layer -> mode), ``PARAMS`` (FQN -> ``rt.Param``: global shape, dtype, stored
  layout, mode, FSDP axis and dim, gradient reduction axes) and ``BUFFERS``;
- one ``torch.nn.Module`` class per distinct layer (its parameters under their original
  relative names, its forward on local tensors with every collective written out);
- ``Program(rt.Program)``: the root, holding every parameter under its original FQN,
  whose ``forward(*INPUTS)`` returns the local outputs;
- ``parallelize(program, ctx)``: the parameter-sharding calls (FSDP2 per layer over the
  data axis the plan shards on) and the bucketed gradient reduction of the rest.
"""

from __future__ import annotations

from collections import defaultdict

from autopar.codegen.lower import ParamIR, ProgramIR, UnitIR, attr_expr

INDENT = "    "


def _param_line(owner_rel: str, ir: ParamIR) -> str:
    return f"rt.param(self, {owner_rel!r}, PARAMS[{ir.fqn!r}])"


def _params_table(ir: ProgramIR) -> list[str]:
    lines = ["PARAMS = {"]
    for p in ir.params:
        fsdp = f", fsdp=({p.fsdp_axis!r}, {p.fsdp_dim})" if p.fsdp_axis else ""
        reduce = f", reduce={p.reduce_axes!r}" if p.reduce_axes else ""
        layout = "".join(str(x) for x in p.layout)
        lines.append(
            f"{INDENT}{p.fqn!r}: rt.Param({p.shape!r}, {str(p.dtype)}, {layout!r}, "
            f"{p.mode!r}{fsdp}{reduce}),"
        )
    lines.append("}")
    lines.append("BUFFERS = {")
    for name, shape, dtype in ir.buffers:
        lines.append(f"{INDENT}{name!r}: ({shape!r}, {dtype}),")
    lines.append("}")
    return lines


def _layer_class(cls: str, units: list[UnitIR], ir: ProgramIR) -> list[str]:
    u = units[0]
    paths = ", ".join(x.path for x in units) if len(units) <= 3 else (
        f"{units[0].path} .. {units[-1].path} ({len(units)} layers)"
    )  # fmt: skip
    out = [f"class {cls}(torch.nn.Module):", f'{INDENT}"""{paths}"""', ""]
    out.append(f"{INDENT}def __init__(self, ctx: rt.Context) -> None:")
    out.append(f"{INDENT * 2}super().__init__()")
    out.append(f"{INDENT * 2}self.ctx = ctx")
    for p in ir.params:
        if p.unit == u.path:
            rel = p.fqn[len(u.path) + 1 :]
            out.append(f"{INDENT * 2}rt.param(self, {rel!r}, PARAMS[{p.fqn!r}])")
    for name, _, _ in ir.buffers:
        if name.startswith(u.path + "."):
            rel = name[len(u.path) + 1 :]
            out.append(f"{INDENT * 2}rt.buffer(self, {rel!r}, BUFFERS[{name!r}])")
    out.append("")
    out.append(f"{INDENT}def forward(self, {', '.join(u.inputs)}):  # type: ignore[no-untyped-def]")
    out.append(f"{INDENT * 2}ctx = self.ctx")
    out += [INDENT * 2 + line for line in u.lines]
    ret = ", ".join(u.outputs) + ("," if len(u.outputs) == 1 else "")
    out.append(f"{INDENT * 2}return {u.outputs[0] if len(u.outputs) == 1 else '(' + ret + ')'}")
    return out


def _program_class(ir: ProgramIR, by_class: dict[str, list[UnitIR]]) -> list[str]:
    out = ["class Program(rt.Program):", f'{INDENT}"""The whole model on one rank."""', ""]
    out.append(f"{INDENT}def __init__(self, ctx: rt.Context) -> None:")
    out.append(f"{INDENT * 2}super().__init__(ctx)")
    for p in ir.params:
        if not p.unit:
            out.append(f"{INDENT * 2}rt.param(self, {p.fqn!r}, PARAMS[{p.fqn!r}])")
    layered = {u.path for u in ir.units}
    for name, _, _ in ir.buffers:
        if not any(name.startswith(path + ".") for path in layered):
            out.append(f"{INDENT * 2}rt.buffer(self, {name!r}, BUFFERS[{name!r}])")
    containers: dict[str, list[UnitIR]] = defaultdict(list)
    for u in ir.units:
        parent, _, _ = u.path.rpartition(".")
        containers[parent].append(u)
    for parent, units in containers.items():
        if parent == ir.unit_prefix:
            entries = ", ".join(f"{u.path.rsplit('.', 1)[-1]!r}: {u.cls}(ctx)" for u in units)
            out.append(f"{INDENT * 2}rt.layers(self, {parent!r}, {{{entries}}})")
        else:
            for u in units:
                out.append(f"{INDENT * 2}rt.submodule(self, {u.path!r}, {u.cls}(ctx))")
    out.append("")
    out.append(
        f"{INDENT}def forward(self, {', '.join(ir.inputs)}):  # type: ignore[no-untyped-def]"
    )
    out.append(f"{INDENT * 2}ctx = self.ctx")
    out.append(f"{INDENT * 2}with rt.precision(ctx):")
    out += [INDENT * 3 + line for line in ir.root_lines]
    outs = ", ".join(ir.outputs)
    out.append(f"{INDENT * 2}return ({outs}{',' if len(ir.outputs) == 1 else ''})")
    return out


def _parallelize(ir: ProgramIR) -> list[str]:
    out = [
        "def parallelize(program: Program, ctx: rt.Context) -> None:",
        f'{INDENT}"""Shard the parameters the plan shards (FSDP2, one call per layer, then the',
        f"{INDENT}root) and reduce the other parameters' partial gradients in buckets launched",
        f'{INDENT}from backward (DDP\'s design)."""',
    ]
    fsdp = [p for p in ir.params if p.mode in ("fsdp", "zero2")]
    by_unit: dict[str, list[ParamIR]] = defaultdict(list)
    for p in fsdp:
        by_unit[p.unit].append(p)
    for u in ir.units:
        group = by_unit.get(u.path)
        if group:
            axis, regather = group[0].fsdp_axis, group[0].mode == "fsdp"
            out.append(
                f"{INDENT}rt.fully_shard({attr_expr(u.path).replace('self', 'program', 1)}, ctx, "
                f"PARAMS, {u.path!r}, axis={axis!r}, reshard_after_forward={regather})"
            )
    if fsdp:
        root = by_unit.get("", [])
        axis = root[0].fsdp_axis if root else fsdp[0].fsdp_axis
        regather = bool(root) and root[0].mode == "fsdp"
        out.append(
            f"{INDENT}rt.fully_shard(program, ctx, PARAMS, '', axis={axis!r}, "
            f"reshard_after_forward={regather})"
        )
    if any(p.reduce_axes for p in ir.params):
        out.append(f"{INDENT}rt.reduce_gradients(program, ctx, PARAMS)")
    if len(out) == 4:
        out.append(f"{INDENT}return None  # every parameter is used where it is stored")
    return out


def write_source(
    ir: ProgramIR,
    title: str,
    output_names: list[str],
    loss_index: int | None,
    precision: str = "fp32",
) -> str:
    mesh = tuple(zip(ir.names, ir.sizes))
    head = [
        f'"""{title}',
        "",
        "Generated by autopar. Each rank runs this program on its local pieces of the",
        "tensors; every collective it issues is written below (rt.reshard steps name the",
        "collective, the mesh axis and the tensor dim) or set up in parallelize().",
        '"""',
        "",
        "import torch",
        "",
        "import autopar.runtime as rt",
        "",
        "aten = torch.ops.aten",
        "",
        f"MESH = {mesh!r}",
        f"PRECISION = {precision!r}",
        f"INPUTS = {tuple(ir.inputs)!r}",
        f"OUTPUTS = {tuple(zip(output_names, ir.output_layouts))!r}",
        f"LOSS = {loss_index!r}",
        "# collectives the statements below issue per step (FSDP2 and gradient buckets: see",
        "# parallelize)",
        f"COLLECTIVES = {ir.collectives!r}",
        "# layers recomputed in backward, and the forward collectives they issue again there",
        f"RECOMPUTE = {ir.recompute!r}",
        f"RECOMPUTED = {ir.recomputed!r}",
        "# global (shape, dtype) of each input and output (what a pipeline stage receives/sends)",
        f"INPUT_META = {tuple(ir.input_meta)!r}",
        f"OUTPUT_META = {tuple(ir.output_meta)!r}",
        "# the layout each input arrives in (a received pipeline stage input: its piece)",
        f"INPUT_LAYOUTS = {tuple(ir.input_layouts)!r}",
    ]
    head += [f"# {note}" for note in ir.notes]
    head += _params_table(ir)
    body: list[str] = []
    by_class: dict[str, list[UnitIR]] = defaultdict(list)
    for u in ir.units:
        by_class[u.cls].append(u)
    for cls, units in by_class.items():
        body += ["", ""] + _layer_class(cls, units, ir)
    body += ["", ""] + _program_class(ir, by_class)
    body += ["", ""] + _parallelize(ir)
    return "\n".join(head + body) + "\n"

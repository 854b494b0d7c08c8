"""``autopar plan MODEL``: plan a model for a cluster, built on the meta device.

Contract: prints the mesh, pipeline stages, per-layer placements (repeated layers
collapsed), the predicted step time, tokens/s, TFLOP/s per GPU, MFU, memory per device
against the budget, and the standard baselines (DDP, FSDP, Megatron TP + DP) with the
speedup over each, as rich tables. ``--json`` writes the plan (schema: docs/plan-schema.md);
``--visualize`` writes pictures (``autopar.viz``). Bad options exit 2 with one paragraph.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from autopar.cli.common import EXIT_CODES, count
from autopar.placement import layout_str
from autopar.plan import Plan
from autopar.planning.request import PRESETS, parse_bytes
from autopar.planning.session import Request, baselines, figures, make

EXAMPLES = """examples:
  autopar plan gpt2 --cluster 8xH100 --visualize gpt2.html
  autopar plan llama-7b --cluster 8xH100 --strategy tp=4,dp=2 --json llama.json
  autopar plan llama-70b --cluster 4x8xH100 --memory-budget 70GiB
  autopar plan my_model.py:build --cluster cpu:2 --profile calibration.json"""


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 120, highlight=False)


def _fmt(value: float | None, kind: str) -> str:
    from autopar.viz.style import fmt_bytes, fmt_s

    if value is None:
        return "-"
    return {
        "s": fmt_s, "bytes": fmt_bytes, "tok": lambda v: f"{v:,.0f}", "tflops": lambda v: f"{v:.1f}",
        "mfu": lambda v: f"{100 * v:.1f}%", "x": lambda v: f"{v:.2f}x",
    }[kind](float(value))  # fmt: skip


def layer_rows(plan: Plan) -> list[tuple[str, str, str]]:
    """(layer, parameter placements, collectives) with identical repeated layers merged."""
    from autopar.viz.graph import box_key, split_layer

    params: dict[str, list[str]] = defaultdict(list)
    colls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    order: dict[str, int] = {}
    of_node = {n.name: n for n in plan.nodes}

    def layer(key: str) -> str:
        lay, rel = split_layer(key)
        return f"{lay[0]}.{lay[1]}" if lay else key

    for i, n in enumerate(plan.nodes):
        key = layer(box_key(n))
        order.setdefault(key, i if n.kind == "op" else i + len(plan.nodes))
        if n.kind == "op":
            order[key] = min(order[key], i)
        if n.kind == "param":
            short = ".".join(n.module.split(".")[-2:])
            params[key].append(f"{short}={layout_str(n.outs[0])}")
    for r in plan.reshards:
        key = layer(box_key(of_node[r.dst]))
        for c in r.collectives:
            colls[key][f"{c.kind}@{c.axis}"] += 1
    rows: list[tuple[str, str, str]] = []
    for key in sorted(order, key=order.__getitem__):
        p = ", ".join(params.get(key, []))
        cs = ", ".join(f"{k} x{v}" for k, v in sorted(colls.get(key, {}).items()))
        lay, _ = split_layer(key + ".x")
        if (
            rows
            and lay
            and rows[-1][1] == p
            and rows[-1][2] == cs
            and rows[-1][0].startswith(f"{lay[0]}.")
        ):
            first = rows[-1][0].split(" ")[0].split("..")[0]
            count = int(rows[-1][0].split("x")[-1]) + 1 if ".." in rows[-1][0] else 2
            rows[-1] = (f"{first}..{lay[1]} x{count}", p, cs)
        else:
            rows.append((key, p, cs))
    return rows


def _precision_note(plan: Plan) -> str:
    if plan.precision == "bf16-mixed":
        default = "; the default on GPU clusters" if not plan.cluster.startswith("cpu") else ""
        return f"bf16-mixed (fp32 master weights, bf16 compute{default})"
    return plan.precision


def print_summary(plan: Plan, console: Any = None) -> None:
    from rich.table import Table

    console = console or _console()
    f = figures(plan)
    src = plan.source
    console.print(
        f"autopar plan  strategy={plan.strategy}  mesh={plan.mesh}  cluster={plan.cluster}"
    )
    head = Table(title="plan", show_header=False, title_justify="left")
    for k, v in (("model", src.get("model", "-")), ("cluster", plan.cluster), ("mesh", str(plan.mesh)),
                 ("strategy", plan.strategy),
                 ("precision", _precision_note(plan)),
                 ("batch x seq", f"{src.get('batch_size', '-')} x {src.get('seq_len', '-')}"),
                 ("solver", f"{plan.predicted.solver} {plan.predicted.solve_status} in "
                            f"{plan.predicted.solve_s:.2f} s, {plan.predicted.num_variables} variables")):  # fmt: skip
        head.add_row(k, str(v))
    console.print(head)
    if plan.pipeline:
        stages = Table(title="pipeline stages", title_justify="left")
        stages.add_column("stage")
        stages.add_column("layers")
        for i, s in enumerate(plan.pipeline.get("stages") or []):
            mods = s.get("modules") or s.get("layers") or [] if isinstance(s, dict) else list(s)
            stages.add_row(
                str(i), ", ".join(mods[:6]) + (f" ... ({len(mods)})" if len(mods) > 6 else "")
            )
        console.print(stages)
    layers = Table(
        title=f"placements per layer (axes {', '.join(plan.mesh.names)})", title_justify="left"
    )
    for col in ("layer", "parameters", "collectives / step"):
        layers.add_column(col, overflow="fold")
    for row in layer_rows(plan):
        layers.add_row(*row)
    console.print(layers)
    budget = f["memory_budget_bytes"]
    mem = _fmt(f["memory_per_device_bytes"], "bytes") + (
        f" of {_fmt(budget, 'bytes')}" if budget else ""
    )
    pred = Table(title="predicted", title_justify="left")
    for col in ("step", "compute", "comm", "tokens/s", "TFLOP/s/GPU", "MFU", "memory/device"):
        pred.add_column(col, justify="right")
    pred.add_row(_fmt(f["step_time_s"], "s"), _fmt(plan.predicted.compute_s, "s"), _fmt(plan.predicted.comm_s, "s"),
                 _fmt(f["tokens_per_s"], "tok"), _fmt(f["tflops_per_gpu"], "tflops"), _fmt(f["mfu"], "mfu"), mem)  # fmt: skip
    console.print(f"predicted step {(f['step_time_s'] or 0.0) * 1e3:.3f} ms")
    console.print(pred)
    if plan.baselines:
        base = Table(title="baselines (same cost model)", title_justify="left")
        for col in (
            "baseline",
            "mesh",
            "step",
            "tokens/s",
            "TFLOP/s/GPU",
            "MFU",
            "memory/device",
            "this plan is faster by",
        ):
            base.add_column(col, justify="right" if col not in ("baseline", "mesh") else "left")
        for name, b in plan.baselines.items():
            if "error" in b:
                base.add_row(
                    name, "-", f"[dim]not possible: {b['error']}[/dim]", "", "", "", "", ""
                )
                continue
            mesh = (
                ",".join(f"{k}={v}" for k, v in b["mesh"].items())
                if isinstance(b.get("mesh"), dict)
                else "-"
            )
            base.add_row(name, mesh, _fmt(b.get("step_time_s"), "s"), _fmt(b.get("tokens_per_s"), "tok"),
                         _fmt(b.get("tflops_per_gpu"), "tflops"), _fmt(b.get("mfu"), "mfu"),
                         _fmt(b.get("memory_per_device_bytes"), "bytes")
                + (" [red](does not fit)[/red]" if b.get("fits") is False else ""), _fmt(b.get("speedup"), "x"))  # fmt: skip
        console.print(base)
    if plan.unknown_ops:
        console.print(f"replicated (no sharding rule): {', '.join(plan.unknown_ops)}")


def cmd_plan(args: argparse.Namespace) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from autopar.planning.session import capture_model

    if args.visualize:
        from autopar.viz import SUFFIXES

        if Path(args.visualize).suffix.lower() not in SUFFIXES:
            raise ValueError(
                f"--visualize {args.visualize}: the file name must end in .svg, .png or .html, "
                "e.g. --visualize plan.html"
            )
    req = Request(args.model, args.cluster, args.strategy, args.mesh, args.batch_size, args.seq_len,
                  parse_bytes(args.memory_budget) if args.memory_budget else None, args.profile,
                  args.precision)  # fmt: skip
    if args.json:
        _writable(args.json, "--json", "plan.json")
    _check_request(req)  # bad options fail before the slow capture
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=_console(stderr=True), transient=True) as bar:
        task = bar.add_task(
            f"building {args.model} on the meta device and capturing it", total=None
        )
        captured = capture_model(req.model, req.batch_size, req.seq_len, req.precision)
        bar.update(task, description="searching meshes, stages and placements")
        plan, captured = make(req, captured)
        if not args.no_baselines:
            bar.update(task, description="pricing the baselines (DDP, FSDP, TP + DP)")
            plan = _with_baselines(plan, baselines(captured, req, plan))
        if args.visualize:
            bar.update(task, description=f"drawing {args.visualize}")
            from autopar.viz import dataflow_edges, write_pictures

            title = f"{args.model} on {plan.cluster} · mesh {plan.mesh}"
            written = write_pictures(
                plan, args.visualize, dataflow_edges(captured.graph_module), title
            )
    print_summary(plan)
    if args.json:
        plan.save(args.json)
        print(f"plan written to {args.json}")
    if args.visualize:
        print("pictures written to " + ", ".join(str(p) for p in written.paths))
        if written.note:  # one line: what could not be drawn here and how to get it
            print(written.note)
    return 0


def _check_request(req: Request) -> None:
    from autopar.cli.common import parse_mesh
    from autopar.planning import constraints
    from autopar.planning.session import cluster_of, load_profile
    from autopar.precision import check

    cluster = cluster_of(req.cluster)
    mesh = parse_mesh(req.mesh, cluster.num_devices) if req.mesh else None
    constraints(req.strategy, mesh, cluster.num_devices)
    load_profile(req.profile)
    if req.precision is not None:
        check(req.precision)


def _writable(path: str, flag: str, example: str) -> None:
    """An output file whose directory exists (checked before the slow planning)."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            f"{flag} {path!r} is a directory; name a file, e.g. {flag} {target / example}"
        )
    if not target.absolute().parent.is_dir():
        raise FileNotFoundError(
            f"{flag} {path!r}: the directory {str(target.absolute().parent)!r} does not exist; "
            f"create it first or write elsewhere, e.g. {flag} {example}"
        )


def _with_baselines(plan: Plan, base: dict[str, Any]) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, baselines=base)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "plan", help="plan a model for a cluster (built on the meta device)",
        description="Plan MODEL for a cluster: print placements, predicted figures and baselines.",
        epilog=f"{EXAMPLES}\n{EXIT_CODES}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument(
        "model", help="bundled example (gpt2, bert, llama-7b, llama-70b, ...) or file.py:fn"
    )
    p.add_argument("--cluster", help="e.g. 8xH100, 4x8xA100-80GB, cpu:2 (default: this machine)")
    p.add_argument("--precision", choices=["fp32", "bf16-mixed", "bf16"],
                   help="how the program stores and computes (default: bf16-mixed on GPU "
                   "clusters, fp32 on CPUs)")  # fmt: skip
    p.add_argument("--strategy", default="auto", metavar="|".join(PRESETS),
                   help="a preset, or fixed degrees such as tp=8,pp=4,dp=2 (default auto)")  # fmt: skip
    p.add_argument("--mesh", help="named mesh for a preset, e.g. dp=2,tp=4 (default: dp over all)")
    p.add_argument("--batch-size", type=count("--batch-size"), help="samples per step")
    p.add_argument("--seq-len", type=count("--seq-len"), help="tokens per sample")
    p.add_argument("--memory-budget", help="bytes per device, e.g. 40GB or 38GiB")
    p.add_argument(
        "--profile", metavar="CALIBRATION.json", help="measured figures (autopar calibrate)"
    )
    p.add_argument("--json", metavar="PATH", help="write the plan JSON here")
    p.add_argument("--visualize", metavar="PATH", help="pictures: PATH.svg, PATH.png or PATH.html")
    p.add_argument("--no-baselines", action="store_true", help="skip pricing DDP/FSDP/TP baselines")
    p.set_defaults(fn=cmd_plan)

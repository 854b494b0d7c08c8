"""``autopar diff A.json B.json``: where two plans differ and what that costs.

Contract: prints the headline figures of both plans side by side with B - A; the
collectives per step of each kind and axis in both; and every node whose placement
differs (parameters first, then ops, in graph order, at most ``--limit``), with the
compute and reshard seconds it costs in each plan. Nodes present in only one plan are
counted. Plans of different models (their recorded ``source.model`` differ, or, when
one is not recorded, fewer than half of the op nodes share a name and op) are refused
with exit 2 unless ``--force``: pairing nodes by name would compare unrelated nodes.
An unreadable or invalid plan exits 2.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from autopar.cli.common import EXIT_CODES, count
from autopar.plan import Plan

EXAMPLES = """examples:
  autopar plan gpt2 --cluster 8xH100 --strategy dp --json dp.json
  autopar plan gpt2 --cluster 8xH100 --json auto.json
  autopar diff dp.json auto.json"""


def _reshard_s(plan: Plan) -> dict[str, float]:
    into: dict[str, float] = defaultdict(float)
    for r in plan.reshards:
        into[r.dst] += r.seconds
    return into


def differences(a: Plan, b: Plan) -> list[dict[str, Any]]:
    """Nodes (by name) whose layouts differ, with their costs in A and in B."""
    ra, rb = _reshard_s(a), _reshard_s(b)
    names_b = {n.name for n in b.nodes}
    rows = []
    for n in a.nodes:
        if n.name not in names_b:
            continue
        m = b.node(n.name)
        if (n.ins, n.outs, n.grads) == (m.ins, m.outs, m.grads):
            continue
        rows.append({
            "name": n.name, "kind": n.kind, "op": n.op, "module": n.module,
            "a": n, "b": m, "a_s": n.compute_s + ra[n.name], "b_s": m.compute_s + rb[n.name],
        })  # fmt: skip
    return sorted(rows, key=lambda r: r["kind"] != "param")


def same_model(a: Plan, b: Plan, name_a: str, name_b: str) -> None:
    """Refuse to pair the nodes of plans made for different models (ValueError)."""
    ma, mb = a.source.get("model"), b.source.get("model")
    if ma and mb and ma != mb:
        raise ValueError(
            f"{name_a} is a plan of {ma!r} and {name_b} of {mb!r}; diff pairs nodes by name, "
            "which only means something for two plans of one model. Compare plans of the "
            "same model, or pass --force to compare anyway"
        )
    ops_a = {(n.name, n.op) for n in a.nodes if n.kind == "op"}
    ops_b = {(n.name, n.op) for n in b.nodes if n.kind == "op"}
    shared = len(ops_a & ops_b)
    if shared < 0.5 * max(len(ops_a), len(ops_b), 1):
        raise ValueError(
            f"{name_a} and {name_b} share only {shared} of {max(len(ops_a), len(ops_b))} op "
            "nodes (same name and op): they look like plans of different models, and diff "
            "pairs nodes by name. Compare plans of one model, or pass --force to compare anyway"
        )


def cmd_diff(args: argparse.Namespace) -> int:
    from rich.table import Table

    from autopar.cli.plan import _console, _fmt
    from autopar.placement import layout_str
    from autopar.planning.session import figures

    a, b = Plan.load(args.a), Plan.load(args.b)
    if not args.force:
        same_model(a, b, args.a, args.b)
    console = _console()
    fa, fb = figures(a), figures(b)
    head = Table(title="figures", title_justify="left")
    for col in ("", "A", "B", "B - A"):
        head.add_column(col, justify="left" if not col else "right")
    head.add_row("file", args.a, args.b, "")
    head.add_row("mesh / strategy", f"{a.mesh} {a.strategy}", f"{b.mesh} {b.strategy}", "")
    for key, kind in (("step_time_s", "s"), ("tokens_per_s", "tok"), ("mfu", "mfu"),
                      ("memory_per_device_bytes", "bytes")):  # fmt: skip
        va, vb = fa.get(key), fb.get(key)
        delta = _fmt(vb - va, kind) if va is not None and vb is not None else "-"
        head.add_row(key.replace("_", " "), _fmt(va, kind), _fmt(vb, kind), delta)
    head.add_row("comm (sum)", _fmt(a.predicted.comm_s, "s"), _fmt(b.predicted.comm_s, "s"),
                 _fmt(b.predicted.comm_s - a.predicted.comm_s, "s"))  # fmt: skip
    console.print(head)
    ca, cb = a.collectives(), b.collectives()
    coll = Table(title="collectives per step", title_justify="left")
    for col in ("kind", "A", "B"):
        coll.add_column(col)
    for kind in sorted(set(ca) | set(cb)):
        if ca[kind] != cb[kind]:
            coll.add_row(kind, str(ca[kind]), str(cb[kind]))
    console.print(coll)
    rows = differences(a, b)
    only = len({n.name for n in a.nodes} ^ {n.name for n in b.nodes})
    nodes = Table(title=f"{len(rows)} nodes placed differently"
                        + (f"; {only} nodes in only one plan" if only else ""), title_justify="left")  # fmt: skip
    for col in ("node", "module", "A out", "B out", "A cost", "B cost"):
        nodes.add_column(col, overflow="fold", justify="right" if "cost" in col else "left")
    for r in rows[: args.limit]:
        nodes.add_row(r["name"], r["module"] or "<top>", " ".join(layout_str(x) for x in r["a"].outs),
                      " ".join(layout_str(x) for x in r["b"].outs), _fmt(r["a_s"], "s"), _fmt(r["b_s"], "s"))  # fmt: skip
    if len(rows) > args.limit:
        nodes.add_row(f"... {len(rows) - args.limit} more (--limit)", "", "", "", "", "")
    console.print(nodes)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "diff", help="where two plans differ and what that costs",
        description="Compare two saved plans: figures, collectives, and nodes placed differently.",
        epilog=f"{EXAMPLES}\n{EXIT_CODES}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("a", help="plan JSON A")
    p.add_argument("b", help="plan JSON B")
    p.add_argument("--limit", type=count("--limit"), default=40,
                   help="at most this many differing nodes (40)")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="compare even plans that look like they are of different models")  # fmt: skip
    p.set_defaults(fn=cmd_diff)

"""``autopar plan MODEL``: plan a model for a cluster, built on the meta device."""

from __future__ import annotations

import argparse
import warnings

from autopar.cli.common import parse_mesh


def cmd_plan(args: argparse.Namespace) -> int:
    from autopar.capture import capture
    from autopar.models import resolve
    from autopar.solve.planner import make_plan
    from cost_models import ClusterSpec, CostModel, detect_cluster

    cluster = ClusterSpec.parse(args.cluster) if args.cluster else detect_cluster()
    mesh = parse_mesh(args.mesh, cluster.num_devices)
    cm = CostModel(cluster, mesh)
    model, margs, mkwargs = resolve(args.model, "meta", args.batch_size, args.seq_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture(model, margs, mkwargs)
    plan = make_plan(captured, mesh, args.strategy, cm)
    print(plan.summary())
    if args.json:
        plan.save(args.json)
        print(f"plan written to {args.json}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "plan", help="plan a model for a cluster (built on the meta device)",
        epilog="example: autopar plan llama-7b --cluster 8xA100-80GB --mesh dp=2,tp=4 --json p.json",
    )  # fmt: skip
    p.add_argument("model", help="bundled example (gpt2, bert, llama-7b, ...) or file.py:fn")
    p.add_argument("--cluster", help="e.g. 8xH100, 4x8xA100-80GB, cpu:2 (default: detected)")
    p.add_argument("--mesh", help="named mesh, e.g. dp=2,tp=4 (default: dp over all devices)")
    p.add_argument("--strategy", default="auto", choices=["auto", "dp", "tp"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--json", help="write the plan JSON here")
    p.set_defaults(fn=cmd_plan)

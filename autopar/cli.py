"""The ``autopar`` command line: ``plan`` and ``run``.

Contract: ``main(argv)`` returns an exit code: 0 success, 1 a failed check, 2 bad
usage. Bad input prints one paragraph naming the fix, never a traceback.

  autopar plan gpt2 --cluster 8xH100 --json plan.json
  autopar run gpt2-tiny --nproc 2 --steps 3 --check
"""

from __future__ import annotations

import argparse
import sys
import warnings

from autopar.mesh import MeshSpec


def parse_mesh(text: str | None, devices: int) -> MeshSpec:
    if not text:
        return MeshSpec.of(devices)
    axes = []
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not size.isdigit():
            raise ValueError(f"mesh {text!r} must look like dp=2,tp=4")
        axes.append((name.strip(), int(size)))
    return MeshSpec(tuple(axes))


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


def cmd_run(args: argparse.Namespace) -> int:
    from autopar.launch import launch

    mesh = parse_mesh(args.mesh, args.nproc)
    mesh.check_world(args.nproc)
    ok = launch(args.model, args.nproc, args.steps, args.strategy, mesh, args.check, args.timeout)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autopar",
        description="Plan and run PyTorch training over many devices.",
        epilog="examples:\n  autopar plan gpt2 --cluster 8xH100\n"
        "  autopar run gpt2-tiny --nproc 2 --steps 3 --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    plan = sub.add_parser(
        "plan", help="plan a model for a cluster (built on the meta device)",
        epilog="example: autopar plan llama-7b --cluster 8xA100-80GB --mesh dp=2,tp=4 --json p.json",
    )  # fmt: skip
    plan.add_argument("model", help="bundled example (gpt2, bert, llama-7b, ...) or file.py:fn")
    plan.add_argument("--cluster", help="e.g. 8xH100, 4x8xA100-80GB, cpu:2 (default: detected)")
    plan.add_argument("--mesh", help="named mesh, e.g. dp=2,tp=4 (default: dp over all devices)")
    plan.add_argument("--strategy", default="auto", choices=["auto", "dp", "tp"])
    plan.add_argument("--batch-size", type=int)
    plan.add_argument("--seq-len", type=int)
    plan.add_argument("--json", help="write the plan JSON here")
    plan.set_defaults(fn=cmd_plan)
    run = sub.add_parser(
        "run", help="train on N local processes (gloo on CPU)",
        epilog="example: autopar run llama-tiny --nproc 2 --steps 3 --strategy tp --check",
    )  # fmt: skip
    run.add_argument("model", help="bundled example, e.g. gpt2-tiny, or file.py:fn")
    run.add_argument("--nproc", type=int, default=2)
    run.add_argument("--steps", type=int, default=3)
    run.add_argument("--strategy", default="auto", choices=["auto", "dp", "tp"])
    run.add_argument("--mesh", help="named mesh, e.g. dp=2,tp=2")
    run.add_argument("--check", action="store_true", help="compare with a single process")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up")
    run.set_defaults(fn=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"autopar {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``autopar run MODEL``: train on N local processes (gloo on CPU, NCCL on GPUs)."""

from __future__ import annotations

import argparse

from autopar.cli.common import parse_mesh


def cmd_run(args: argparse.Namespace) -> int:
    from autopar.launch import launch

    mesh = parse_mesh(args.mesh, args.nproc)
    mesh.check_world(args.nproc)
    ok = launch(args.model, args.nproc, args.steps, args.strategy, mesh, args.check, args.timeout)
    return 0 if ok else 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run", help="train on N local processes (gloo on CPU, NCCL on GPUs)",
        description="Compile a model on N local processes, train K SGD steps on one batch and "
        "print loss and throughput per step; --check compares with one process.",
        epilog="examples:\n"
        "  autopar run gpt2-tiny --nproc 2 --steps 3 --check\n"
        "  autopar run llama-tiny --nproc 2 --strategy fsdp --check\n"
        "  autopar run gpt2-tiny --nproc 4 --mesh dp=2,tp=2 --check\n"
        "  autopar run gpt2-tiny --nproc 2 --mesh pp=2 --check\n"
        "  autopar run my_model.py:build --nproc 2\n"
        "exit codes: 0 success, 1 a failed check, 2 bad usage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", help="bundled example, e.g. gpt2-tiny, or file.py:fn")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--strategy", default="auto", choices=["auto", "dp", "tp", "fsdp", "zero", "pp"])
    p.add_argument("--mesh", help="named mesh, e.g. dp=2,tp=2")
    p.add_argument("--check", action="store_true", help="compare with a single process")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up")
    p.set_defaults(fn=cmd_run)

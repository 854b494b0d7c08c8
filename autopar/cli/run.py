"""``autopar run MODEL``: train on N local processes (gloo on CPU, NCCL on GPUs).

Contract: the mesh is ``--mesh`` when given (``--strategy pp`` needs a ``pp`` axis in
it), else one ``pp`` axis over ``--nproc`` for ``--strategy pp`` and one ``dp`` axis
otherwise; a mesh that does not match ``--nproc`` or the strategy, an unknown model or
a bad count is bad usage (exit 2), all checked before any rank is spawned (so is a
``--resume DIR`` that is no checkpoint); a rank that fails is exit 3 (``launch``), a
failed ``--check`` exit 1. ``--save DIR`` / ``--resume DIR``: see ``launch``.
"""

from __future__ import annotations

import argparse

from autopar.cli.common import EXIT_CODES, MAX_PROCS, check_model, count, parse_mesh, seconds
from autopar.launch import RunConfig
from autopar.mesh import MeshSpec
from autopar.precision import PRECISIONS
from autopar.timeouts import DEFAULT_TIMEOUT_S


def run_mesh(text: str | None, nproc: int, strategy: str) -> MeshSpec:
    """The mesh ``run`` launches on: ``--mesh`` when given, else one ``pp`` axis over the
    processes for ``--strategy pp`` and one ``dp`` axis otherwise."""
    if not text and strategy == "pp":
        return MeshSpec.of({"pp": nproc})
    mesh = parse_mesh(text, nproc)
    if strategy == "pp" and "pp" not in mesh.names:
        raise ValueError(
            f"--strategy pp cuts the model into pipeline stages along a mesh axis named pp, "
            f"but --mesh {text} has none; add one (e.g. --mesh pp={nproc}), or drop --mesh "
            f"to pipeline over all {nproc} processes"
        )
    return mesh


def config(args: argparse.Namespace) -> RunConfig:
    """The run ``args`` ask for, every option checked (ValueError) before any rank starts."""
    check_model(args.model)
    mesh = run_mesh(args.mesh, args.nproc, args.strategy)
    try:
        mesh.check_world(args.nproc)
    except ValueError:
        raise ValueError(
            f"--mesh {args.mesh} has {mesh.num_devices} devices but --nproc is {args.nproc}; "
            f"choose axis sizes whose product is {args.nproc}, or --nproc {mesh.num_devices}"
        ) from None
    cfg = RunConfig(args.model, args.nproc, args.steps, args.strategy, dict(mesh.axes),
                    args.check, args.timeout, save=args.save, resume=args.resume,
                    precision=args.precision)  # fmt: skip
    cfg.validate()
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from autopar.launch import launch

    return 0 if launch(config(args)) else 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run", help="train on N local processes (gloo on CPU, NCCL on GPUs)",
        description="Compile a model on N local processes, train K SGD steps on one batch and "
        "print loss and throughput per step; --check compares with one process.",
        epilog="examples:\n"
        "  autopar run gpt2-tiny --nproc 2 --steps 3 --check\n"
        "  autopar run llama-tiny --nproc 2 --strategy fsdp --check\n"
        "  autopar run gpt2-tiny --nproc 4 --mesh dp=2,tp=2 --check\n"
        "  autopar run gpt2-tiny --nproc 2 --strategy pp --check\n"
        "  autopar run gpt2-tiny --nproc 2 --mesh pp=2 --check\n"
        "  autopar run my_model.py:build --nproc 2\n"
        "  autopar run gpt2-tiny --nproc 2 --strategy fsdp --precision bf16-mixed --check\n"
        "  autopar run gpt2-tiny --nproc 2 --steps 3 --save ckpt\n"
        "  autopar run gpt2-tiny --nproc 4 --steps 3 --resume ckpt --check\n"
        "--resume: re-plans for --nproc (any number, not only the saving run's), reshards\n"
        "the checkpoint to that plan and continues from its step\n"
        "--timeout: seconds one collective may wait for its peers (including while rank 0\n"
        "plans) before every rank is stopped; the run as a whole has no limit\n"
        f"{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", help="bundled example, e.g. gpt2-tiny, or file.py:fn")
    p.add_argument("--nproc", type=count("--nproc", 1, MAX_PROCS), default=2,
                   help="local processes (2)")  # fmt: skip
    p.add_argument("--steps", type=count("--steps"), default=3, help="SGD steps (3)")
    p.add_argument("--strategy", default="auto", choices=["auto", "dp", "tp", "fsdp", "zero", "pp"])
    p.add_argument("--mesh", help="named mesh, e.g. dp=2,tp=2")
    p.add_argument("--check", action="store_true", help="compare with a single process")
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="fp32, bf16-mixed (bf16 compute, fp32 master weights) or bf16 "
                   "(default: bf16-mixed on GPUs, fp32 on CPU)")  # fmt: skip
    p.add_argument("--save", metavar="DIR", help="write a checkpoint after the last step")
    p.add_argument("--resume", metavar="DIR",
                   help="continue from a checkpoint (saved on any number of processes)")  # fmt: skip
    p.add_argument("--timeout", type=seconds("--timeout"), default=DEFAULT_TIMEOUT_S,
                   help=f"collective timeout in seconds ({DEFAULT_TIMEOUT_S:g})")  # fmt: skip
    p.set_defaults(fn=cmd_run)

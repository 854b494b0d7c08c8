"""``autopar emit MODEL -o DIR``: plan MODEL and write a program torchrun can launch.

Contract: plans MODEL for ``--nproc`` local processes (``--cluster`` to plan for other
hardware: the program then needs that many processes) and writes ``DIR/program.py`` (the
generated per-rank program), ``DIR/train.py``, ``DIR/plan.json`` and ``DIR/launch.sh``
(``autopar.emit``); prints the launch line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from autopar.cli.common import EXIT_CODES, MAX_PROCS, count, rate

EXAMPLES = """examples:
  autopar emit gpt2-tiny --nproc 2 -o out/gpt2 && torchrun --nproc-per-node 2 out/gpt2/train.py
  autopar emit llama-7b --cluster 8xH100 --strategy tp -o out/llama --steps 20
  autopar emit my_model.py:build --nproc 4 --mesh dp=2,tp=2 -o out/mine"""


def check_out(out: str) -> None:
    """``-o DIR`` must be a directory or a path one can be made at."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"-o {out!r} is a file, but emit writes several files into a directory; name a "
            "directory (it is created), e.g. -o out/job"
        )
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PermissionError(
            f"-o {out!r} cannot be created: {parent} is not a writable directory; choose a "
            "directory you can write to, e.g. -o out/job"
        )


def cmd_emit(args: argparse.Namespace) -> int:
    from autopar.emit import emit
    from autopar.plan_check import check_against
    from autopar.planning.session import Request, capture_model, make

    check_out(args.out)
    cluster = args.cluster or f"cpu:{args.nproc}"
    req = Request(args.model, cluster, args.strategy, args.mesh, args.batch_size, args.seq_len,
                  precision=args.precision)  # fmt: skip
    plan, captured = make(req)
    stages = None
    if plan.stages:  # the stage graphs the plan was made for, captured at the microbatch
        from autopar.planning.pipeline import stage_graphs

        info = plan.pipeline or {}
        mb = (plan.source.get("batch_size") or 1) // int(info["microbatches"])
        at_mb = capture_model(args.model, mb, plan.source.get("seq_len"), plan.precision)
        stages = stage_graphs(at_mb, tuple(tuple(s["units"]) for s in info["stages"]))
        for st in stages.stages:
            check_against(plan.stages[st.index], st.captured)
    else:
        check_against(plan, captured)  # the program is generated from exactly this plan
    launch = emit(plan, captured, args.model, args.out, args.steps, args.lr, stages)
    what = f"{len(plan.stages)} stage programs" if plan.stages else "program.py"
    print(f"wrote {args.out}/{what}, train.py, plan.json and launch.sh "
          f"(mesh {(plan.pipeline or {}).get('mesh', plan.mesh)}, strategy {plan.strategy}, "
          f"precision {plan.precision})")  # fmt: skip
    print(f"launch: {launch}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "emit", help="write a standalone train.py + plan.json to launch with torchrun",
        description="Plan MODEL and write a readable training program for torchrun.",
        epilog=f"{EXAMPLES}\n{EXIT_CODES}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", help="bundled example (gpt2-tiny, llama-7b, ...) or file.py:fn")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="directory to write into")
    p.add_argument("--nproc", type=count("--nproc", 1, MAX_PROCS), default=2,
                   help="processes on this machine (default 2)")  # fmt: skip
    p.add_argument("--cluster", help="plan for this cluster instead, e.g. 8xH100")
    p.add_argument("--strategy", default="auto", help="auto, dp, tp, ... or tp=2,dp=2")
    p.add_argument("--mesh", help="named mesh, e.g. dp=2,tp=2")
    p.add_argument("--batch-size", type=count("--batch-size"), help="samples per step")
    p.add_argument("--seq-len", type=count("--seq-len"), help="tokens per sample")
    p.add_argument("--steps", type=count("--steps"), default=5,
                   help="training steps the program runs (5)")  # fmt: skip
    p.add_argument("--lr", type=rate("--lr"), default=0.1, help="SGD learning rate (0.1)")
    p.add_argument("--precision", choices=["fp32", "bf16-mixed", "bf16"],
                   help="fp32; bf16-mixed (fp32 master weights, bf16 compute); bf16 "
                   "(default: bf16-mixed for GPU clusters, fp32 for CPUs)")  # fmt: skip
    p.set_defaults(fn=cmd_emit)

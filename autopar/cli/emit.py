"""``autopar emit MODEL -o DIR``: plan MODEL and write a program torchrun can launch.

Contract: plans MODEL for ``--nproc`` local processes (``--cluster`` to plan for other
hardware: the program then needs that many processes) and writes ``DIR/train.py``,
``DIR/plan.json`` and ``DIR/launch.sh`` (``autopar.emit``); prints the launch line.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  autopar emit gpt2-tiny --nproc 2 -o out/gpt2 && torchrun --nproc-per-node 2 out/gpt2/train.py
  autopar emit llama-7b --cluster 8xH100 --strategy tp -o out/llama --steps 20
  autopar emit my_model.py:build --nproc 4 --mesh dp=2,tp=2 -o out/mine"""


def cmd_emit(args: argparse.Namespace) -> int:
    from autopar.cli.planning import Request, make
    from autopar.emit import emit

    cluster = args.cluster or f"cpu:{args.nproc}"
    req = Request(args.model, cluster, args.strategy, args.mesh, args.batch_size, args.seq_len)
    plan, _, _ = make(req)
    launch = emit(plan, args.model, args.out, args.steps, args.lr)
    print(f"wrote {args.out}/train.py, {args.out}/plan.json and {args.out}/launch.sh "
          f"(mesh {plan.mesh}, strategy {plan.strategy})")  # fmt: skip
    print(f"launch: {launch}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "emit", help="write a standalone train.py + plan.json to launch with torchrun",
        description="Plan MODEL and write a readable training program for torchrun.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", help="bundled example (gpt2-tiny, llama-7b, ...) or file.py:fn")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="directory to write into")
    p.add_argument("--nproc", type=int, default=2, help="processes on this machine (default 2)")
    p.add_argument("--cluster", help="plan for this cluster instead, e.g. 8xH100")
    p.add_argument("--strategy", default="auto", help="auto, dp, tp, ... or tp=2,dp=2")
    p.add_argument("--mesh", help="named mesh, e.g. dp=2,tp=2")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--steps", type=int, default=5, help="training steps the program runs (5)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (0.1)")
    p.set_defaults(fn=cmd_emit)

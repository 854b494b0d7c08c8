"""The ``autopar`` command line: one module per command under ``autopar/cli/``.

Contract: ``main(argv)`` returns an exit code: 0 success, 1 a failed check, 2 bad
usage. Bad input prints one paragraph naming the fix, never a traceback. Each command
module exposes ``add_parser(subparsers)``; ``COMMANDS`` lists them in help order.

  autopar plan gpt2 --cluster 8xH100 --json plan.json
  autopar run gpt2-tiny --nproc 2 --steps 3 --check
"""

from __future__ import annotations

import argparse
import sys

from autopar.capture import CaptureError
from autopar.cli import calibrate, diff, emit, explain, plan, run

COMMANDS = (plan, explain, diff, emit, run, calibrate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autopar",
        description="Plan and run PyTorch training over many devices.",
        epilog="examples:\n  autopar plan gpt2 --cluster 8xH100 --visualize gpt2.html --json plan.json\n"
        "  autopar explain plan.json --top 20\n  autopar diff dp.json plan.json\n"
        "  autopar emit gpt2-tiny --nproc 2 -o out/ && torchrun --nproc-per-node 2 out/train.py\n"
        "  autopar run gpt2-tiny --nproc 2 --steps 3 --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except (ValueError, TypeError, FileNotFoundError, CaptureError) as err:
        print(f"autopar {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

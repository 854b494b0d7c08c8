"""The ``autopar`` command line: one module per command under ``autopar/cli/``.

Contract: ``main(argv)`` returns an exit code: 0 success, 1 a failed check, 2 bad
usage, 3 a rank failed (``RanksFailed``: the failing rank, its error and exit code are
printed). Bad input prints one paragraph (what was given, what is needed, how to fix
it), never a traceback; options are checked before anything slow runs (argument
parsing imports no torch). Each command module exposes ``add_parser(subparsers)``;
``COMMANDS`` lists them in help order. An exception that is none of these is a bug in
autopar and keeps its traceback.

  autopar plan gpt2 --cluster 8xH100 --json plan.json
  autopar run gpt2-tiny --nproc 2 --steps 3 --check
"""

from __future__ import annotations

import argparse
import sys
import warnings

from autopar.cli import calibrate, diff, emit, explain, plan, run
from autopar.cli.common import EXIT_CODES

COMMANDS = (plan, explain, diff, emit, run, calibrate)
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                PermissionError, NotImplementedError)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autopar",
        description="Plan and run PyTorch training over many devices.",
        epilog="examples:\n  autopar plan gpt2 --cluster 8xH100 --visualize gpt2.html --json plan.json\n"
        "  autopar explain plan.json --top 20\n  autopar diff dp.json plan.json\n"
        "  autopar emit gpt2-tiny --nproc 2 -o out/ && torchrun --nproc-per-node 2 out/train.py\n"
        f"  autopar run gpt2-tiny --nproc 2 --steps 3 --check\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def _usage(err: BaseException) -> bool:
    from autopar.capture import CaptureError

    return isinstance(err, (*USAGE_ERRORS, CaptureError))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a bad option (2, argparse's message)
        return int(done.code or 0) if not isinstance(done.code, str) else 2
    try:
        with warnings.catch_warnings():
            # a warning is one line for the user, not a source location
            warnings.showwarning = lambda message, *_, **__: print(
                f"autopar {args.command}: warning: {message}", file=sys.stderr
            )
            return int(args.fn(args))
    except KeyboardInterrupt:
        print(f"autopar {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from autopar.runtime.ranks import RanksFailed

        if isinstance(err, RanksFailed):
            print(f"autopar {args.command}: {err}", file=sys.stderr)
            return 3
        if not _usage(err):
            raise
        print(f"autopar {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

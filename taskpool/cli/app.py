"""Running one starter.py command: parse, dispatch, and turn every user mistake into a message and
an exit code."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from temporalio.service import RPCError

from taskpool.cli.commands import COMMANDS, Context
from taskpool.cli.demo import demo
from taskpool.cli.errors import FAILED, INTERRUPTED, USAGE, CliError
from taskpool.cli.parser import PROG, build_parser


def run(argv: Sequence[str], ctx: Context | None = None) -> int:
    """Run the command in `argv` (without the program name); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        # argparse exits 0 after --help and 2 after a usage error, having printed either.
        return stop.code if isinstance(stop.code, int) else USAGE
    ctx = ctx or Context()
    try:
        command = demo if args.command == "demo" else COMMANDS[args.command]
        return asyncio.run(command(ctx, args))
    except CliError as err:
        _complain(ctx, err.message)
        return err.code
    except RPCError as err:
        # What the commands did not foresee is still Temporal's answer, not a crash.
        _complain(ctx, f"Temporal could not do it: {err.message}")
        return FAILED
    except BrokenPipeError:
        # The reader (`| head`) has gone; what is left to write has nowhere to go.
        _silence_stdout()
        return FAILED
    except KeyboardInterrupt:
        if ctx.following:
            _complain(ctx, f"stopped following batch {ctx.following}; it keeps running")
        else:
            _complain(ctx, "interrupted")
        return INTERRUPTED


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _complain(ctx: Context, message: str) -> None:
    ctx.stdout.flush()
    ctx.stderr.write(f"{PROG}: {message}\n")
    ctx.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)

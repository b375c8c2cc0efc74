"""Running one starter.py command: parse, dispatch, and turn every user mistake into a message and
an exit code."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from temporalio.service import RPCError

from taskpool.cli.command import COMMAND_DEST
from taskpool.cli.commands import COMMANDS
from taskpool.cli.context import Context
from taskpool.cli.errors import FAILED, INTERRUPTED, USAGE, CliError, cli_error
from taskpool.cli.parser import PROG, build_parser
from taskpool.client.errors import ClientError

_BY_NAME = {command.name: command for command in COMMANDS}


def run(argv: Sequence[str], ctx: Context | None = None) -> int:
    """Run the command in `argv` (without the program name); returns the exit code."""
    parser = build_parser()
    try:
        namespace = parser.parse_args(argv)
    except SystemExit as stop:
        # argparse exits 0 after --help and 2 after a usage error, having printed either.
        return stop.code if isinstance(stop.code, int) else USAGE
    ctx = ctx or Context()
    command = _BY_NAME[getattr(namespace, COMMAND_DEST)]
    try:
        return asyncio.run(command(ctx, namespace))
    except CliError as err:
        _complain(ctx, err.message)
        return err.code
    except ClientError as err:
        problem = cli_error(err)
        _complain(ctx, problem.message)
        return problem.code
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

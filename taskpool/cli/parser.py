"""starter.py's parser: the program's description, and each command's own declaration."""

from __future__ import annotations

import argparse

from taskpool.cli.command import COMMAND_DEST
from taskpool.cli.commands import COMMANDS

PROG = "starter.py"

DESCRIPTION = """\
Start and drive taskpool batches: large sets of LLM tasks that run as durable Temporal workflows.
A worker (python worker.py) must be running on the same task queue to execute them."""

EPILOG = """\
exit codes:
  0  success (with --wait, watch: every task completed)
  1  the operation failed, or the batch ended with failed or cancelled tasks
  2  usage or input error: bad arguments or task file, unknown batch, a request the batch refused

environment:
  TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, ...  where Temporal is (SDK env config)
  TASKPOOL_TASK_QUEUE  the workers' task queue (default: taskpool)
  TASKPOOL_STORE       the workers' task store: `start` writes the definitions there, `results`
                       reads from it (default: data/taskpool.db)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest=COMMAND_DEST, metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_to(commands)
    return parser

"""starter.py's commands, in the order `--help` lists them. Each module declares its commands'
arguments beside their handlers."""

from __future__ import annotations

from taskpool.cli.command import AnyCommand
from taskpool.cli.commands.demo import DEMO
from taskpool.cli.commands.priority import PRIORITY
from taskpool.cli.commands.read import BATCHES, STATUS, TASKS, WATCH
from taskpool.cli.commands.records import COMMENT, RESULTS, TASK
from taskpool.cli.commands.start import START
from taskpool.cli.commands.steer import (
    ADD,
    APPROVE,
    CANCEL,
    CONCURRENCY,
    PAUSE,
    REJECT,
    RESUME,
    RETRY,
)

COMMANDS: tuple[AnyCommand, ...] = (
    START,
    STATUS,
    WATCH,
    TASKS,
    BATCHES,
    TASK,
    COMMENT,
    PAUSE,
    RESUME,
    CANCEL,
    ADD,
    RETRY,
    APPROVE,
    REJECT,
    CONCURRENCY,
    PRIORITY,
    RESULTS,
    DEMO,
)

"""Argument types and options that several commands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from taskpool.domain.batch import BatchState
from taskpool.domain.tasks import Priority, TaskStatus

E = TypeVar("E", bound=StrEnum)
Group = argparse.ArgumentParser | argparse._MutuallyExclusiveGroup


def int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def seconds_up_to(most: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not 0.1 <= value <= most:
            raise argparse.ArgumentTypeError(f"give between 0.1 and {most:g} seconds")
        return value

    return parse


def one_of(kind: type[E]) -> Callable[[str], E]:
    """An argument type taking one of `kind`'s values, in any case."""

    def parse(text: str) -> E:
        try:
            return kind(text.strip().lower())
        except ValueError:
            choices = ", ".join(member.value for member in kind)
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {choices}") from None

    return parse


priority = one_of(Priority)
task_status = one_of(TaskStatus)
batch_state = one_of(BatchState)
concurrency = int_between(1, 1000)


def store_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--store", metavar="URL", help=f"{what} (default: TASKPOOL_STORE or data/taskpool.db)"
    )


def json_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--json", dest="as_json", action="store_true", help=text)


def interval_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval",
        type=seconds_up_to(3600),
        default=1.0,
        metavar="S",
        help="seconds between looks at the batch (default 1)",
    )


def task_ids_option(parser: Group, text: str) -> None:
    """`--task ID ...`, which may be given more than once."""
    parser.add_argument(
        "--task", dest="task_ids", metavar="ID", nargs="+", action="extend", help=text
    )

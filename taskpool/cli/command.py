"""How a command is declared: its arguments as a typed model that adds them to its parser, and
the handler that receives them.

argparse parses; the model built from its namespace, in one place, is what a handler reads. The
model is strict and forbids extra values, so a declaration and its fields cannot drift apart:
a command whose parser and model disagree fails on its first run, in the tests.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, Self, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict

from taskpool.cli.context import Context

COMMAND_DEST = "command"

# A string: argparse's class takes no type arguments at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Args(BaseModel):
    """A command's arguments: each field is an argparse destination that `declare` adds."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    @classmethod
    def declare(cls, parser: argparse.ArgumentParser) -> None:
        """Add the command's options and arguments to its parser (none by default)."""

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> Self:
        values = {name: value for name, value in vars(namespace).items() if name != COMMAND_DEST}
        return cls.model_validate(values)


class BatchArgs(Args):
    """The arguments of a command about one batch, which its parser takes first."""

    batch: str


A = TypeVar("A", bound=Args)


@dataclass(frozen=True)
class Command(Generic[A]):
    name: str
    summary: str
    args: type[A]
    run: Callable[[Context, A], Awaitable[int]]
    details: str = ""
    # The whole description, when it is not the summary followed by the details.
    description: str | None = None

    def add_to(self, commands: Subparsers) -> None:
        parser = commands.add_parser(
            self.name,
            help=self.summary,
            description=self.description or "\n\n".join(filter(None, [self.summary, self.details])),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if issubclass(self.args, BatchArgs):
            parser.add_argument("batch", metavar="BATCH", help="the batch id")
        self.args.declare(parser)

    async def __call__(self, ctx: Context, namespace: argparse.Namespace) -> int:
        return await self.run(ctx, self.args.from_namespace(namespace))


class AnyCommand(Protocol):
    """A command of any argument type, as the parser and the dispatcher see it."""

    @property
    def name(self) -> str: ...

    @property
    def args(self) -> type[Args]: ...

    def add_to(self, commands: Subparsers) -> None: ...

    async def __call__(self, ctx: Context, namespace: argparse.Namespace) -> int: ...

"""What a command works with: its output streams and, on demand, a Temporal client and the
settings."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, RenderableType
from temporalio.client import Client

from taskpool.cli.errors import USAGE, CliError
from taskpool.client.connect import connect_client
from taskpool.infra.settings import Settings, SettingsError

# Wide enough for a results table when the output is a file or a pipe, not a terminal.
PIPE_WIDTH = 160


@dataclass
class Context:
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    # The batch being followed, so an interrupted command can say it keeps running.
    following: str | None = None
    _client: Client | None = None

    @property
    def interactive(self) -> bool:
        return self.stdout.isatty()

    async def client(self) -> Client:
        """Connected on first use, so commands that need no Temporal work without one."""
        if self._client is None:
            self._client = await connect_client()
        return self._client

    def settings(self) -> Settings:
        try:
            return Settings.from_env()
        except SettingsError as err:
            raise CliError(str(err), USAGE) from None

    def store_url(self, given: str | None) -> str:
        """The task store named by --store, else by the environment."""
        return given or self.settings().store_url

    def say(self, *lines: str) -> None:
        for line in lines:
            self.stdout.write(line + "\n")
        self.stdout.flush()

    def note(self, line: str) -> None:
        """Progress on long work: on stderr, so that stdout stays what a script reads."""
        self.stderr.write(line + "\n")
        self.stderr.flush()

    def show(self, renderable: RenderableType) -> None:
        console = Console(
            file=self.stdout, width=None if self.interactive else PIPE_WIDTH, highlight=False
        )
        console.print(renderable)

    def json_line(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

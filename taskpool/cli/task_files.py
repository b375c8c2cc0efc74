"""Reading a task file for a command: `start`, `add`, `retry --inputs` and the demo."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from taskpool.cli.context import Context
from taskpool.cli.errors import USAGE, CliError
from taskpool.client.inputs import InputError, load_tasks
from taskpool.domain import agents
from taskpool.domain.tasks import TaskSpec

# Reading and checking a file this large takes a while: say so before it starts.
READ_NOTE_FROM_BYTES = 10_000_000


def load(
    source: Path,
    *,
    default_kind: str | None,
    existing: Sequence[str] = (),
    check_dependencies: bool = True,
) -> list[TaskSpec]:
    """The file's tasks, every line checked; a CliError listing the problems otherwise."""
    try:
        return load_tasks(
            source,
            default_kind=default_kind,
            known_kinds=agents.KINDS,
            existing_ids=existing,
            check_dependencies=check_dependencies,
        )
    except InputError as err:
        raise CliError(f"{err}\nnothing was started or changed", USAGE) from None


def note_a_large_file(ctx: Context, source: Path) -> None:
    if source.is_file() and (size := source.stat().st_size) >= READ_NOTE_FROM_BYTES:
        ctx.note(f"reading and checking {source} ({size / 1e6:.0f} MB)")

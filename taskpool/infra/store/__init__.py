"""The task store: the durable record of every task for people and exports.

The batch workflow decides what runs; the store remembers what happened. Every write is idempotent
(events are keyed, record fields are set, not incremented) because activities run at least once.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import types
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from taskpool.domain.records import RegisterTasksRequest, TaskRecord, TaskRecordUpdate
from taskpool.domain.tasks import TaskStatus
from taskpool.domain.turns import TaskConversation, TurnRecord
from taskpool.infra.store.batch_records import BatchRecord


class TaskStore(Protocol):
    async def register_tasks(self, request: RegisterTasksRequest) -> None:
        """Insert task definitions with a `created` event (and one for the initial status).

        Registering a task id that the batch already has changes nothing.
        """

    async def apply(self, updates: Sequence[TaskRecordUpdate]) -> None:
        """Set the fields an update carries (None means unchanged) and add its events, all
        updates in one transaction.

        Events already present (same batch, task and key) are skipped. An update with a
        `result_turn` takes the result stored with that turn of its attempt. An
        `only_if_current` update is skipped, events and all, when the record shows a later
        attempt, a cancelled task or its own attempt ended; any other update of a task the store
        does not have raises UnknownTaskError.
        """

    async def save_turn(self, turn: TurnRecord) -> None:
        """Keep a model turn under its task, attempt and turn number, replacing what an earlier
        try of the same turn kept."""

    async def conversation(
        self,
        batch_id: str,
        task_id: str,
        attempt: int,
        *,
        before_turn: int,
        after_applying: TaskRecordUpdate | None = None,
    ) -> TaskConversation | None:
        """The task's record (without events) and its attempt's turns before `before_turn`, in
        order, from one snapshot; None when the store does not have the task. `after_applying`
        is applied first (as `apply` would), so a turn starts with one trip to the store."""

    async def get_task(
        self, batch_id: str, task_id: str, *, with_events: bool = False
    ) -> TaskRecord | None: ...

    async def list_tasks(
        self, batch_id: str, *, status: TaskStatus | None = None, with_events: bool = False
    ) -> list[TaskRecord]:
        """Tasks in the order they were registered."""

    async def has_batch(self, batch_id: str) -> bool:
        """Whether the store has any task of the batch."""

    async def count_by_status(self, batch_id: str) -> dict[str, int]:
        """How many of the batch's tasks are in each status (statuses without tasks left out),
        in one query: what `status` shows when no worker answers the batch's query."""

    async def claim_batch(
        self, record: BatchRecord, *, replacing: str | None = None
    ) -> BatchRecord:
        """Keep `record` unless the store has a record of its batch; the record kept. With
        `replacing` (a fingerprint), a record with that fingerprint whose batch never started is
        deleted first, with the batch's tasks, events and turns, in the same transaction."""

    async def batch_record(self, batch_id: str) -> BatchRecord | None: ...

    async def mark_batch_started(self, batch_id: str, at: datetime) -> None:
        """Note that the batch's workflow was started (from then on its record stays)."""

    async def close(self) -> None: ...


class StoreBackendMissingError(RuntimeError):
    """The store URL names a backend whose driver is not installed."""


def _postgres_module() -> types.ModuleType:
    try:
        return importlib.import_module("taskpool.infra.store.postgres")
    except ModuleNotFoundError as err:
        if err.name not in {"psycopg", "psycopg_pool"}:
            raise
        raise StoreBackendMissingError(
            "a postgresql:// task store needs psycopg: pip install 'taskpool[postgres]'"
        ) from None


def is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def sqlite_path(url: str) -> Path:
    """The file of a SQLite store: a `sqlite:///path` URL or a plain path."""
    return Path(url.removeprefix("sqlite:///").removeprefix("sqlite://"))


def display_url(url: str) -> str:
    """`url` as messages may show it: no password."""
    if is_postgres(url):
        try:
            shown: str = _postgres_module().display_url(url)
        except StoreBackendMissingError:
            # Without the driver nothing parses the URL: show where, never the password.
            return url.split("@", 1)[-1] if "@" in url else url
        return shown
    return url


def store_errors() -> tuple[type[Exception], ...]:
    """What a store raises when its database cannot be reached, opened or written: the errors a
    command reports in a sentence, not a traceback."""
    errors: list[type[Exception]] = [OSError, sqlite3.Error, StoreBackendMissingError]
    try:
        import psycopg
    except ImportError:
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


def open_store(url: str) -> TaskStore:
    """A store for `url`: a `sqlite:///path` URL or a plain file path; `postgresql://...` where
    that backend is installed."""
    from taskpool.infra.store.sqlite import SqliteTaskStore

    if is_postgres(url):
        store: TaskStore = _postgres_module().PostgresTaskStore(url)
        return store
    return SqliteTaskStore(sqlite_path(url))


@contextlib.asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[TaskStore]:
    """The store at `url` (see open_store), closed on the way out."""
    store = open_store(url)
    try:
        yield store
    finally:
        await store.close()

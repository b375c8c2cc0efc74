"""The task store: the durable record of every task for people and exports.

The batch workflow decides what runs; the store remembers what happened. Every write is idempotent
(events are keyed, record fields are set, not incremented) because activities run at least once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

from taskpool.domain.records import RegisterTasksRequest, TaskRecord, TaskRecordUpdate
from taskpool.domain.tasks import TaskStatus


class TaskStore(Protocol):
    async def register_tasks(self, request: RegisterTasksRequest) -> None:
        """Insert task definitions with a `created` event (and one for the initial status).

        Registering a task id that the batch already has changes nothing.
        """

    async def apply(self, updates: Sequence[TaskRecordUpdate]) -> None:
        """Set the fields an update carries (None means unchanged) and add its events, all
        updates in one transaction.

        Events already present (same batch, task and key) are skipped, except those under the
        update's `replaces_events` key prefix, which it replaces. An `only_if_current` update is
        skipped, events and all, when its attempt is no longer the task's latest or the task is
        cancelled; any other update of a task the store does not have raises UnknownTaskError.
        """

    async def get_task(
        self, batch_id: str, task_id: str, *, with_events: bool = False
    ) -> TaskRecord | None: ...

    async def list_tasks(
        self, batch_id: str, *, status: TaskStatus | None = None, with_events: bool = False
    ) -> list[TaskRecord]:
        """Tasks in the order they were registered."""

    async def has_batch(self, batch_id: str) -> bool:
        """Whether the store has any task of the batch."""

    async def close(self) -> None: ...


def is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def sqlite_path(url: str) -> Path:
    """The file of a SQLite store: a `sqlite:///path` URL or a plain path."""
    return Path(url.removeprefix("sqlite:///").removeprefix("sqlite://"))


def display_url(url: str) -> str:
    """`url` as messages may show it: no password."""
    if is_postgres(url):
        from taskpool.infra.store.postgres import display_url as postgres_display_url

        return postgres_display_url(url)
    return url


def store_errors() -> tuple[type[Exception], ...]:
    """What a store raises when its database cannot be reached, opened or written: the errors a
    command reports in a sentence, not a traceback."""
    errors: list[type[Exception]] = [OSError, sqlite3.Error]
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
        from taskpool.infra.store.postgres import PostgresTaskStore

        return PostgresTaskStore(url)
    return SqliteTaskStore(sqlite_path(url))


@contextlib.asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[TaskStore]:
    """The store at `url` (see open_store), closed on the way out."""
    store = open_store(url)
    try:
        yield store
    finally:
        await store.close()

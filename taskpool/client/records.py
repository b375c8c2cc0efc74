"""A batch's records in the task store: a task with its events, the results, comments, and the
details (label, kind, tokens, times) the batch itself does not keep. None of this needs Temporal.

Every function takes the store's URL (a SQLite path or `postgresql://...`) and names it, without
its password, in the errors it raises.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from taskpool.client.errors import (
    BatchNotStoredError,
    InvalidRequestError,
    StoreNotFoundError,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskWaitTimeoutError,
)
from taskpool.domain.batch import TaskView
from taskpool.domain.records import TaskRecord, TaskRecordUpdate
from taskpool.domain.tasks import EventType, TaskEvent, TaskStatus
from taskpool.infra.store import (
    TaskStore,
    display_url,
    is_postgres,
    opened_store,
    sqlite_path,
    store_errors,
)
from taskpool.infra.store.common import UnknownTaskError

Access = Literal["read", "write to"]


def store_exists(url: str) -> bool:
    """Whether there is a store at `url` (a PostgreSQL store is taken to exist)."""
    return is_postgres(url) or sqlite_path(url).is_file()


def existing_store(url: str) -> str:
    """`url`, or StoreNotFoundError: opening a missing SQLite file would create an empty store,
    which would answer that it has no tasks."""
    if not store_exists(url):
        raise StoreNotFoundError(str(sqlite_path(url)))
    return url


@asynccontextmanager
async def store_at(url: str, access: Access) -> AsyncIterator[TaskStore]:
    """The store at `url`, closed afterwards; StoreUnavailableError when its database cannot be
    reached, read or written meanwhile."""
    try:
        async with opened_store(url) as store:
            yield store
    except store_errors() as err:
        raise StoreUnavailableError(
            f"cannot {access} the task store at {display_url(url)}: {err}"
        ) from None


@dataclass(frozen=True)
class OutcomeWait:
    """How task_record waits for a task's outcome: a look at its record every `interval` seconds,
    for at most `timeout` seconds (TaskWaitTimeoutError after that); `on_waiting` hears the record
    whenever the task's status has changed while it waits."""

    interval: float = 1.0
    timeout: float | None = None
    on_waiting: Callable[[TaskRecord], None] | None = None


async def task_record(
    url: str, batch_id: str, task_id: str, *, wait: OutcomeWait | None = None
) -> TaskRecord:
    """The task's record with its events; with `wait`, once the task has an outcome (completed,
    failed, cancelled, or a result in review)."""
    url = existing_store(url)
    async with store_at(url, "read") as store:
        if wait is not None:
            await _until_it_has_an_outcome(store, url, batch_id, task_id, wait)
        return await _stored_task(store, url, batch_id, task_id, with_events=True)


async def _stored_task(
    store: TaskStore, url: str, batch_id: str, task_id: str, *, with_events: bool
) -> TaskRecord:
    record = await store.get_task(batch_id, task_id, with_events=with_events)
    if record is None:
        raise TaskNotFoundError(display_url(url), batch_id, task_id)
    return record


async def _until_it_has_an_outcome(
    store: TaskStore, url: str, batch_id: str, task_id: str, wait: OutcomeWait
) -> None:
    """Looks at the record without its events, which only the final answer shows."""
    started = time.monotonic()
    last_status = None
    while True:
        record = await _stored_task(store, url, batch_id, task_id, with_events=False)
        if record.status.ends_attempt:
            return
        if record.status is not last_status:
            if wait.on_waiting is not None:
                wait.on_waiting(record)
            last_status = record.status
        if wait.timeout is not None and time.monotonic() - started >= wait.timeout:
            raise TaskWaitTimeoutError(
                f"task {record.task_id} of batch {record.batch_id} is still "
                f"{record.status.value} after {wait.timeout:g} s"
            )
        await asyncio.sleep(wait.interval)


async def stored_results(
    url: str, batch_id: str, status: TaskStatus | None = None
) -> list[TaskRecord]:
    """The batch's tasks (those with `status`, when given) in the order they were registered;
    BatchNotStoredError when the store has no task of the batch at all."""
    url = existing_store(url)
    async with store_at(url, "read") as store:
        records = await store.list_tasks(batch_id, status=status)
        # No tasks in one state is an answer; no tasks at all is a batch the store does not know.
        known = bool(records) or (status is not None and await store.has_batch(batch_id))
    if not known:
        raise BatchNotStoredError(display_url(url), batch_id)
    return records


async def add_comment(url: str, batch_id: str, task_id: str, text: str) -> TaskEvent:
    """Add a comment to the task's events, for people reading the task later."""
    text = text.strip()
    if not text:
        raise InvalidRequestError("the comment is empty")
    url = existing_store(url)
    event = TaskEvent(
        key=f"comment:{uuid.uuid4().hex}",
        type=EventType.COMMENT,
        at=datetime.now(UTC),
        message=text,
    )
    update = TaskRecordUpdate(batch_id=batch_id, task_id=task_id, events=[event])
    async with store_at(url, "write to") as store:
        try:
            await store.apply([update])
        except UnknownTaskError:
            raise TaskNotFoundError(display_url(url), batch_id, task_id) from None
    return event


async def with_store_details(url: str, batch_id: str, views: Sequence[TaskView]) -> list[TaskView]:
    """The batch keeps what scheduling needs; the store adds label, kind, tokens and times (when
    there is a store: without one the views are as the batch gave them)."""
    if not views or not store_exists(url):
        return list(views)
    async with store_at(url, "read") as store:
        records = {r.task_id: r for r in await store.list_tasks(batch_id)}
    return [_with_record(view, records.get(view.id)) for view in views]


def _with_record(view: TaskView, record: TaskRecord | None) -> TaskView:
    if record is None:
        return view
    return view.model_copy(
        update={
            "label": record.label,
            "kind": record.kind,
            "usage": record.usage,
            "llm_calls": record.llm_calls,
            "started_at": view.started_at or record.started_at,
            "completed_at": record.completed_at,
        }
    )

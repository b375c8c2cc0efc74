"""StoreQueue: the batch's writes to the task store, queued in the order they happened and written
in groups, a local activity per group.

The batch notes a status change where it makes it (cheaply, as a tuple), and a task's own last
write arrives ready-made in its outcome (`TaskOutcome.record`); both wait here until the run loop
flushes. Deterministic: the workflow passes the clock and the call that runs a local activity, and
tests pass fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from taskpool.domain import names
    from taskpool.domain.activity_options import STORE_WRITE_OPTIONS
    from taskpool.domain.records import RecordTasksRequest, RegisterTasksRequest, TaskRecordUpdate
    from taskpool.domain.task_columns import TaskRow
    from taskpool.domain.tasks import EventType, TaskError, TaskEvent, TaskSpec, TaskStatus

# Updates per local activity: each completion starts a new activation, so a large flush is spread
# over many rather than done in one, and no payload comes near Temporal's limits.
STORE_CHUNK = 500

StoreWrite = RecordTasksRequest | RegisterTasksRequest
# Runs one store-write activity (by name) to completion.
RunStoreWrite = Callable[[str, StoreWrite], Awaitable[None]]


async def run_local_store_write(activity: str, request: StoreWrite) -> None:
    """The queue's writer inside a workflow: a short, idempotent local activity."""
    await workflow.execute_local_activity(activity, request, **STORE_WRITE_OPTIONS)


class StoreQueue:
    def __init__(
        self,
        batch_id: str,
        *,
        now: Callable[[], datetime],
        write: RunStoreWrite = run_local_store_write,
        chunk: int = STORE_CHUNK,
    ) -> None:
        self._batch_id = batch_id
        self._now = now
        self._write = write
        self._chunk = chunk
        self._queued: list[_Change | TaskRecordUpdate] = []
        # One write at a time, so groups land in the order they were queued (a result put in
        # review must land before the same task is sent back), whoever flushes.
        self._writing = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._queued)

    def note(
        self,
        entries: Sequence[TaskRow],
        event: EventType | None = None,
        *,
        keep_result: bool = False,
    ) -> None:
        """Queue the writes for status changes the batch made itself, as they are now. A change
        becomes a model only when its group is written: cancelling or starting a large batch
        notes every task at once, inside one activation."""
        now = self._now()
        self._queued += [
            _Change(
                entry.id,
                entry.status,
                entry.retry_count,
                entry.attempts,
                entry.error,
                entry.status_reason,
                event if event is not None else EventType(entry.status.value),
                now,
                keep_result,
            )
            for entry in entries
        ]

    def add(self, update: TaskRecordUpdate) -> None:
        """Queue a write made elsewhere (a task's last write, carried by its outcome)."""
        self._queued.append(update)

    async def flush(self) -> None:
        """Write everything queued, oldest first, a group per activity; when it returns, every
        write queued before the call has landed."""
        async with self._writing:
            while self._queued:
                group = self._queued[: self._chunk]
                del self._queued[: self._chunk]
                updates = [
                    item if isinstance(item, TaskRecordUpdate) else item.update(self._batch_id)
                    for item in group
                ]
                await self._write(names.RECORD_TASKS, RecordTasksRequest(updates=updates))

    async def keep_flushing(
        self, wait_for: Callable[[Callable[[], bool]], Awaitable[None]]
    ) -> None:
        """Flush whenever something is queued, for as long as the batch runs.

        The run loop does not wait for the writes: what it decides never depends on when a
        local activity resolves, which differs between a first execution and a replay of the
        same history. `wait_for` is the workflow's wait_condition."""
        while True:
            await wait_for(lambda: bool(self._queued))
            await self.flush()

    async def write_now(self, updates: list[TaskRecordUpdate]) -> None:
        """Write `updates` at once, ahead of the queue (a retry's new inputs, which must be in
        the store before the retried tasks can queue)."""
        if updates:
            await self._write(names.RECORD_TASKS, RecordTasksRequest(updates=updates))

    async def register(self, specs: Sequence[TaskSpec], statuses: Mapping[str, TaskStatus]) -> None:
        """Put added tasks' definitions and first statuses in the store, a group per activity."""
        groups = RegisterTasksRequest.in_groups(
            self._batch_id, specs, statuses, self._now(), self._chunk
        )
        for request in groups:
            await self._write(names.REGISTER_TASKS, request)


def ended_by_batch(
    batch_id: str,
    entry: TaskRow,
    status: TaskStatus,
    at: datetime,
    *,
    error: TaskError | None = None,
    reason: str | None = None,
) -> TaskRecordUpdate:
    """The record of an attempt the batch ends on the task's behalf, for one that cannot write
    it: a child that never started, or one that never confirmed its cancellation."""
    change = _Change(
        entry.id,
        status,
        entry.retry_count,
        entry.attempts,
        error,
        reason,
        EventType(status.value),
        at,
    )
    return change.update(batch_id)


class _Change(NamedTuple):
    """A status change the batch made, as it was when noted, waiting for its store write."""

    task_id: str
    status: TaskStatus
    retry_count: int
    attempts: int
    error: TaskError | None
    reason: str | None
    event_type: EventType
    at: datetime
    keep_result: bool = False

    def update(self, batch_id: str) -> TaskRecordUpdate:
        return TaskRecordUpdate(
            batch_id=batch_id,
            task_id=self.task_id,
            status=self.status,
            retry_count=self.retry_count,
            error=self.error,
            completed_at=self.at if self.status.is_terminal else None,
            keep_result=self.keep_result,
            events=[
                TaskEvent(
                    key=f"batch:{self.retry_count}:{self.attempts}:{self.status.value}",
                    type=self.event_type,
                    at=self.at,
                    message=self.reason,
                )
            ],
        )

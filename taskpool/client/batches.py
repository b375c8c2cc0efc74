"""The batch workflow's own operations: start it (definitions to the store first), signal it,
update it and query it, one call each, raising what the Temporal SDK raises.

The typed layer of the client (`starting`, `steering`, `reading`) builds on these and turns the
SDK's errors into ClientErrors; tests and benchmarks use these directly.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy

from taskpool.client.errors import RequestError
from taskpool.domain import names
from taskpool.domain.batch import (
    BatchOptions,
    BatchResult,
    BatchRun,
    BatchStatus,
    TaskPage,
    TaskView,
)
from taskpool.domain.packing import pack
from taskpool.domain.records import RegisterTasksRequest
from taskpool.domain.requests import (
    AddTasksRequest,
    CancelRequest,
    CancelTasksRequest,
    PauseRequest,
    ResumeRequest,
    RetryTasksRequest,
    ReviewDecision,
    ReviewTasksRequest,
    SetConcurrencyRequest,
    TasksQuery,
)
from taskpool.domain.scheduling import MAX_TASKS_PER_BATCH, TaskTable
from taskpool.domain.task_columns import STATUS_BY_CODE, TaskColumns, TaskEntry
from taskpool.domain.tasks import TaskInput, TaskSpec, TaskStatus
from taskpool.infra.store import TaskStore, opened_store

T = TypeVar("T")

# Definitions go to the task store; the batch's start input and continue-as-new state carry only
# the packed per-task state (ids, status, priority, ...), whose payload Temporal caps at 2 MB.
# Starting at half that leaves room for what the state gains as the batch runs (errors, reasons).
MAX_START_BYTES = 1_000_000
REGISTER_CHUNK = 1000


class BatchTooLargeError(RequestError, ValueError):
    """The batch would not fit what one batch workflow can carry."""

    @classmethod
    def by_size(cls, size: int, tasks: int) -> BatchTooLargeError:
        per_task = max(size / max(tasks, 1), 0.001)
        fits = max(int(MAX_START_BYTES / per_task), 1)
        return cls(
            f"the batch's {tasks} tasks pack to {size / 1e6:.1f} MB of state, over the "
            f"{MAX_START_BYTES / 1e6:.0f} MB one batch can carry (long or random task ids take "
            f"the most room); split the file into batches of at most about {fits} tasks like these"
        )

    @classmethod
    def by_count(cls, tasks: int) -> BatchTooLargeError:
        return cls(
            f"the file has {tasks} tasks; one batch holds at most {MAX_TASKS_PER_BATCH}: split the "
            "file into several batches"
        )


def batch_run(tasks: Sequence[TaskSpec], options: BatchOptions | None = None) -> BatchRun:
    """The batch's start input with every task `pending`, for the batch's first run to settle
    (start_batch settles them itself); BatchTooLargeError when it would not fit Temporal's
    limits."""
    return _packed_run(TaskColumns.from_entries(_entries(tasks)), options, settled=False)


def _entries(tasks: Sequence[TaskSpec]) -> list[TaskEntry]:
    if len(tasks) > MAX_TASKS_PER_BATCH:
        raise BatchTooLargeError.by_count(len(tasks))
    return [TaskEntry.from_spec(spec) for spec in tasks]


def _packed_run(columns: TaskColumns, options: BatchOptions | None, *, settled: bool) -> BatchRun:
    run = BatchRun(tasks=pack(columns), options=options or BatchOptions(), registered=settled)
    size = len(run.model_dump_json())
    if size > MAX_START_BYTES:
        raise BatchTooLargeError.by_size(size, len(columns))
    return run


async def register_definitions(
    store: TaskStore,
    batch_id: str,
    tasks: Sequence[TaskSpec],
    first_status: Mapping[str, TaskStatus],
    at: datetime,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Write the batch's task definitions to the store, where its task workflows read them, each
    with its first status. Idempotent: a task the store already has for this batch is left as it
    is. `on_progress` hears how many are written after each group."""
    written = 0
    for request in RegisterTasksRequest.in_groups(
        batch_id, tasks, first_status, at, REGISTER_CHUNK
    ):
        await store.register_tasks(request)
        written += len(request.tasks)
        if on_progress is not None:
            on_progress(written)


@dataclass(frozen=True)
class PreparedBatch:
    """A batch checked against the limits and packed, ready for start_prepared: each task has
    its first status (queued, blocked or scheduled) by the workflow's own rule."""

    tasks: Sequence[TaskSpec]
    run: BatchRun
    first_status: Mapping[str, TaskStatus]
    at: datetime


def prepare_batch(tasks: Sequence[TaskSpec], options: BatchOptions | None = None) -> PreparedBatch:
    """BatchTooLargeError when the batch would not fit Temporal's limits; needs no server, so a
    starter can refuse a file before it connects anywhere."""
    table = TaskTable(_entries(tasks))
    at = datetime.now(UTC)
    # Registered with their first statuses, tasks start at the first run's first workflow task:
    # for a large batch, writing every first status from the workflow took tens of seconds before
    # any task ran.
    table.settle_pending(at)
    columns = table.columns
    run = _packed_run(columns, options, settled=True)
    first_status = {
        task_id: STATUS_BY_CODE[code]
        for task_id, code in zip(columns.ids, columns.status, strict=True)
    }
    return PreparedBatch(tasks, run, first_status, at)


async def start_batch(
    client: Client,
    batch_id: str,
    tasks: Sequence[TaskSpec],
    *,
    task_queue: str,
    store: TaskStore | str,
    options: BatchOptions | None = None,
    id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE,
) -> WorkflowHandle[object, BatchResult]:
    """Register the definitions in `store` (the workers' task store, or its URL), then start the
    batch workflow. `id_reuse_policy` REJECT_DUPLICATE refuses an id that a finished batch already
    used (its children's ids and store records would be shared)."""
    return await start_prepared(
        client,
        batch_id,
        prepare_batch(tasks, options),
        task_queue=task_queue,
        store=store,
        id_reuse_policy=id_reuse_policy,
    )


async def start_prepared(
    client: Client,
    batch_id: str,
    batch: PreparedBatch,
    *,
    task_queue: str,
    store: TaskStore | str,
    id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    on_progress: Callable[[int], None] | None = None,
) -> WorkflowHandle[object, BatchResult]:
    """start_batch for a batch prepared (checked and packed) beforehand; `on_progress` hears how
    many definitions are in the store as they are written."""
    opening = opened_store(store) if isinstance(store, str) else contextlib.nullcontext(store)
    async with opening as opened:
        await register_definitions(
            opened,
            batch_id,
            batch.tasks,
            batch.first_status,
            batch.at,
            on_progress=on_progress,
        )
    return await client.start_workflow(
        names.BATCH_WORKFLOW,
        batch.run,
        id=batch_id,
        task_queue=task_queue,
        result_type=BatchResult,
        id_reuse_policy=id_reuse_policy,
        static_summary=f"taskpool batch of {len(batch.tasks)} tasks",
    )


def batch_handle(client: Client, batch_id: str) -> WorkflowHandle[object, BatchResult]:
    return client.get_workflow_handle(batch_id, result_type=BatchResult)


async def batch_status(
    client: Client, batch_id: str, *, rpc_timeout: timedelta | None = None
) -> BatchStatus:
    """The batch's status, asked of the batch (a worker answers). `rpc_timeout` bounds the wait:
    without a worker the server holds the call until its own deadline (about 30 s)."""
    answer: BatchStatus = await batch_handle(client, batch_id).query(
        names.STATUS, result_type=BatchStatus, rpc_timeout=rpc_timeout
    )
    return answer


async def pause_batch(client: Client, batch_id: str, reason: str | None = None) -> None:
    await batch_handle(client, batch_id).signal(names.PAUSE, PauseRequest(reason=reason))


async def resume_batch(client: Client, batch_id: str) -> None:
    await batch_handle(client, batch_id).signal(names.RESUME, ResumeRequest())


async def cancel_batch(client: Client, batch_id: str, reason: str | None = None) -> None:
    await batch_handle(client, batch_id).signal(names.CANCEL, CancelRequest(reason=reason))


# --- Reading a batch ---------------------------------------------------------------------------

# A query needs a worker to answer it; without one the server holds the call until its own
# deadline (about 30 s). Readers that tell people so would rather hear sooner.
QUERY_TIMEOUT = timedelta(seconds=10)
TASK_PAGE_SIZE = 1000


async def task_page(
    client: Client,
    batch_id: str,
    *,
    status: TaskStatus | None = None,
    offset: int = 0,
    limit: int = 100,
    rpc_timeout: timedelta | None = QUERY_TIMEOUT,
) -> TaskPage:
    answer: TaskPage = await batch_handle(client, batch_id).query(
        names.TASKS,
        TasksQuery(status=status, offset=offset, limit=limit),
        result_type=TaskPage,
        rpc_timeout=rpc_timeout,
    )
    return answer


async def iter_tasks(
    client: Client, batch_id: str, *, status: TaskStatus | None = None
) -> AsyncIterator[TaskView]:
    """Every task of the batch (with `status`, when given), a page of queries at a time.

    Pages are read while the batch runs, so a task whose status changes between two pages may
    be seen twice or not at all when filtering by status.
    """
    offset = 0
    while True:
        page = await task_page(client, batch_id, status=status, offset=offset, limit=TASK_PAGE_SIZE)
        for view in page.items:
            yield view
        offset += len(page.items)
        if not page.items or offset >= page.total:
            return


# --- Changing a batch: updates are validated by the batch before they touch its history -------


# An update's payload is capped like any other (2 MB); added definitions and new inputs travel
# in groups well under that, each accepted or refused as a whole.
UPDATE_GROUP_BYTES = 500_000


async def add_tasks(client: Client, batch_id: str, tasks: Sequence[TaskSpec]) -> BatchStatus:
    """Add tasks to a running batch, in as many updates as their size needs. Tasks may depend on
    tasks of an earlier group, never a later one, since groups keep the given order."""
    handle = batch_handle(client, batch_id)
    answer: BatchStatus | None = None
    for group in _groups_by_size(tasks, lambda spec: len(spec.model_dump_json())):
        answer = await handle.execute_update(
            names.ADD_TASKS, AddTasksRequest(tasks=group), result_type=BatchStatus
        )
    if answer is None:
        raise ValueError("no tasks to add")
    return answer


def _groups_by_size(items: Sequence[T], size_of: Callable[[T], int]) -> list[list[T]]:
    """`items` in order, in groups of at most UPDATE_GROUP_BYTES (an item larger than that
    alone in its group)."""
    groups: list[list[T]] = []
    size = UPDATE_GROUP_BYTES
    for item in items:
        item_size = size_of(item)
        if size + item_size > UPDATE_GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item_size
    return groups


async def retry_tasks(
    client: Client,
    batch_id: str,
    *,
    task_ids: Sequence[str] = (),
    all_failed: bool = False,
    inputs: Mapping[str, TaskInput] | None = None,
) -> BatchStatus:
    """Queue failed tasks again: those named in `task_ids` or `inputs`, or every failed task. A
    task in `inputs` runs with its new input; those go in groups by size, each an update of its
    own, before the tasks retried as they were."""
    inputs = inputs or {}
    if all_failed and inputs:
        raise ValueError("retry every failed task or give new inputs for some, not both")
    requests = [
        RetryTasksRequest(task_ids=[task_id for task_id, _ in group], inputs=dict(group))
        for group in _groups_by_size(list(inputs.items()), _input_size)
    ]
    as_they_were = [task_id for task_id in task_ids if task_id not in inputs]
    if all_failed or as_they_were or not requests:
        requests.append(RetryTasksRequest(task_ids=as_they_were, all_failed=all_failed))
    handle = batch_handle(client, batch_id)
    *earlier, last = requests
    for request in earlier:
        await handle.execute_update(names.RETRY_TASKS, request)
    answer: BatchStatus = await handle.execute_update(
        names.RETRY_TASKS, last, result_type=BatchStatus
    )
    return answer


def _input_size(item: tuple[str, TaskInput]) -> int:
    task_id, new_input = item
    return len(task_id) + len(json.dumps(new_input))


async def review_tasks(
    client: Client,
    batch_id: str,
    decision: ReviewDecision,
    *,
    task_ids: Sequence[str] = (),
    all_in_review: bool = False,
    feedback: str | None = None,
) -> BatchStatus:
    """Approve results waiting in review, or send them back (with `feedback`, which the tasks'
    next attempts are shown beside their results)."""
    answer: BatchStatus = await batch_handle(client, batch_id).execute_update(
        names.REVIEW_TASKS,
        ReviewTasksRequest(
            task_ids=list(task_ids),
            all_in_review=all_in_review,
            decision=decision,
            feedback=feedback,
        ),
        result_type=BatchStatus,
    )
    return answer


async def cancel_tasks(
    client: Client, batch_id: str, task_ids: Sequence[str], reason: str | None = None
) -> BatchStatus:
    answer: BatchStatus = await batch_handle(client, batch_id).execute_update(
        names.CANCEL_TASKS,
        CancelTasksRequest(task_ids=list(task_ids), reason=reason),
        result_type=BatchStatus,
    )
    return answer


async def set_concurrency(client: Client, batch_id: str, concurrency: int) -> BatchStatus:
    answer: BatchStatus = await batch_handle(client, batch_id).execute_update(
        names.SET_CONCURRENCY,
        SetConcurrencyRequest(concurrency=concurrency),
        result_type=BatchStatus,
    )
    return answer

"""Reading a batch through Temporal: find it, ask its status and tasks, wait for its result.

A query needs a worker to answer; when none does within QUERY_TIMEOUT, the error says which task
queue wants one (NoWorkerError). `status_answer` does not wait that long: without a worker it
answers from what the batch published and the task store (taskpool.client.published). Every
error is a ClientError.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from taskpool.client import batches
from taskpool.client.errors import (
    QUERY_ERRORS,
    ClientError,
    NotABatchError,
    NoWorkerError,
    ended_error,
    query_error,
    rpc_error,
)
from taskpool.client.info import BatchInfo
from taskpool.client.published import StatusAnswer, published_status
from taskpool.client.records import with_store_details
from taskpool.domain import names
from taskpool.domain.batch import BatchResult, BatchStatus, TaskView
from taskpool.domain.tasks import TaskStatus

# How long `status_answer` waits for a worker to answer before it answers without one: a worker
# that runs answers in milliseconds, one that has just died would keep the caller waiting. With
# starter.py's start-up (about 0.7 s) and the reads without a worker, `status` answers in 2 s.
LIVE_STATUS_TIMEOUT = timedelta(seconds=1)


async def find_batch(client: Client, batch_id: str) -> BatchInfo:
    """The batch named `batch_id`; BatchNotFoundError when there is none, NotABatchError when
    the workflow of that id is something else."""
    try:
        description = await client.get_workflow_handle(batch_id).describe()
    except RPCError as err:
        raise rpc_error(err, batch_id, client) from None
    if description.workflow_type != names.BATCH_WORKFLOW:
        raise NotABatchError(batch_id, description.workflow_type)
    return BatchInfo(batch_id, description.task_queue, description.status)


async def read_status(client: Client, info: BatchInfo) -> BatchStatus:
    try:
        return await batches.batch_status(client, info.batch_id, rpc_timeout=batches.QUERY_TIMEOUT)
    except QUERY_ERRORS as err:
        raise query_error(err, info, client) from None


async def status_answer(
    client: Client,
    info: BatchInfo,
    store_url: str | None = None,
    *,
    live_timeout: timedelta = LIVE_STATUS_TIMEOUT,
) -> StatusAnswer:
    """The batch's status, live when a worker answers within `live_timeout`; otherwise what the
    batch last published with its counts from the task store at `store_url` (when given and
    readable), marked not live and how old. Other errors are raised as read_status raises them
    (an unknown batch, Temporal out of reach)."""
    try:
        # The deadline covers the SDK's retries too, which `rpc_timeout` bounds one by one.
        async with asyncio.timeout(live_timeout.total_seconds()):
            status = await batches.batch_status(client, info.batch_id, rpc_timeout=live_timeout)
    except TimeoutError:
        problem: ClientError = NoWorkerError(info, queried=True)
    except QUERY_ERRORS as err:
        problem = query_error(err, info, client)
        if not isinstance(problem, NoWorkerError):
            raise problem from None
    else:
        return StatusAnswer(status, datetime.now(UTC))
    return await published_status(client, info, store_url, why=str(problem), at=datetime.now(UTC))


async def read_tasks(
    client: Client, info: BatchInfo, status: TaskStatus | None = None, *, limit: int | None = None
) -> list[TaskView]:
    """The batch's tasks (with `status`, when given), or only the first `limit` of them. Read
    page by page while the batch runs: filtering by status, a task that changes between two
    pages may be seen twice or not at all."""
    try:
        if limit is not None:
            page = await batches.task_page(client, info.batch_id, status=status, limit=limit)
            return page.items
        return [view async for view in batches.iter_tasks(client, info.batch_id, status=status)]
    except QUERY_ERRORS as err:
        raise query_error(err, info, client) from None


async def read_tasks_with_details(
    client: Client, info: BatchInfo, store_url: str, status: TaskStatus | None = None
) -> list[TaskView]:
    """read_tasks, each with its label, kind, tokens and times from the task store at
    `store_url` (as the batch gives them when there is no store there)."""
    views = await read_tasks(client, info, status)
    return await with_store_details(store_url, info.batch_id, views)


async def wait_for_result(client: Client, info: BatchInfo) -> BatchResult:
    """The batch's result once it ends (following continue-as-new); BatchEndedError when its
    workflow ended without one (terminated, timed out, cancelled through Temporal)."""
    try:
        return await batches.batch_handle(client, info.batch_id).result()
    except WorkflowFailureError as err:
        raise ended_error(err, info.batch_id) from None
    except RPCError as err:
        raise rpc_error(err, info.batch_id, client) from None

"""A batch holds at most a million tasks: `add_tasks` is refused, before anything reaches history,
once a batch would hold more."""

from __future__ import annotations

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from taskpool.client.batches import add_tasks, batch_handle, batch_status
from taskpool.domain import names
from taskpool.domain.batch import BatchOptions, BatchResult, BatchRun, BatchState
from taskpool.domain.packing import pack
from taskpool.domain.scheduling import MAX_TASKS_PER_BATCH
from taskpool.domain.task_columns import PRIORITY_CODES, STATUS_CODES, TaskColumns
from taskpool.domain.tasks import Priority, TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore


def queued_columns(count: int) -> TaskColumns:
    """`count` queued tasks as the batch keeps them, built column by column: a million specs
    and their store records would cost the test a minute."""
    return TaskColumns(
        ids=[f"t{i}" for i in range(count)],
        status=bytearray([STATUS_CODES[TaskStatus.QUEUED]]) * count,
        priority=bytearray([PRIORITY_CODES[Priority.NORMAL]]) * count,
        attempts=[0] * count,
    )


async def test_adding_tasks_past_a_million_is_refused_and_up_to_it_accepted(
    client: Client, worker: Worker, settings: Settings, store: TaskStore, batch_id: str
) -> None:
    # One task short of the limit, paused from its start so that none of its tasks runs (their
    # definitions are not in the store); only its packed state is a million tasks large.
    run = BatchRun(
        tasks=pack(queued_columns(MAX_TASKS_PER_BATCH - 1)),
        options=BatchOptions(concurrency=1),
        paused=True,
        pause_reason="a full batch",
        registered=True,
    )
    handle = await client.start_workflow(
        names.BATCH_WORKFLOW,
        run,
        id=batch_id,
        task_queue=settings.task_queue,
        result_type=BatchResult,
    )
    try:
        status = await add_tasks(client, batch_id, [TaskSpec(id="last", input="The last one.")])
        assert status.total == MAX_TASKS_PER_BATCH
        assert status.state is BatchState.PAUSED
        assert [r.task_id for r in await store.list_tasks(batch_id)] == ["last"]

        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await add_tasks(client, batch_id, [TaskSpec(id="one-too-many", input="Over.")])
        cause = refused.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.message == (
            f"the batch has {MAX_TASKS_PER_BATCH} tasks and holds at most "
            f"{MAX_TASKS_PER_BATCH}; start another batch for these 1"
        )
        # Refused by the validator: the update never reached the batch's history.
        accepted = [
            event
            async for event in handle.fetch_history_events()
            if event.HasField("workflow_execution_update_accepted_event_attributes")
        ]
        assert len(accepted) == 1
        assert (await batch_status(client, batch_id)).total == MAX_TASKS_PER_BATCH
    finally:
        # Cancelling would write a million cancellations; the test only needs the batch gone.
        await batch_handle(client, batch_id).terminate(reason="test done")

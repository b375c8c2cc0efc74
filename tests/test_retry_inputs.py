"""A retry that brings a new input, racing the rest of the batch, on a PostgreSQL task store.

PostgreSQL lets the test hold up one task's store write (a lock on that task's row) while every
other write and read goes on, as with workers on several machines.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import psycopg
import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowUpdateStage
from temporalio.worker import Worker

from taskpool.client.batches import batch_status
from taskpool.domain import names
from taskpool.domain.batch import BatchState, BatchStatus, TaskView
from taskpool.domain.requests import RetryTasksRequest, TaskQuery
from taskpool.infra.settings import Settings
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import batch_with_a_failed_task

if TYPE_CHECKING:
    from tests.pg import PostgresServer

pytest_plugins = ["tests.pg"]


@pytest.fixture
def store_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database(f"retry_{uuid.uuid4().hex[:12]}")


async def test_a_retry_waits_for_its_new_input_and_the_batch_waits_for_the_retry(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    # "bad" fails at once; "hold" finishes a few seconds later, while the new input for "bad"
    # cannot be written yet. Then the batch has nothing left to run but must not end, and a
    # plain retry of "bad" accepted meanwhile must not queue it before its input is written
    # (its next turn would read the old one) nor a second time.
    handle = await batch_with_a_failed_task(client, settings, scripted, batch_id, hold_seconds=3)

    with psycopg.connect(settings.store_url) as blocker:
        blocker.execute(
            "SELECT 1 FROM tasks WHERE batch_id = %s AND task_id = 'bad' FOR UPDATE", (batch_id,)
        )
        with_input = await handle.start_update(
            names.RETRY_TASKS,
            RetryTasksRequest(task_ids=["bad"], inputs={"bad": "Legible."}),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=BatchStatus,
        )
        plain = await handle.start_update(
            names.RETRY_TASKS,
            RetryTasksRequest(task_ids=["bad"]),
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=BatchStatus,
        )
        status = await batch_status(client, batch_id)
        assert (status.counts["completed"], status.counts["failed"]) == (1, 1), status.counts
        blocker.rollback()

    await with_input.result()
    await plain.result()
    result = await handle.result()

    assert result.state is BatchState.COMPLETED
    assert result.counts["completed"] == 2
    view: TaskView = await handle.query(names.TASK, TaskQuery(task_id="bad"), result_type=TaskView)
    assert (view.retry_count, view.attempts) == (1, 2)
    first, again = scripted.records_for("bad")
    assert "Garbled." in json.dumps(first.body)
    assert "Legible." in json.dumps(again.body)
    history = await handle.fetch_history()
    failed_tasks = HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    assert not any(e.event_type == failed_tasks for e in history.events)

"""What a batch records when a task workflow ends without an outcome of its own, and what the
batch shows of its progress in the UI's list."""

from __future__ import annotations

import json

from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from taskpool.client.batches import batch_status, pause_batch, resume_batch
from taskpool.domain import names
from taskpool.domain.batch import BatchOptions, BatchState, TaskView
from taskpool.domain.requests import TaskQuery
from taskpool.domain.tasks import TaskStatus
from taskpool.infra.settings import Settings
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import documents, eventually, start_test_batch


async def test_a_terminated_task_workflow_fails_its_task_and_the_batch_goes_on(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    scripted.latency = 2.0
    handle = await start_test_batch(
        client, settings, batch_id, documents(3), BatchOptions(concurrency=1)
    )
    first = client.get_workflow_handle(f"{batch_id}/doc-0")

    async def running() -> None:
        assert (await batch_status(client, batch_id)).in_flight == 1
        # The batch counts a task in flight as soon as it asks for the child, a moment before
        # the server has created it.
        try:
            await first.describe()
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise AssertionError("the child is not created yet") from err
            raise

    await eventually(running)
    await first.terminate(reason="an operator stopped it")
    result = await handle.result()

    assert result.state is BatchState.FAILED
    assert result.counts["failed"] == 1
    assert result.counts["completed"] == 2
    view: TaskView = await handle.query(
        names.TASK, TaskQuery(task_id="doc-0"), result_type=TaskView
    )
    assert view.status is TaskStatus.FAILED
    assert view.error is not None
    assert view.error.code == "terminated"


async def test_the_progress_search_attribute_moves_in_steps_of_five(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    # 40 tasks: 2.5 % each, so steps of one percent would upsert on every report. The first 4
    # are held at the model until the batch is paused, so exactly they finish before the pause
    # holds the rest: the batch stands still at 10 %.
    scripted.hold_replies()
    handle = await start_test_batch(
        client, settings, batch_id, documents(40), BatchOptions(concurrency=4)
    )

    async def four_calls_held() -> None:
        assert scripted.in_flight == 4

    await eventually(four_calls_held)
    await pause_batch(client, batch_id, reason="look at the list")

    async def pause_delivered() -> None:
        status = await batch_status(client, batch_id)
        assert status.paused
        assert status.pause_delivered

    await eventually(pause_delivered)
    scripted.release_replies()

    async def four_done_and_shown() -> None:
        status = await batch_status(client, batch_id)
        assert (status.counts["completed"], status.in_flight) == (4, 0)
        assert status.progress_percent == 10.0
        listed = (await handle.describe()).typed_search_attributes
        assert listed.get(names.BATCH_PROGRESS_ATTRIBUTE) == 10

    await eventually(four_done_and_shown)
    await resume_batch(client, batch_id)
    result = await handle.result()
    assert result.counts["completed"] == 40

    progress: list[int] = []
    async for event in handle.fetch_history_events():
        if event.event_type == HistoryEventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            payload = fields.indexed_fields[names.BATCH_PROGRESS_ATTRIBUTE.name]
            progress.append(json.loads(payload.data))
    assert progress[-1] == 100
    assert all(value % 5 == 0 for value in progress)
    assert progress == sorted(progress)
    assert 10 in progress

"""Pause, resume, cancel and continue-as-new on a running batch, through a real dev server."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.api.enums.v1 import WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.worker import Worker

from taskpool.client.batches import (
    UPDATE_GROUP_BYTES,
    add_tasks,
    batch_status,
    cancel_batch,
    pause_batch,
    resume_batch,
)
from taskpool.domain import names
from taskpool.domain.batch import BatchOptions, BatchState, TaskPage
from taskpool.domain.requests import AddTasksRequest, TasksQuery
from taskpool.domain.tasks import EventType, TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import (
    documents,
    eventually,
    start_test_batch,
    wait_until_child_cancelled,
)
from workflows.batch import CANCEL_GROUP


async def test_pause_stops_new_model_calls_until_resume(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    scripted.latency = 0.3
    # The first three calls are held until the pause has reached their tasks: they finish, and
    # the other twelve stay queued.
    scripted.hold_replies()
    handle = await start_test_batch(
        client, settings, batch_id, documents(15), BatchOptions(concurrency=3)
    )

    async def three_calls_held() -> None:
        assert scripted.in_flight == 3

    await eventually(three_calls_held)
    await pause_batch(client, batch_id, reason="quota check")

    async def pause_delivered() -> None:
        status = await batch_status(client, batch_id)
        assert status.paused
        assert status.pause_delivered

    await eventually(pause_delivered)
    scripted.release_replies()

    async def drained() -> None:
        status = await batch_status(client, batch_id)
        assert status.paused
        assert status.state is BatchState.PAUSED
        assert status.pause_reason == "quota check"
        assert status.pause_delivered
        # A child started just before the pause may hold its slot, paused before its first turn.
        assert scripted.in_flight == 0

    await eventually(drained)
    at_pause = await batch_status(client, batch_id)
    requests_when_paused = scripted.total_requests
    # Absence of calls can only be observed over a window: nothing may start within it.
    await asyncio.sleep(1.5)
    status = await batch_status(client, batch_id)
    assert scripted.total_requests == requests_when_paused
    assert status.counts["queued"] == at_pause.counts["queued"] > 0
    assert status.counts["completed"] == requests_when_paused
    assert (status.counts["queued"], status.counts["completed"]) == (12, 3)

    await resume_batch(client, batch_id)
    result = await handle.result()
    assert result.state is BatchState.COMPLETED
    assert result.counts["completed"] == 15
    assert scripted.total_requests == 15


async def test_pause_holds_a_multi_turn_task_between_turns(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    from taskpool.testing.scripted import Reply, ToolCallSpec

    # The first turn only starts the task; the second would complete it. The first is held
    # until the pause has reached the task, so that the pause lands between the two turns.
    scripted.hold_replies()
    scripted.script("slow", Reply(tool_calls=[ToolCallSpec("start_task", {})]))
    handle = await start_test_batch(client, settings, batch_id, [TaskSpec(id="slow", input="text")])

    async def first_turn_running() -> None:
        assert scripted.in_flight == 1

    await eventually(first_turn_running)
    await pause_batch(client, batch_id)

    async def pause_delivered() -> None:
        status = await batch_status(client, batch_id)
        assert status.paused
        assert status.pause_delivered

    await eventually(pause_delivered)
    scripted.release_replies()

    async def first_turn_answered() -> None:
        (first,) = scripted.records_for("slow")
        assert first.status == 200
        assert scripted.in_flight == 0

    await eventually(first_turn_answered)
    # Absence of a second call can only be observed over a window.
    await asyncio.sleep(1.5)
    assert scripted.total_requests == 1
    await resume_batch(client, batch_id)
    result = await handle.result()
    assert result.counts["completed"] == 1
    assert scripted.total_requests == 2


async def test_cancel_stops_running_children_and_cancels_queued_tasks(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.latency = 30  # every call hangs until cancelled
    handle = await start_test_batch(
        client, settings, batch_id, documents(8), BatchOptions(concurrency=3)
    )

    async def three_calls_running() -> None:
        assert scripted.in_flight == 3

    await eventually(three_calls_running)
    await cancel_batch(client, batch_id, reason="wrong prompt")
    result = await handle.result()

    assert result.state is BatchState.CANCELLED
    assert result.counts["cancelled"] == 8
    page = await handle.query(names.TASKS, TasksQuery(), result_type=TaskPage)
    reasons = Counter(view.status_reason for view in page.items)
    assert reasons == {"wrong prompt": 8}
    for view in page.items:
        if view.attempts:
            await wait_until_child_cancelled(client, f"{batch_id}/{view.id}")
    assert sum(1 for view in page.items if view.attempts) == 3
    records = await store.list_tasks(batch_id, with_events=True)
    assert {r.status for r in records} == {TaskStatus.CANCELLED}
    assert all(r.events[-1].type is EventType.CANCELLED for r in records)
    assert scripted.total_requests == 3


async def test_cancelling_more_tasks_than_one_group_reaches_every_task(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    # The batch writes what a cancellation did to the store between groups of tasks, so that a
    # batch of a million cancels in many workflow tasks; every task must still be reached once.
    scripted.latency = 30
    count = CANCEL_GROUP + 1_500
    specs = [TaskSpec(id=f"t{i:05d}", input="x") for i in range(count)]
    handle = await start_test_batch(client, settings, batch_id, specs, BatchOptions(concurrency=2))

    async def two_calls_running() -> None:
        assert scripted.in_flight == 2

    await eventually(two_calls_running)
    await cancel_batch(client, batch_id, reason="too many")
    result = await handle.result()

    assert result.counts["cancelled"] == count
    records = await store.list_tasks(batch_id, with_events=True)
    assert len(records) == count
    assert {r.status for r in records} == {TaskStatus.CANCELLED}
    cancelled_events = Counter(
        sum(1 for e in r.events if e.type is EventType.CANCELLED) for r in records
    )
    assert cancelled_events == {1: count}
    # No workflow task of the batch failed, as one that ran past the deadlock timeout would.
    # The one failure Temporal causes in any batch is allowed: a cancelled child's report that
    # arrives as the batch completes a workflow task makes the server refuse that completion
    # (UNHANDLED_COMMAND), and the SDK retries it at once.
    history = await handle.fetch_history()
    causes = Counter(
        WorkflowTaskFailedCause.Name(e.workflow_task_failed_event_attributes.cause)
        for e in history.events
        if e.event_type == HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    )
    assert set(causes) <= {"WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND"}, causes
    timed_out = HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT
    assert not any(e.event_type == timed_out for e in history.events)
    assert scripted.total_requests == 2


async def test_request_cancellation_from_temporal_behaves_like_cancel(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    scripted.latency = 30
    handle = await start_test_batch(
        client, settings, batch_id, documents(4), BatchOptions(concurrency=2)
    )

    async def two_calls_running() -> None:
        assert scripted.in_flight == 2

    await eventually(two_calls_running)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    status = await batch_status(client, batch_id)
    assert status.state is BatchState.CANCELLED
    assert status.counts["cancelled"] == 4
    assert status.in_flight == 0


async def test_continue_as_new_mid_batch_loses_and_repeats_nothing(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.latency = 0.1
    specs = documents(25)
    handle = await start_test_batch(
        client, settings, batch_id, specs, BatchOptions(concurrency=4, continue_as_new_after=5)
    )
    result = await handle.result()
    assert result.counts["completed"] == 25
    status = await batch_status(client, batch_id)
    # A run continues after 5 reports plus whatever its hand-over brings in (up to 4 more).
    assert status.run_number >= 3
    assert Counter(r.task_key for r in scripted.requests) == {
        f"{batch_id}/{spec.id}": 1 for spec in specs
    }
    records = await store.list_tasks(batch_id, with_events=True)
    assert len(records) == 25
    for record in records:
        assert record.status is TaskStatus.COMPLETED
        assert [e.type for e in record.events].count(EventType.COMPLETED) == 1


async def test_a_large_addition_goes_in_groups_and_every_definition_reaches_the_store(
    client: Client, worker: Worker, settings: Settings, store: TaskStore, batch_id: str
) -> None:
    handle = await start_test_batch(client, settings, batch_id, documents(1))
    await pause_batch(client, batch_id, reason="adding")
    text = "lorem ipsum " * 400
    added = [TaskSpec(id=f"extra-{i}", input=f"{i}: {text}") for i in range(300)]
    # About 1.4 MB of definitions: more than one update should carry.
    assert len(AddTasksRequest(tasks=added).model_dump_json()) > 2 * UPDATE_GROUP_BYTES

    status = await add_tasks(client, batch_id, added)

    assert status.total == 301
    assert status.counts["queued"] >= 300
    records = {r.task_id: r for r in await store.list_tasks(batch_id)}
    assert all(records[spec.id].input == spec.input for spec in added)
    updates = [
        event
        async for event in handle.fetch_history_events()
        if event.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert len(updates) >= 3
    await cancel_batch(client, batch_id, reason="test done")
    await handle.result()

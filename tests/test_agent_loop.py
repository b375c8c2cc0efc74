"""The task agent loop end to end: tools applied in order, nudges, failures, provider retries, and
the lifecycle events each task leaves in the store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.llm import LlmActivities
from activities.store_writes import LifecycleActivities
from taskpool.client.batches import batch_status
from taskpool.domain import names
from taskpool.domain.batch import BatchState, TaskOutcome, TaskRunInput
from taskpool.domain.records import RegisterTasksRequest
from taskpool.domain.tasks import EventType, TaskSpec, TaskStatus
from taskpool.domain.turns import ChatTurnRequest, ChatTurnResult
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import Fault, Reply, ScriptedModelServer, ToolCallSpec
from tests.support import marker_names, start_test_batch
from worker import build_openai_client
from workflows.task import TaskWorkflow


async def run_batch(
    client: Client, settings: Settings, batch_id: str, *task_ids: str
) -> tuple[BatchState, dict[str, int]]:
    specs = [TaskSpec(id=t, input=f"Some text for {t} to summarise.") for t in task_ids]
    handle = await start_test_batch(client, settings, batch_id, specs)
    result = await handle.result()
    return result.state, result.counts


def sent_messages(scripted: ScriptedModelServer, task_key: str, *, turn: int) -> list[Any]:
    """The messages the model received on a task's n-th request."""
    body = scripted.records_for(task_key)[turn - 1].body
    assert body is not None
    messages = body["messages"]
    assert isinstance(messages, list)
    return messages


async def register_one(store: TaskStore, batch_id: str, task_id: str) -> None:
    """A task in the store as a batch registers it, for tests that run its workflow alone."""
    await store.register_tasks(
        RegisterTasksRequest(
            batch_id=batch_id,
            tasks=[TaskSpec(id=task_id, input="Some text to summarise.")],
            initial_status={task_id: TaskStatus.ASSIGNED},
            at=datetime.now(UTC),
        )
    )


async def test_every_task_leaves_its_lifecycle_in_the_store(
    client: Client, worker: Worker, settings: Settings, store: TaskStore, batch_id: str
) -> None:
    await run_batch(client, settings, batch_id, "doc")
    record = await store.get_task(batch_id, "doc", with_events=True)
    assert record is not None
    assert [e.type for e in record.events] == [
        EventType.CREATED,
        EventType.QUEUED,
        EventType.ASSIGNED,
        EventType.STARTED,
        EventType.PROGRESS,
        EventType.COMPLETED,
    ]
    times = [e.at for e in record.events]
    assert times == sorted(times)
    assert record.progress.percent == 100
    assert record.duration_seconds is not None


async def test_a_simple_tasks_one_model_turn_records_it_without_a_store_step(
    client: Client, worker: Worker, settings: Settings, store: TaskStore, batch_id: str
) -> None:
    await run_batch(client, settings, batch_id, "doc")

    history = await client.get_workflow_handle(f"{batch_id}/doc").fetch_history()
    scheduled = [
        e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
    ]
    markers = marker_names(history)
    assert len(scheduled) == 1
    # No local activity wrote the store after the turn.
    assert markers == []
    record = await store.get_task(batch_id, "doc", with_events=True)
    assert record is not None
    assert record.status is TaskStatus.COMPLETED
    assert record.llm_calls == 1
    assert [e.key for e in record.events][-4:] == ["1:1", "1:t1:2", "1:t1:3", "1:t1:4"]


async def test_a_child_started_before_turns_recorded_themselves_still_records_each_turn(
    client: Client, worker: Worker, settings: Settings, store: TaskStore, batch_id: str
) -> None:
    # What a batch started by an earlier release hands a new worker: no turns_record_themselves
    # in the child's input. The child writes the store itself, as its history expects.
    await register_one(store, batch_id, "old")
    outcome = await client.execute_workflow(
        names.TASK_WORKFLOW,
        TaskRunInput(batch_id=batch_id, task_id="old"),
        id=f"{batch_id}/old",
        task_queue=settings.task_queue,
        result_type=TaskOutcome,
    )

    assert outcome.status is TaskStatus.COMPLETED
    history = await client.get_workflow_handle(f"{batch_id}/old").fetch_history()
    markers = marker_names(history)
    assert markers == ["core_local_activity"]
    record = await store.get_task(batch_id, "old", with_events=True)
    assert record is not None
    assert record.status is TaskStatus.COMPLETED
    assert record.result
    assert [e.key for e in record.events][-4:] == ["1:1", "1:2", "1:3", "1:4"]


async def test_a_turn_recorded_but_never_received_leaves_no_trace_in_the_store(
    client: Client, settings: Settings, store: TaskStore, batch_id: str
) -> None:
    # The turn's activity applies and records the model's complete_task, then its completion is
    # lost: the workflow sees a failed turn, and the store must say what the workflow decided.
    await register_one(store, batch_id, "lost")
    llm_client = build_openai_client(settings)
    real = LlmActivities(llm_client, default_model=settings.model, store=store)

    @activity.defn(name=names.CHAT_TURN)
    async def turn_whose_completion_is_lost(request: ChatTurnRequest) -> ChatTurnResult:
        await real.chat_turn(request)
        raise ApplicationError("the reply was lost", type="lost", non_retryable=True)

    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[TaskWorkflow],
        activities=[turn_whose_completion_is_lost, LifecycleActivities(store).record_tasks],
    )
    try:
        async with worker:
            outcome = await client.execute_workflow(
                names.TASK_WORKFLOW,
                TaskRunInput(batch_id=batch_id, task_id="lost", turns_record_themselves=True),
                id=f"{batch_id}/lost",
                task_queue=settings.task_queue,
                result_type=TaskOutcome,
            )
    finally:
        await llm_client.close()

    assert outcome.status is TaskStatus.FAILED
    record = await store.get_task(batch_id, "lost", with_events=True)
    assert record is not None
    assert record.status is TaskStatus.FAILED
    assert record.error is not None
    assert record.error.code == "lost"
    assert record.result is None
    assert [(e.key, e.type) for e in record.events][-3:] == [
        ("1:1", EventType.ASSIGNED),
        ("1:2", EventType.STARTED),
        ("1:3", EventType.FAILED),
    ]


async def test_a_model_that_stops_is_nudged_once_then_the_task_fails(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.script("quiet", Reply(content="Here is a summary."), Reply(content="Done."))
    scripted.script("late", Reply(content="Thinking..."))
    state, counts = await run_batch(client, settings, batch_id, "quiet", "late")

    assert state is BatchState.FAILED
    assert counts["failed"] == 1
    assert counts["completed"] == 1
    quiet = await store.get_task(batch_id, "quiet")
    assert quiet is not None
    assert quiet.status is TaskStatus.FAILED
    assert quiet.error is not None
    assert quiet.error.code == "no_result"
    assert "even after being reminded" in quiet.error.message
    nudge = sent_messages(scripted, f"{batch_id}/quiet", turn=2)[-1]
    assert nudge["role"] == "user"
    assert "complete_task" in nudge["content"]
    # The reminded model completed on its second turn.
    assert len(scripted.records_for(f"{batch_id}/late")) == 2
    status = await batch_status(client, batch_id)
    assert [view.id for view in status.recent_errors] == ["quiet"]


async def test_fail_task_and_bad_tool_calls(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.script("hopeless", Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "empty"})]))
    scripted.script(
        "confused",
        Reply(tool_calls=[ToolCallSpec("delete_everything", {}), ToolCallSpec("start_task", {})]),
    )
    state, counts = await run_batch(client, settings, batch_id, "hopeless", "confused")

    assert state is BatchState.FAILED
    assert counts["failed"] == 1
    assert counts["completed"] == 1
    hopeless = await store.get_task(batch_id, "hopeless")
    assert hopeless is not None
    assert hopeless.error is not None
    assert hopeless.error.code == "agent_failed"
    assert hopeless.error.message == "empty"
    second_turn = sent_messages(scripted, f"{batch_id}/confused", turn=2)
    tool_replies = [m["content"] for m in second_turn if m["role"] == "tool"]
    assert "no tool named 'delete_everything'" in tool_replies[0]
    assert tool_replies[1] == "task started"


async def test_rate_limits_and_server_errors_are_retried_by_temporal(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.script("busy", Fault.rate_limit(retry_after=2), Fault.server_error(500))
    state, _ = await run_batch(client, settings, batch_id, "busy")

    assert state is BatchState.COMPLETED
    calls = scripted.records_for(f"{batch_id}/busy")
    assert [c.status for c in calls] == [429, 500, 200]
    assert calls[1].received_at - calls[0].received_at >= 2.0
    record = await store.get_task(batch_id, "busy")
    assert record is not None
    assert record.llm_calls == 1


async def test_a_permanent_provider_error_fails_the_task_with_the_reason(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.script("too-long", Fault.status(400, error_code="context_length_exceeded"))
    state, counts = await run_batch(client, settings, batch_id, "too-long")

    assert state is BatchState.FAILED
    assert counts["failed"] == 1
    assert len(scripted.records_for(f"{batch_id}/too-long")) == 1
    record = await store.get_task(batch_id, "too-long")
    assert record is not None
    assert record.error is not None
    assert record.error.code == "context_length_exceeded"
    assert "HTTP 400" in record.error.message

"""The task agent loop end to end: tools applied in order, nudges, failures, provider retries, and
the lifecycle events each task leaves in the store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType as E
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.llm.turn import LlmActivities
from activities.store_writes import LifecycleActivities
from taskpool.client.batches import batch_status
from taskpool.domain import agents, names
from taskpool.domain.batch import BatchState, TaskOutcome, TaskRunInput
from taskpool.domain.records import RegisterTasksRequest
from taskpool.domain.tasks import EventType, TaskSpec, TaskStatus
from taskpool.domain.turns import TurnReply, TurnRequest
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


async def test_a_simple_task_is_one_activity_and_eleven_events(
    client: Client, worker: Worker, settings: Settings, store: TaskStore, batch_id: str
) -> None:
    await run_batch(client, settings, batch_id, "doc")

    history = await client.get_workflow_handle(f"{batch_id}/doc").fetch_history()
    # Started; a workflow task schedules the turn; the turn; a workflow task applies its tool
    # calls and completes with the attempt's last store write, which the batch queues.
    assert [e.event_type for e in history.events] == [
        E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        E.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        E.EVENT_TYPE_ACTIVITY_TASK_STARTED,
        E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
        E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        E.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    ]
    # No local activity wrote the store.
    assert marker_names(history) == []
    record = await store.get_task(batch_id, "doc", with_events=True)
    assert record is not None
    assert record.status is TaskStatus.COMPLETED
    assert record.llm_calls == 1
    assert [e.key for e in record.events][-4:] == ["1:1", "1:2", "1:3", "1:4"]


async def test_a_turn_kept_but_never_received_leaves_no_result_in_the_store(
    client: Client, settings: Settings, store: TaskStore, batch_id: str
) -> None:
    # The turn's activity keeps the model's complete_task reply under its turn, then its
    # completion is lost: the workflow sees a failed turn, and the store must say what the
    # workflow decided.
    await register_one(store, batch_id, "lost")
    llm_client = build_openai_client(settings)
    real = LlmActivities(llm_client, store=store, default_model=settings.model)

    @activity.defn(name=names.CHAT_TURN)
    async def turn_whose_completion_is_lost(request: TurnRequest) -> TurnReply:
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
                TaskRunInput(batch_id=batch_id, task_id="lost"),
                id=f"{batch_id}/lost",
                task_queue=settings.task_queue,
                result_type=TaskOutcome,
            )
    finally:
        await llm_client.close()

    assert outcome.status is TaskStatus.FAILED
    kept = await store.conversation(batch_id, "lost", 1, before_turn=2)
    assert kept is not None
    assert kept.turns[0].result
    # The attempt's last write, as the batch queues it.
    assert outcome.record is not None
    await store.apply([outcome.record])
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


async def test_each_turn_rebuilds_the_conversation_from_the_store(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.script(
        "slow",
        Reply(
            content="Let me read it.",
            tool_calls=[
                ToolCallSpec("start_task", {}),
                ToolCallSpec("report_progress", {"percent": 30, "step": "reading"}),
            ],
        ),
        Reply(content="Hmm."),
    )
    state, _ = await run_batch(client, settings, batch_id, "slow")

    assert state is BatchState.COMPLETED
    third = sent_messages(scripted, f"{batch_id}/slow", turn=3)
    assert [(m["role"], m["content"]) for m in third[2:]] == [
        ("assistant", "Let me read it."),
        ("tool", "task started"),
        ("tool", "progress recorded"),
        ("assistant", "Hmm."),
        ("user", agents.NUDGE),
    ]
    assert [c["function"]["name"] for c in third[2]["tool_calls"]] == [
        "start_task",
        "report_progress",
    ]
    assert sent_messages(scripted, f"{batch_id}/slow", turn=2) == third[:5]
    stored = await store.conversation(batch_id, "slow", 1, before_turn=4)
    assert stored is not None
    assert [len(t.messages) for t in stored.turns] == [1, 3, 2]
    record = await store.get_task(batch_id, "slow")
    assert record is not None
    assert record.result == stored.turns[-1].result == scripted.completions[f"{batch_id}/slow"][-1]
    assert record.llm_calls == 3


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
    # The turn that took three tries keeps one reply, the one whose result the task has.
    stored = await store.conversation(batch_id, "busy", 1, before_turn=99)
    assert stored is not None
    (kept,) = stored.turns
    assert kept.result == record.result == scripted.completions[f"{batch_id}/busy"][-1]


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

"""The LLM activity against a real HTTP server through the real openai client: what Temporal is
told to do about each kind of provider trouble."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from taskpool.infra.store.sqlite import SqliteTaskStore
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.llm import LlmActivities, retry_after
from taskpool.domain import agents
from taskpool.domain.ledger import TaskLedger
from taskpool.domain.records import RegisterTasksRequest, TaskRecordUpdate
from taskpool.domain.tasks import EventType, TaskEvent, TaskSpec, TaskStatus
from taskpool.domain.turns import ChatTurnRequest, DefinitionRef, TurnLifecycle
from taskpool.infra.settings import Settings
from taskpool.testing.scripted import Fault, Reply, ScriptedModelServer, ToolCallSpec
from worker import build_openai_client


def worker_client(scripted: ScriptedModelServer) -> openai.AsyncOpenAI:
    # The client exactly as worker.py builds it (its transport included), so what these tests
    # see of each provider error is what a worker sees.
    return build_openai_client(
        Settings.from_env({"OPENAI_BASE_URL": scripted.base_url, "OPENAI_API_KEY": "test"})
    )


@pytest.fixture
async def llm(scripted: ScriptedModelServer) -> AsyncIterator[LlmActivities]:
    client = worker_client(scripted)
    try:
        yield LlmActivities(client, default_model="scripted-model")
    finally:
        await client.close()


def turn(task_id: str = "doc-1", timeout: float = 5.0) -> ChatTurnRequest:
    spec = TaskSpec(id=task_id, input="A short text to summarise.")
    return ChatTurnRequest(
        task_key=f"batch/{task_id}",
        turn=1,
        messages=agents.first_messages(spec),
        tools=list(agents.LIFECYCLE_TOOLS),
        timeout_seconds=timeout,
    )


async def test_a_reply_with_several_tool_calls_comes_back_in_order(
    llm: LlmActivities, scripted: ScriptedModelServer
) -> None:
    result = await ActivityEnvironment().run(llm.chat_turn, turn())
    assert [c.name for c in result.tool_calls] == ["start_task", "report_progress", "complete_task"]
    assert result.tool_calls[1].arguments == {"percent": 50, "step": "summarising"}
    assert result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens > 0
    assert result.model == "scripted-model"
    record = scripted.requests[0]
    assert record.task_key == "batch/doc-1"
    assert record.turn == 1
    assert record.body is not None
    assert record.body["model"] == "scripted-model"


async def test_rate_limit_is_retryable_after_the_servers_delay(
    llm: LlmActivities, scripted: ScriptedModelServer
) -> None:
    scripted.script("doc-1", Fault.rate_limit(retry_after=7))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(llm.chat_turn, turn())
    assert not raised.value.non_retryable
    assert raised.value.next_retry_delay == timedelta(seconds=7)
    assert raised.value.type == "http_429"


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409])
async def test_server_trouble_is_retryable(
    llm: LlmActivities, scripted: ScriptedModelServer, status: int
) -> None:
    scripted.script("doc-1", Fault.server_error(status=status))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(llm.chat_turn, turn())
    assert not raised.value.non_retryable
    assert f"HTTP {status}" in str(raised.value)


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, None), (401, None), (404, None), (400, "context_length_exceeded")],
)
async def test_client_errors_are_not_retried(
    llm: LlmActivities, scripted: ScriptedModelServer, status: int, code: str | None
) -> None:
    scripted.script("doc-1", Fault.status(status, error_code=code, message="nope"))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(llm.chat_turn, turn())
    assert raised.value.non_retryable
    assert "nope" in str(raised.value)


async def test_a_hung_model_times_out_retryably(
    llm: LlmActivities, scripted: ScriptedModelServer
) -> None:
    scripted.script("doc-1", Fault.hang(10))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(llm.chat_turn, turn(timeout=0.5))
    assert not raised.value.non_retryable
    assert raised.value.type in {"timeout", "connection"}


async def test_an_unreadable_reply_is_retryable(
    llm: LlmActivities, scripted: ScriptedModelServer
) -> None:
    scripted.script("doc-1", Fault.malformed())
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(llm.chat_turn, turn())
    assert not raised.value.non_retryable
    assert raised.value.type == "bad_reply"


async def test_content_filter_is_final(llm: LlmActivities, scripted: ScriptedModelServer) -> None:
    scripted.script("doc-1", Reply(content="", finish_reason="content_filter"))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(llm.chat_turn, turn())
    assert raised.value.non_retryable


async def test_arguments_that_are_not_json_are_reported_not_raised(
    llm: LlmActivities, scripted: ScriptedModelServer
) -> None:
    scripted.script(
        "doc-1", Reply(tool_calls=[ToolCallSpec("complete_task", raw_arguments="{oops")])
    )
    result = await ActivityEnvironment().run(llm.chat_turn, turn())
    assert result.tool_calls[0].arguments_error is not None


def test_retry_after_forms() -> None:
    assert retry_after({"retry-after-ms": "1500"}) == timedelta(milliseconds=1500)
    assert retry_after({"retry-after": "3"}) == timedelta(seconds=3)
    assert retry_after({}) is None
    assert retry_after({"retry-after": "soon"}) is None
    date = retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert date == timedelta(0)


async def test_heartbeats_only_while_the_model_takes_longer_than_the_interval(
    scripted: ScriptedModelServer,
) -> None:
    # Each heartbeat is a write on the server, and the start already counts as one: a reply
    # within the interval sends none, a slower one beats while it waits.
    client = worker_client(scripted)
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    try:
        quick = LlmActivities(client, default_model="scripted-model", heartbeat_every=2.0)
        await env.run(quick.chat_turn, turn())
        assert beats == []
        scripted.latency = 0.5
        slow = LlmActivities(client, default_model="scripted-model", heartbeat_every=0.1)
        await env.run(slow.chat_turn, turn())
        assert len(beats) >= 2
    finally:
        await client.close()


# --- a task's turn records its own tool calls -----------------------------------------------------


def task_turn(
    task_id: str,
    started_at: datetime,
    *,
    attempt: int = 1,
    review: bool = False,
    rework_feedback: str | None = None,
) -> ChatTurnRequest:
    """Turn 1 of a task as TaskWorkflow sends it: the definition by reference, the attempt's
    state, and the assignment the store has not seen yet."""
    ledger = TaskLedger.begin("batch", task_id, attempt, clock=lambda: started_at, review=review)
    ledger.note(EventType.ASSIGNED, f"attempt {attempt} assigned", attempt=attempt)
    return ChatTurnRequest(
        task_key=f"batch/{task_id}",
        turn=1,
        messages=[],
        definition=DefinitionRef(batch_id="batch", task_id=task_id),
        timeout_seconds=5.0,
        rework_feedback=rework_feedback,
        lifecycle=TurnLifecycle(
            attempt=attempt, state=ledger.state, unrecorded=ledger.unrecorded, review=review
        ),
    )


@pytest.fixture
async def recording_llm(
    scripted: ScriptedModelServer, tmp_path: Path
) -> AsyncIterator[tuple[LlmActivities, SqliteTaskStore]]:
    client = worker_client(scripted)
    async with SqliteTaskStore(tmp_path / "tasks.db") as store:
        await store.register_tasks(
            RegisterTasksRequest(
                batch_id="batch",
                tasks=[TaskSpec(id="doc-1", input="A short text to summarise.")],
                initial_status={"doc-1": TaskStatus.ASSIGNED},
                at=datetime.now(UTC),
            )
        )
        try:
            yield LlmActivities(client, default_model="scripted-model", store=store), store
        finally:
            await client.close()


async def test_a_task_turn_applies_and_records_its_tool_calls(
    recording_llm: tuple[LlmActivities, SqliteTaskStore],
) -> None:
    llm, store = recording_llm
    started_at = datetime.now(UTC)

    result = await ActivityEnvironment().run(llm.chat_turn, task_turn("doc-1", started_at))

    assert result.recorded is not None
    state = result.recorded.state
    assert state.status is TaskStatus.COMPLETED
    assert state.llm_calls == 1
    assert state.usage == result.usage
    assert [m.content for m in result.recorded.tool_replies] == [
        "task started",
        "progress recorded",
        "task completed",
    ]
    record = await store.get_task("batch", "doc-1", with_events=True)
    assert record is not None
    assert record.status is TaskStatus.COMPLETED
    assert record.result == state.result
    assert record.result
    assert (record.llm_calls, record.usage) == (1, result.usage)
    assert record.started_at == started_at
    assert record.completed_at == state.completed_at
    assert [(e.key, e.type) for e in record.events] == [
        ("created", EventType.CREATED),
        ("initial:assigned", EventType.ASSIGNED),
        ("1:1", EventType.ASSIGNED),
        ("1:t1:2", EventType.STARTED),
        ("1:t1:3", EventType.PROGRESS),
        ("1:t1:4", EventType.COMPLETED),
    ]


async def test_with_review_a_result_waits_and_its_redo_sees_it_with_the_feedback(
    recording_llm: tuple[LlmActivities, SqliteTaskStore], scripted: ScriptedModelServer
) -> None:
    llm, store = recording_llm
    scripted.script(
        "doc-1",
        Reply(
            tool_calls=[
                ToolCallSpec("complete_task", {"result": "A long summary."}),
                # Nothing after the submission applies: the attempt has ended.
                ToolCallSpec("fail_task", {"reason": "second thoughts"}),
            ]
        ),
        Reply(tool_calls=[ToolCallSpec("complete_task", {"result": "Short."})]),
    )

    submitted = await ActivityEnvironment().run(
        llm.chat_turn, task_turn("doc-1", datetime.now(UTC), review=True)
    )

    assert submitted.recorded is not None
    assert submitted.recorded.state.status is TaskStatus.REVIEW
    assert [m.content for m in submitted.recorded.tool_replies] == ["result submitted for review"]
    waiting = await store.get_task("batch", "doc-1", with_events=True)
    assert waiting is not None
    assert (waiting.status, waiting.result, waiting.completed_at) == (
        TaskStatus.REVIEW,
        "A long summary.",
        None,
    )
    assert [(e.type, e.message) for e in waiting.events][-2:] == [
        (EventType.STARTED, "started by the agent"),
        (EventType.REVIEW, "result submitted for review"),
    ]

    # The batch sends it back (keeping the result) and starts attempt 2 with the feedback.
    await store.apply(
        [
            TaskRecordUpdate(
                batch_id="batch",
                task_id="doc-1",
                status=TaskStatus.QUEUED,
                keep_result=True,
                events=[
                    TaskEvent(key="batch:0:1:queued", type=EventType.QUEUED, at=datetime.now(UTC))
                ],
            )
        ]
    )
    redo = task_turn(
        "doc-1", datetime.now(UTC), attempt=2, review=True, rework_feedback="Half as long."
    )
    revised = await ActivityEnvironment().run(llm.chat_turn, redo)

    body = scripted.records_for("doc-1")[-1].body
    assert body is not None
    rework = body["messages"][-1]
    assert rework["role"] == "user"
    assert "Earlier result:\nA long summary." in rework["content"]
    assert "Reviewer's feedback:\nHalf as long." in rework["content"]
    assert revised.recorded is not None
    assert revised.recorded.state.status is TaskStatus.REVIEW
    record = await store.get_task("batch", "doc-1")
    assert record is not None
    assert (record.status, record.result, record.attempt) == (TaskStatus.REVIEW, "Short.", 2)


async def test_a_retried_turn_leaves_only_its_own_decision_in_the_store(
    recording_llm: tuple[LlmActivities, SqliteTaskStore], scripted: ScriptedModelServer
) -> None:
    # The first try completes the task and records it, then its completion is lost (say, the
    # worker dies): Temporal runs the turn again, and this time the model gives up.
    llm, store = recording_llm
    scripted.script(
        "doc-1",
        Reply(tool_calls=[ToolCallSpec("complete_task", {"result": "a summary"})]),
        Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "unreadable"})]),
    )
    request = task_turn("doc-1", datetime.now(UTC))

    await ActivityEnvironment().run(llm.chat_turn, request)
    retried = await ActivityEnvironment().run(llm.chat_turn, request)

    assert retried.recorded is not None
    assert retried.recorded.state.status is TaskStatus.FAILED
    record = await store.get_task("batch", "doc-1", with_events=True)
    assert record is not None
    assert record.status is TaskStatus.FAILED
    assert record.error is not None
    assert record.error.message == "unreadable"
    assert [(e.key, e.type) for e in record.events][2:] == [
        ("1:1", EventType.ASSIGNED),
        ("1:t1:2", EventType.STARTED),
        ("1:t1:3", EventType.FAILED),
    ]

"""The model activity against a real HTTP server through the real openai client and a real task
store: what Temporal is told to do about each kind of provider trouble, how a turn's conversation
is rebuilt from the store, and what the store keeps of each turn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.llm.errors import retry_after
from activities.llm.turn import LlmActivities
from taskpool.domain import agents, names
from taskpool.domain.ledger import TaskLedger
from taskpool.domain.records import RegisterTasksRequest, TaskRecordUpdate
from taskpool.domain.tasks import EventType, TaskEvent, TaskSpec, TaskStatus
from taskpool.domain.turns import ChatMessage, TurnReply, TurnRequest
from taskpool.infra.settings import Settings
from taskpool.infra.store.sqlite import SqliteTaskStore
from taskpool.testing.scripted import Fault, Reply, ScriptedModelServer, ToolCallSpec
from worker import build_openai_client

INPUT = "A short text to summarise."


def worker_client(scripted: ScriptedModelServer) -> openai.AsyncOpenAI:
    # The client exactly as worker.py builds it (its transport included), so what these tests
    # see of each provider error is what a worker sees.
    return build_openai_client(
        Settings.from_env({"OPENAI_BASE_URL": scripted.base_url, "OPENAI_API_KEY": "test"})
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    async with SqliteTaskStore(tmp_path / "tasks.db") as opened:
        await opened.register_tasks(
            RegisterTasksRequest(
                batch_id="batch",
                tasks=[TaskSpec(id="doc-1", input=INPUT)],
                initial_status={"doc-1": TaskStatus.ASSIGNED},
                at=datetime.now(UTC),
            )
        )
        yield opened


@pytest.fixture
async def llm(
    scripted: ScriptedModelServer, store: SqliteTaskStore
) -> AsyncIterator[LlmActivities]:
    client = worker_client(scripted)
    try:
        yield LlmActivities(client, store=store, default_model="scripted-model")
    finally:
        await client.close()


def turn(
    task_id: str = "doc-1",
    timeout: float = 5.0,
    *,
    number: int = 1,
    follow_ups: Sequence[ChatMessage] = (),
    record: TaskRecordUpdate | None = None,
    attempt: int = 1,
    rework_feedback: str | None = None,
) -> TurnRequest:
    return TurnRequest(
        batch_id="batch",
        task_id=task_id,
        attempt=attempt,
        turn=number,
        timeout_seconds=timeout,
        follow_ups=list(follow_ups),
        record=record,
        rework_feedback=rework_feedback,
    )


async def test_a_reply_with_several_tool_calls_comes_back_in_order(
    llm: LlmActivities, scripted: ScriptedModelServer, store: SqliteTaskStore
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
    # The request was built from the stored definition, with the lifecycle tools.
    system, user = record.body["messages"]
    assert system["content"] == agents.KINDS["summarize"].system_prompt()
    assert INPUT in user["content"]
    assert [t["function"]["name"] for t in record.body["tools"]] == [
        t.name for t in agents.LIFECYCLE_TOOLS
    ]
    # The workflow learns that complete_task gave a result; the store has the result itself.
    (done,) = [c for c in result.tool_calls if c.name == "complete_task"]
    assert (done.arguments, done.has_result) == ({}, True)
    stored = await store.conversation("batch", "doc-1", 1, before_turn=2)
    assert stored is not None
    (kept,) = stored.turns
    assert kept.result == scripted.completions["batch/doc-1"][-1]
    assert kept.result
    assert [m.role for m in kept.messages] == ["assistant"]
    assert kept.messages[0].tool_calls[-1].arguments == {"result": kept.result}


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
    assert not result.tool_calls[0].has_result


async def test_a_task_missing_from_the_store_fails_its_turn_for_good(
    llm: LlmActivities, scripted: ScriptedModelServer
) -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(llm.chat_turn, turn("ghost"))
    assert raised.value.non_retryable
    assert raised.value.type == names.DEFINITION_MISSING
    assert "'ghost'" in str(raised.value)
    assert scripted.total_requests == 0


def test_retry_after_forms() -> None:
    assert retry_after({"retry-after-ms": "1500"}) == timedelta(milliseconds=1500)
    assert retry_after({"retry-after": "3"}) == timedelta(seconds=3)
    assert retry_after({}) is None
    assert retry_after({"retry-after": "soon"}) is None
    date = retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert date == timedelta(0)


async def test_heartbeats_only_while_the_model_takes_longer_than_the_interval(
    scripted: ScriptedModelServer, store: SqliteTaskStore
) -> None:
    # Each heartbeat is a write on the server, and the start already counts as one: a reply
    # within the interval sends none, a slower one beats while it waits.
    client = worker_client(scripted)
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    try:
        quick = LlmActivities(
            client, store=store, default_model="scripted-model", heartbeat_every=2.0
        )
        await env.run(quick.chat_turn, turn())
        assert beats == []
        scripted.latency = 0.5
        slow = LlmActivities(
            client, store=store, default_model="scripted-model", heartbeat_every=0.1
        )
        await env.run(slow.chat_turn, turn())
        assert len(beats) >= 2
    finally:
        await client.close()


# --- a task's turn, played as its workflow plays it ---------------------------------------------


class Attempt:
    """One attempt of doc-1 as TaskWorkflow runs it: the ledger decides, each turn carries the
    due store write and the follow-ups, and the last write goes to the store as the batch would
    queue it."""

    def __init__(
        self,
        llm: LlmActivities,
        *,
        attempt: int = 1,
        review: bool = False,
        rework_feedback: str | None = None,
    ) -> None:
        self.llm = llm
        self.attempt = attempt
        self.rework_feedback = rework_feedback
        self.ledger = TaskLedger(
            "batch", "doc-1", attempt, clock=lambda: datetime.now(UTC), review=review
        )
        self.ledger.note(EventType.ASSIGNED, f"attempt {attempt} assigned", attempt=attempt)
        self.follow_ups: list[ChatMessage] = []
        self.number = 0

    def request(self) -> TurnRequest:
        return turn(
            number=self.number + 1,
            attempt=self.attempt,
            follow_ups=self.follow_ups,
            record=self.ledger.pending_update(),
            rework_feedback=self.rework_feedback,
        )

    async def play(self, request: TurnRequest | None = None) -> TurnReply:
        reply = await ActivityEnvironment().run(self.llm.chat_turn, request or self.request())
        self.number += 1
        self.ledger.recorded()
        self.ledger.count_call(reply.usage)
        self.follow_ups = self.ledger.apply_calls(self.number, reply.tool_calls)
        return reply

    async def finish(self, store: SqliteTaskStore) -> None:
        await store.apply([self.ledger.take_update()])


async def test_a_turn_writes_what_is_due_and_the_result_comes_from_its_turn(
    llm: LlmActivities, scripted: ScriptedModelServer, store: SqliteTaskStore
) -> None:
    attempt = Attempt(llm)
    started_at = attempt.ledger.state.started_at

    reply = await attempt.play()

    # Applied before the call: the assignment the workflow noted.
    assigned = await store.get_task("batch", "doc-1", with_events=True)
    assert assigned is not None
    assert (assigned.status, assigned.attempt, assigned.started_at) == (
        TaskStatus.ASSIGNED,
        1,
        started_at,
    )
    assert [(e.key, e.type) for e in assigned.events][-1] == ("1:1", EventType.ASSIGNED)
    state = attempt.ledger.state
    assert state.status is TaskStatus.COMPLETED
    assert (state.llm_calls, state.usage, state.result_turn) == (1, reply.usage, 1)
    assert [m.content for m in attempt.follow_ups] == [
        "task started",
        "progress recorded",
        "task completed",
    ]
    await attempt.finish(store)
    record = await store.get_task("batch", "doc-1", with_events=True)
    assert record is not None
    assert record.status is TaskStatus.COMPLETED
    assert record.result == scripted.completions["batch/doc-1"][-1]
    assert record.result
    assert (record.llm_calls, record.usage) == (1, reply.usage)
    assert record.started_at == started_at
    assert record.completed_at == state.completed_at
    assert [(e.key, e.type) for e in record.events] == [
        ("created", EventType.CREATED),
        ("initial:assigned", EventType.ASSIGNED),
        ("1:1", EventType.ASSIGNED),
        ("1:2", EventType.STARTED),
        ("1:3", EventType.PROGRESS),
        ("1:4", EventType.COMPLETED),
    ]


async def test_each_turn_sees_the_earlier_turns_as_the_store_keeps_them(
    llm: LlmActivities, scripted: ScriptedModelServer, store: SqliteTaskStore
) -> None:
    scripted.script(
        "doc-1",
        Reply(
            content="Reading it first.",
            tool_calls=[ToolCallSpec("report_progress", {"percent": 40, "step": "reading"})],
        ),
        Reply(content="Still thinking."),
        Reply(tool_calls=[ToolCallSpec("complete_task", {"result": "a summary"})]),
    )
    attempt = Attempt(llm)
    await attempt.play()
    await attempt.play()
    # The second reply called no tool: the workflow reminds the model.
    attempt.follow_ups.append(ChatMessage(role="user", content=agents.NUDGE))
    await attempt.play()

    first, second, third = (r.body for r in scripted.records_for("batch/doc-1"))
    assert first is not None
    assert second is not None
    assert third is not None
    assert len(first["messages"]) == 2
    assert third["messages"][: len(second["messages"])] == second["messages"]
    earlier = [(m["role"], m.get("content")) for m in third["messages"][2:]]
    assert earlier == [
        ("assistant", "Reading it first."),
        ("tool", "progress recorded"),
        ("assistant", "Still thinking."),
        ("user", agents.NUDGE),
    ]
    call = third["messages"][2]["tool_calls"][0]
    assert call["function"]["name"] == "report_progress"
    assert call["function"]["arguments"] == '{"percent": 40, "step": "reading"}'
    assert third["messages"][3]["tool_call_id"] == call["id"]
    await attempt.finish(store)
    record = await store.get_task("batch", "doc-1", with_events=True)
    assert record is not None
    assert (record.status, record.result, record.llm_calls) == (
        TaskStatus.COMPLETED,
        "a summary",
        3,
    )
    assert [e.type for e in record.events][-4:] == [
        EventType.ASSIGNED,
        EventType.STARTED,
        EventType.PROGRESS,
        EventType.COMPLETED,
    ]


async def test_with_review_a_result_waits_and_its_redo_sees_it_with_the_feedback(
    llm: LlmActivities, scripted: ScriptedModelServer, store: SqliteTaskStore
) -> None:
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

    first = Attempt(llm, review=True)
    await first.play()

    assert first.ledger.state.status is TaskStatus.REVIEW
    assert [m.content for m in first.follow_ups] == ["result submitted for review"]
    await first.finish(store)
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
    redo = Attempt(llm, attempt=2, review=True, rework_feedback="Half as long.")
    await redo.play()

    body = scripted.records_for("doc-1")[-1].body
    assert body is not None
    rework = body["messages"][-1]
    assert rework["role"] == "user"
    assert "Earlier result:\nA long summary." in rework["content"]
    assert "Reviewer's feedback:\nHalf as long." in rework["content"]
    assert redo.ledger.state.status is TaskStatus.REVIEW
    await redo.finish(store)
    record = await store.get_task("batch", "doc-1")
    assert record is not None
    assert (record.status, record.result, record.attempt) == (TaskStatus.REVIEW, "Short.", 2)


async def test_a_retried_turn_keeps_one_reply_and_its_own_decision(
    llm: LlmActivities, scripted: ScriptedModelServer, store: SqliteTaskStore
) -> None:
    # The first try completes the task and keeps its reply, then its completion is lost (say, the
    # worker dies): Temporal runs the turn again, and this time the model gives up.
    scripted.script(
        "doc-1",
        Reply(tool_calls=[ToolCallSpec("complete_task", {"result": "a summary"})]),
        Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "unreadable"})]),
    )
    attempt = Attempt(llm)
    request = attempt.request()

    await ActivityEnvironment().run(llm.chat_turn, request)
    await attempt.play(request)

    stored = await store.conversation("batch", "doc-1", 1, before_turn=2)
    assert stored is not None
    (kept,) = stored.turns
    assert (kept.result, kept.messages[-1].tool_calls[0].name) == (None, "fail_task")
    assert attempt.ledger.state.status is TaskStatus.FAILED
    await attempt.finish(store)
    record = await store.get_task("batch", "doc-1", with_events=True)
    assert record is not None
    assert record.status is TaskStatus.FAILED
    assert record.error is not None
    assert record.error.message == "unreadable"
    assert record.result is None
    assert [(e.key, e.type) for e in record.events][2:] == [
        ("1:1", EventType.ASSIGNED),
        ("1:2", EventType.STARTED),
        ("1:3", EventType.FAILED),
    ]


async def test_emulated_tools_round_trip_through_the_store(
    scripted: ScriptedModelServer, store: SqliteTaskStore
) -> None:
    client = worker_client(scripted)
    llm = LlmActivities(client, store=store, default_model="scripted-model", tool_mode="json")
    scripted.script(
        "doc-1",
        Reply(content='{"calls": [{"name": "start_task", "arguments": {}}]}'),
        Reply(content='{"calls": [{"name": "complete_task", "arguments": {"result": "Done."}}]}'),
    )
    try:
        attempt = Attempt(llm)
        first = await attempt.play()
        second = await attempt.play()
    finally:
        await client.close()

    assert [c.name for c in first.tool_calls] == ["start_task"]
    assert [(c.name, c.has_result, c.arguments) for c in second.tool_calls] == [
        ("complete_task", True, {})
    ]
    body = scripted.records_for("doc-1")[-1].body
    assert body is not None
    assert "tools" not in body
    assert body["response_format"]["type"] == "json_schema"
    # The first turn's call and its reply went back to the model as text.
    texts = " ".join(str(m["content"]) for m in body["messages"][2:])
    assert "start_task" in texts
    assert "task started" in texts
    await attempt.finish(store)
    record = await store.get_task("batch", "doc-1")
    assert record is not None
    assert (record.status, record.result) == (TaskStatus.COMPLETED, "Done.")

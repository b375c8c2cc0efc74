"""The ledger on its own, without a worker: what each store write of an attempt carries, and the
tool calls as the workflow receives them (taskpool.domain.agents.for_workflow)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taskpool.domain import agents
from taskpool.domain.ledger import TaskLedger
from taskpool.domain.tasks import EventType, TaskStatus, TokenUsage
from taskpool.domain.turns import ToolCall

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def ledger(*, review: bool = False) -> TaskLedger:
    begun = TaskLedger("b", "t", 2, clock=Clock(), review=review)
    begun.note(EventType.ASSIGNED, "attempt 2 assigned", attempt=2)
    return begun


def call(name: str, **arguments: object) -> ToolCall:
    return agents.for_workflow(ToolCall(id=f"c-{name}", name=name, arguments=arguments))


def test_a_due_write_stays_due_until_its_turn_comes_back() -> None:
    attempt = ledger()
    due = attempt.pending_update()
    assert due.only_if_current
    assert (due.status, due.attempt, due.started_at) == (
        TaskStatus.ASSIGNED,
        2,
        T0 + timedelta(seconds=1),
    )
    assert [e.key for e in due.events] == ["2:1"]

    # The turn failed: the attempt's last write repeats what the turn may not have written.
    attempt.fail("llm_error", "the model call failed")
    last = attempt.take_update()
    assert not last.only_if_current
    assert [(e.key, e.type) for e in last.events] == [
        ("2:1", EventType.ASSIGNED),
        ("2:2", EventType.STARTED),
        ("2:3", EventType.FAILED),
    ]
    assert last.started_at == due.started_at
    assert (last.status, last.error is not None) == (TaskStatus.FAILED, True)


def test_after_a_turn_only_what_changed_since_is_due() -> None:
    attempt = ledger()
    attempt.pending_update()
    attempt.recorded()
    attempt.count_call(TokenUsage(prompt_tokens=10, completion_tokens=2))
    replies = attempt.apply_calls(1, [call("start_task"), call("report_progress", percent=30)])

    due = attempt.pending_update()
    assert [r.content for r in replies] == ["task started", "progress recorded"]
    assert [e.key for e in due.events] == ["2:2", "2:3"]
    assert due.started_at is None
    assert (due.status, due.llm_calls, due.usage) == (
        TaskStatus.IN_PROGRESS,
        1,
        TokenUsage(prompt_tokens=10, completion_tokens=2),
    )
    assert due.progress is not None
    assert due.progress.percent == 30


def test_complete_task_names_the_turn_whose_result_is_kept() -> None:
    attempt = ledger()
    replies = attempt.apply_calls(
        3, [call("complete_task", result=""), call("complete_task", result={"a": 1})]
    )

    assert [r.content for r in replies] == [
        "error: complete_task needs a non-empty result",
        "task completed",
    ]
    last = attempt.take_update()
    assert (last.status, last.result_turn, last.result) == (TaskStatus.COMPLETED, 3, None)
    assert attempt.state.result_turn == 3


def test_with_review_the_result_waits_and_nothing_after_it_applies() -> None:
    attempt = ledger(review=True)
    replies = attempt.apply_calls(
        1, [call("complete_task", result="x"), call("fail_task", reason="no")]
    )

    assert [r.content for r in replies] == ["result submitted for review"]
    last = attempt.take_update()
    assert (last.status, last.result_turn, last.completed_at) == (TaskStatus.REVIEW, 1, None)


def test_the_workflow_gets_no_result_and_short_arguments() -> None:
    long_reason = "x" * 5000
    calls = [
        call("complete_task", result="the whole answer"),
        call("fail_task", reason=long_reason),
        call("report_progress", percent=50, step={"not": "text"}, extra="ignored"),
        call("delete_everything", target="all"),
    ]

    done, failed, progress, unknown = calls
    assert (done.arguments, done.has_result) == ({}, True)
    assert len(failed.arguments["reason"]) == agents.MAX_ARGUMENT_CHARS
    assert failed.arguments["reason"].startswith("xxx")
    assert progress.arguments == {"percent": 50}
    assert unknown.arguments == {}
    assert "the whole answer" not in "".join(c.model_dump_json() for c in calls)

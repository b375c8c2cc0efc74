"""The batch's scheduling rules, without Temporal: priority, dependencies, schedules, outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskpool.domain.batch import TaskOutcome
from taskpool.domain.packing import pack, unpack
from taskpool.domain.scheduling import TaskTable
from taskpool.domain.task_columns import TaskColumns, TaskEntry
from taskpool.domain.tasks import Priority, TaskSpec, TaskStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def table_of(*specs: TaskSpec) -> TaskTable:
    table = TaskTable(TaskEntry.from_spec(spec) for spec in specs)
    table.settle_pending(NOW)
    return table


def spec(task_id: str, **fields: object) -> TaskSpec:
    return TaskSpec.model_validate({"id": task_id, "input": f"input of {task_id}", **fields})


def status_of(table: TaskTable, task_id: str) -> TaskStatus:
    entry = table.get(task_id)
    assert entry is not None
    return entry.status


def finish(table: TaskTable, task_id: str, status: TaskStatus) -> None:
    entry = table.get(task_id)
    assert entry is not None
    outcome = TaskOutcome(task_id=task_id, attempt=entry.attempts, status=status, completed_at=NOW)
    assert table.accept_outcome(outcome, NOW) is not None


def test_ready_tasks_run_by_priority_then_order() -> None:
    table = table_of(
        spec("a", priority="low"),
        spec("b"),
        spec("c", priority="critical"),
        spec("d"),
        spec("e", priority="high"),
    )
    taken = [e.id for e in table.take_ready(10)]
    assert taken == ["c", "e", "b", "d", "a"]
    assert all(table.get(t).status is TaskStatus.ASSIGNED for t in taken)  # type: ignore[union-attr]
    assert table.in_flight == 5


def test_take_ready_respects_the_limit_and_counts_attempts() -> None:
    table = table_of(*(spec(f"t{i}") for i in range(5)))
    assert [e.id for e in table.take_ready(2)] == ["t0", "t1"]
    assert table.counts[TaskStatus.QUEUED] == 3
    assert table.get("t0").attempts == 1  # type: ignore[union-attr]


def test_dependencies_block_until_completed() -> None:
    table = table_of(spec("child", depends_on=["parent"]), spec("parent"))
    assert table.get("child").status is TaskStatus.BLOCKED  # type: ignore[union-attr]
    assert [e.id for e in table.take_ready(10)] == ["parent"]
    finish(table, "parent", TaskStatus.COMPLETED)
    assert [e.id for e in table.take_ready(10)] == ["child"]


def test_failed_dependency_blocks_until_nothing_else_can_run() -> None:
    table = table_of(spec("parent"), spec("child", depends_on=["parent"]))
    table.take_ready(10)
    finish(table, "parent", TaskStatus.FAILED)
    assert table.get("child").status is TaskStatus.BLOCKED  # type: ignore[union-attr]
    assert not table.counts.can_progress()
    cancelled = table.cancel_blocked_for_good(NOW)
    assert [e.id for e in cancelled] == ["child"]
    assert table.get("child").status_reason == "dependency parent failed"  # type: ignore[union-attr]


def test_a_chain_blocked_behind_a_failure_lets_the_batch_end() -> None:
    table = table_of(
        spec("a"),
        spec("b", depends_on=["a"]),
        spec("c", depends_on=["b"]),
        spec("d", depends_on=["b", "c"]),
    )
    table.take_ready(10)
    finish(table, "a", TaskStatus.FAILED)
    # c and d wait on b, which waits on a failure: nothing will run without a retry.
    assert not table.counts.can_progress()
    cancelled = table.cancel_blocked_for_good(NOW)
    assert [(e.id, e.status_reason) for e in cancelled] == [
        ("b", "dependency a failed"),
        ("c", "dependency b was cancelled"),
        ("d", "dependency c was cancelled"),
    ]
    assert table.counts[TaskStatus.BLOCKED] == 0


def test_retrying_a_failed_dependency_unblocks_its_dependents() -> None:
    table = table_of(spec("parent"), spec("child", depends_on=["parent"]))
    table.take_ready(10)
    finish(table, "parent", TaskStatus.FAILED)
    parent = table.get("parent")
    assert parent is not None
    table.retry(parent)
    assert parent.retry_count == 1
    assert parent.status is TaskStatus.QUEUED
    assert [e.id for e in table.take_ready(10)] == ["parent"]
    assert parent.attempts == 2
    finish(table, "parent", TaskStatus.COMPLETED)
    assert table.get("child").status is TaskStatus.QUEUED  # type: ignore[union-attr]


def test_cancelled_dependency_cancels_dependents_transitively() -> None:
    table = table_of(spec("a"), spec("b", depends_on=["a"]), spec("c", depends_on=["b"]))
    a = table.get("a")
    assert a is not None
    cancelled = table.cancel(a, "not needed", NOW)
    assert [e.id for e in cancelled] == ["a", "b", "c"]
    assert table.counts[TaskStatus.CANCELLED] == 3


def test_scheduled_tasks_wait_for_their_time() -> None:
    later = NOW + timedelta(minutes=5)
    table = table_of(spec("soon", scheduled_for=later), spec("now"))
    assert table.get("soon").status is TaskStatus.SCHEDULED  # type: ignore[union-attr]
    assert table.next_due() == later
    assert table.release_due(NOW) == []
    released = table.release_due(later)
    assert [e.id for e in released] == ["soon"]
    assert table.next_due() is None


def test_a_result_in_review_holds_its_dependents_until_approved() -> None:
    table = table_of(spec("draft"), spec("publish", depends_on=["draft"]))
    table.take_ready(10)
    finish(table, "draft", TaskStatus.REVIEW)
    draft = table.get("draft")
    assert draft is not None
    assert status_of(table, "draft") is TaskStatus.REVIEW
    assert table.in_flight == 0
    # Waiting for a person is not progress the batch can make on its own.
    assert not table.counts.can_progress()
    assert table.get("publish").status is TaskStatus.BLOCKED  # type: ignore[union-attr]
    assert table.counts.finished == 0

    changed = table.approve(draft, NOW)

    assert [e.id for e in changed] == ["draft", "publish"]
    assert status_of(table, "draft") is TaskStatus.COMPLETED
    assert [e.id for e in table.take_ready(10)] == ["publish"]


def test_a_result_sent_back_from_review_runs_again_as_a_new_attempt() -> None:
    table = table_of(spec("a"), spec("b"))
    table.take_ready(1)
    finish(table, "a", TaskStatus.REVIEW)
    a = table.get("a")
    assert a is not None

    assert table.send_back(a) == [a]

    assert status_of(table, "a") is TaskStatus.QUEUED
    assert a.retry_count == 0
    # Back in the queue in its place: ahead of b, which was added after it.
    assert [e.id for e in table.take_ready(10)] == ["a", "b"]
    assert a.attempts == 2
    finish(table, "a", TaskStatus.REVIEW)
    assert table.counts[TaskStatus.REVIEW] == 1


def test_stale_and_duplicate_reports_are_ignored() -> None:
    table = table_of(spec("a"))
    table.take_ready(1)
    stale = TaskOutcome(task_id="a", attempt=7, status=TaskStatus.COMPLETED)
    assert table.accept_outcome(stale, NOW) is None
    finish(table, "a", TaskStatus.COMPLETED)
    again = TaskOutcome(task_id="a", attempt=1, status=TaskStatus.FAILED)
    assert table.accept_outcome(again, NOW) is None
    assert table.get("a").status is TaskStatus.COMPLETED  # type: ignore[union-attr]
    assert table.counts[TaskStatus.COMPLETED] == 1


def test_priority_rank_orders_the_five_priorities() -> None:
    ranks = [p.rank for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.URGENT)]
    assert ranks == sorted(ranks)
    assert Priority.CRITICAL.rank > ranks[-1]


# --- the table after a continue-as-new: rebuilt from its packed columns ---------------------------


def rebuilt(table: TaskTable) -> TaskTable:
    return TaskTable(unpack(pack(table.columns)))


def test_a_rebuilt_table_carries_on_where_the_old_one_stopped() -> None:
    later = NOW + timedelta(hours=1)
    table = table_of(
        spec("low", priority="low"),
        spec("running"),
        spec("waits", depends_on=["running"]),
        spec("due-later", scheduled_for=later.isoformat()),
        spec("failed"),
        spec("urgent", priority="urgent"),
        spec("normal"),
    )
    assert [e.id for e in table.take_ready(3)] == ["urgent", "running", "failed"]
    failed = table.get("failed")
    assert failed is not None
    outcome = TaskOutcome(task_id="failed", attempt=1, status=TaskStatus.FAILED, completed_at=NOW)
    table.accept_outcome(outcome, NOW)
    running = table.get("running")
    assert running is not None
    running.started_at = NOW

    again = rebuilt(table)

    assert again.counts.as_map() == table.counts.as_map()
    assert [e.id for e in again.in_flight_entries()] == ["running", "urgent"]
    assert again.next_due() == later
    assert again.get("running").started_at == NOW  # type: ignore[union-attr]
    # Queued tasks come out in the same order as from the old table.
    assert [e.id for e in again.take_ready(10)] == ["normal", "low"]
    # Dependents are found again: completing the dependency queues its dependent.
    finish(again, "running", TaskStatus.COMPLETED)
    assert [e.id for e in again.take_ready(10)] == ["waits"]
    # A retry after the rebuild counts on from the attempt before it.
    retried = again.get("failed")
    assert retried is not None
    again.retry(retried)
    assert [(e.id, e.attempts, e.retry_count) for e in again.take_ready(10)] == [("failed", 2, 1)]


def test_a_running_task_reports_to_the_rebuilt_table_once() -> None:
    table = table_of(spec("a"))
    table.take_ready(1)
    again = rebuilt(table)
    outcome = TaskOutcome(task_id="a", attempt=1, status=TaskStatus.COMPLETED, completed_at=NOW)
    assert again.accept_outcome(outcome, NOW) == []
    assert again.accept_outcome(outcome, NOW) is None
    assert again.in_flight == 0
    assert again.counts[TaskStatus.COMPLETED] == 1


def test_a_row_writes_through_to_its_columns() -> None:
    table = table_of(spec("a"), spec("b"))
    row = table.get("b")
    assert row is not None
    row.status_reason = "why"
    assert table.columns.reasons == {1: "why"}
    row.status_reason = None
    assert table.columns.reasons == {}
    assert table.columns.entry(1) == TaskEntry("b", status=TaskStatus.QUEUED)


def test_duplicate_ids_and_ragged_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="task id 'a' is already in the batch"):
        TaskTable([TaskEntry("a"), TaskEntry("b"), TaskEntry("a")])
    with pytest.raises(ValueError, match="task id 'a' is already in the batch"):
        _ = TaskColumns(
            ids=["a", "a"], status=bytearray(b"qq"), priority=bytearray(b"22"), attempts=[0, 0]
        ).position
    with pytest.raises(ValueError, match="disagree in length"):
        TaskColumns(ids=["a"], status=bytearray(b"qq"), priority=bytearray(b"2"), attempts=[0])


def test_tasks_queued_after_a_rebuild_take_their_place_in_run_order() -> None:
    table = table_of(
        spec("n1"),
        spec("unblocked", priority="high", depends_on=["dependency"]),
        spec("n2"),
        spec("dependency", priority="critical"),
        spec("n3"),
    )
    assert [e.id for e in table.take_ready(1)] == ["dependency"]
    again = rebuilt(table)

    finish(again, "dependency", TaskStatus.COMPLETED)
    again.add([spec("high-new", priority="high"), spec("n-new")], NOW)

    taken = [e.id for e in again.take_ready(10)]
    assert taken == ["unblocked", "high-new", "n1", "n2", "n3", "n-new"]
    assert again.take_ready(10) == []


def test_a_queued_task_cancelled_after_a_rebuild_never_runs() -> None:
    again = rebuilt(table_of(spec("a"), spec("b"), spec("c", priority="high")))
    b = again.get("b")
    assert b is not None
    again.cancel(b, "not needed", NOW)

    assert [e.id for e in again.take_ready(10)] == ["c", "a"]
    assert again.counts[TaskStatus.CANCELLED] == 1

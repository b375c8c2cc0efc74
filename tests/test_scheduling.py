"""The batch's scheduling rules, without Temporal: priority, dependencies, schedules, outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taskpool.models import Priority, TaskOutcome, TaskSpec, TaskStatus
from taskpool.scheduling import TaskEntry, TaskTable

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def table_of(*specs: TaskSpec) -> TaskTable:
    table = TaskTable(TaskEntry.from_spec(spec) for spec in specs)
    table.settle_pending(NOW)
    return table


def spec(task_id: str, **fields: object) -> TaskSpec:
    return TaskSpec.model_validate({"id": task_id, "input": f"input of {task_id}", **fields})


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
    assert not table.can_progress()
    cancelled = table.cancel_blocked_for_good(NOW)
    assert [e.id for e in cancelled] == ["child"]
    assert table.get("child").status_reason == "dependency parent failed"  # type: ignore[union-attr]


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

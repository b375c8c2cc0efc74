"""What an update to the batch names in its task table, why the batch refuses one, and the store
writes that record what it changed: deterministic functions that the batch workflow's handlers and
validators share.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from taskpool.domain import agents
    from taskpool.domain.batch import BatchRun
    from taskpool.domain.records import TaskRecordUpdate
    from taskpool.domain.requests import (
        RetryTasksRequest,
        ReviewTasksRequest,
        SetPriorityRequest,
    )
    from taskpool.domain.scheduling import MAX_TASKS_PER_BATCH, WAITING_STATUSES, TaskTable
    from taskpool.domain.task_columns import TaskRow
    from taskpool.domain.tasks import EventType, TaskEvent, TaskSpec, TaskStatus
    from taskpool.domain.transitions import can_transition


def refuse_if_closing(run: BatchRun, *, finished: bool) -> None:
    """Refuse every update once the batch is being cancelled or has finished."""
    if run.cancel_reason is not None:
        raise ValueError(f"the batch is being cancelled ({run.cancel_reason})")
    if finished:
        raise ValueError("the batch has finished")


def still_failed(table: TaskTable, request: RetryTasksRequest) -> list[TaskRow]:
    """The failed tasks a retry names. A task another retry has queued since this one was
    accepted is left out, so it is not queued twice."""
    return named(table, request.task_ids, TaskStatus.FAILED, every=request.all_failed)


def in_review(table: TaskTable, request: ReviewTasksRequest) -> list[TaskRow]:
    """The tasks in review that a review names."""
    return named(table, request.task_ids, TaskStatus.REVIEW, every=request.all_in_review)


def named(
    table: TaskTable, task_ids: Sequence[str], status: TaskStatus, *, every: bool
) -> list[TaskRow]:
    """The tasks a request names (or, with `every`, all) that are in `status` now."""
    if every:
        return list(table.with_status(status))
    entries = (table.get(task_id) for task_id in dict.fromkeys(task_ids))
    return [e for e in entries if e is not None and e.status is status]


def require_each(table: TaskTable, task_ids: Sequence[str], status: TaskStatus, only: str) -> None:
    """Refuse a request that names a task the batch does not have or one not in `status`."""
    for task_id in task_ids:
        entry = table.get(task_id)
        if entry is None:
            raise ValueError(f"batch has no task {task_id!r}")
        if entry.status is not status:
            raise ValueError(f"task {task_id!r} is {entry.status.value}; {only}")


def refuse_to_add(table: TaskTable, tasks: Sequence[TaskSpec]) -> None:
    """Refuse tasks the batch cannot take: too many, ids it has, unknown kinds or dependencies."""
    if not tasks:
        raise ValueError("no tasks to add")
    if len(table) + len(tasks) > MAX_TASKS_PER_BATCH:
        raise ValueError(
            f"the batch has {len(table)} tasks and holds at most "
            f"{MAX_TASKS_PER_BATCH}; start another batch for these {len(tasks)}"
        )
    new_ids = {t.id for t in tasks}
    problems = []
    seen: set[str] = set()
    for spec in tasks:
        if spec.id in table or spec.id in seen:
            problems.append(f"task id {spec.id!r} is already in the batch")
        seen.add(spec.id)
        if spec.kind not in agents.KINDS:
            problems.append(f"task {spec.id!r}: unknown kind {spec.kind!r}")
        for dependency in spec.depends_on:
            if dependency not in table and dependency not in new_ids:
                problems.append(f"task {spec.id!r} depends on unknown task {dependency!r}")
    if problems:
        raise ValueError("; ".join(problems))


def refuse_to_retry(table: TaskTable, request: RetryTasksRequest) -> None:
    require_each(table, request.task_ids, TaskStatus.FAILED, "only failed tasks retry")
    retried = {entry.id for entry in still_failed(table, request)}
    if not retried:
        raise ValueError("no failed tasks to retry")
    strays = [task_id for task_id in request.inputs if task_id not in retried]
    if strays:
        shown = ", ".join(repr(task_id) for task_id in strays[:5])
        raise ValueError(f"new inputs given for tasks this request does not retry: {shown}")


def refuse_to_review(table: TaskTable, request: ReviewTasksRequest) -> None:
    if request.decision == "reject" and not (request.feedback or "").strip():
        raise ValueError("a result sent back needs feedback: say what to change")
    if not request.task_ids and not request.all_in_review:
        raise ValueError("name the tasks to review, or set all_in_review")
    only = "only a task in review can be approved or sent back"
    require_each(table, request.task_ids, TaskStatus.REVIEW, only)
    if not in_review(table, request):
        raise ValueError("no task of the batch is waiting in review")


def refuse_to_cancel(table: TaskTable, task_ids: Sequence[str]) -> None:
    for task_id in task_ids:
        entry = table.get(task_id)
        if entry is None:
            raise ValueError(f"batch has no task {task_id!r}")
        if entry.status.is_terminal:
            raise ValueError(f"task {task_id!r} has already ended ({entry.status.value})")
        if not can_transition(entry.status, TaskStatus.CANCELLED):
            raise ValueError(f"task {task_id!r} cannot be cancelled from {entry.status.value}")


def input_replacements(
    batch_id: str, table: TaskTable, request: RetryTasksRequest, now: datetime
) -> list[TaskRecordUpdate]:
    """The store writes that give the tasks a retry names their new inputs, which must be in the
    store before their next attempt reads its definition."""
    inputs = request.inputs
    updates = []
    for entry in still_failed(table, request):
        if entry.id not in inputs:
            continue
        retry = entry.retry_count + 1
        event = TaskEvent(
            key=f"batch:{retry}:input",
            type=EventType.COMMENT,
            at=now,
            message=f"input replaced for retry {retry}",
        )
        updates.append(
            TaskRecordUpdate(
                batch_id=batch_id, task_id=entry.id, input=inputs[entry.id], events=[event]
            )
        )
    return updates


def refuse_to_set_priority(table: TaskTable, request: SetPriorityRequest) -> None:
    """Refuse a priority change that names a task the batch does not have, or one that has
    started (running, in review) or ended: it names every such task, with where it is."""
    unknown, started = [], []
    for task_id in dict.fromkeys(request.task_ids):
        entry = table.get(task_id)
        if entry is None:
            unknown.append(repr(task_id))
        elif entry.status not in WAITING_STATUSES:
            started.append(f"{task_id!r} is {entry.status.value}")
    problems = []
    if unknown:
        problems.append(f"batch has no task {', '.join(unknown)}")
    if started:
        problems.append(
            f"task {', '.join(started)}: only a queued, blocked or scheduled task changes priority"
        )
    if problems:
        raise ValueError("; ".join(problems))


def set_priorities(
    batch_id: str, table: TaskTable, request: SetPriorityRequest, now: datetime, change_id: str
) -> list[TaskRecordUpdate]:
    """Give the tasks a request names its priority; returns the store writes that record each
    change in its task's events (a task that had that priority already has none). `change_id`
    (the update's id) keeps each change's event apart from another change of the same task."""
    updates = []
    for task_id in dict.fromkeys(request.task_ids):
        entry = table.get(task_id)
        if entry is None or entry.status not in WAITING_STATUSES:
            continue
        old = table.set_priority(entry, request.priority)
        if old is request.priority:
            continue
        event = TaskEvent(
            key=f"batch:{entry.retry_count}:priority:{change_id}",
            type=EventType.PRIORITY,
            at=now,
            message=f"priority changed from {old.value} to {request.priority.value}",
            data={"from": old.value, "to": request.priority.value},
        )
        updates.append(
            TaskRecordUpdate(
                batch_id=batch_id, task_id=task_id, priority=request.priority, events=[event]
            )
        )
    return updates

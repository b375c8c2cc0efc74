"""The task lifecycle: which status may follow which. One pure function, used everywhere."""

from __future__ import annotations

from collections.abc import Mapping

from taskpool.domain.tasks import TaskStatus

S = TaskStatus

TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    S.PENDING: frozenset({S.QUEUED, S.SCHEDULED, S.CANCELLED}),
    S.SCHEDULED: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.ASSIGNED, S.BLOCKED, S.CANCELLED}),
    S.ASSIGNED: frozenset({S.IN_PROGRESS, S.QUEUED, S.CANCELLED}),
    S.IN_PROGRESS: frozenset({S.COMPLETED, S.FAILED, S.REVIEW, S.CANCELLED}),
    S.BLOCKED: frozenset({S.QUEUED, S.CANCELLED}),
    # A result sent back from review is redone by a new attempt, which waits for a free slot in
    # the queue like any other: so back to queued, not straight to in_progress.
    S.REVIEW: frozenset({S.COMPLETED, S.QUEUED, S.CANCELLED}),
    # A failed task goes back to the queue only through an explicit retry.
    S.FAILED: frozenset({S.QUEUED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
}


class IllegalTransitionError(ValueError):
    def __init__(self, task_id: str, current: TaskStatus, target: TaskStatus) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing: it is final"
        super().__init__(
            f"task {task_id!r} cannot go from {current.value} to {target.value}; "
            f"from {current.value} it may go to {allowed}"
        )
        self.task_id = task_id
        self.current = current
        self.target = target


def can_transition(current: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[current]


def transition(task_id: str, current: TaskStatus, target: TaskStatus) -> TaskStatus:
    """Return `target` if the lifecycle allows the move, else raise IllegalTransitionError."""
    if not can_transition(current, target):
        raise IllegalTransitionError(task_id, current, target)
    return target

"""How many of the batch's tasks are in each status, and which are running.

The task table (taskpool/domain/scheduling.py) tells its counts of every status change it makes,
so a status, a page of tasks or the run loop's question "can anything still run?" never scans a
million tasks. Pure and deterministic.
"""

from __future__ import annotations

from collections import Counter

from taskpool.domain.task_columns import STATUS_CODES, TaskColumns
from taskpool.domain.tasks import TERMINAL_STATUSES, TaskStatus

S = TaskStatus
IN_FLIGHT_STATUSES = frozenset({S.ASSIGNED, S.IN_PROGRESS})
# A task in one of these runs, or will run, without outside help.
_MAY_RUN = (S.PENDING, S.QUEUED, S.SCHEDULED, S.ASSIGNED, S.IN_PROGRESS)


class TaskCounts:
    def __init__(self, columns: TaskColumns) -> None:
        # Counted in C, one pass per status: a new run counts a million tasks in its first
        # workflow task.
        status = columns.status
        self._by_status: Counter[TaskStatus] = Counter(
            {task_status: status.count(code) for task_status, code in STATUS_CODES.items()}
        )
        self._running: set[int] = {
            index for running in IN_FLIGHT_STATUSES for index in columns.positions_with(running)
        }

    def __getitem__(self, status: TaskStatus) -> int:
        return self._by_status[status]

    def of(self, status: TaskStatus | None) -> int:
        """How many tasks are in `status`; with None, how many the batch has."""
        return self._by_status.total() if status is None else self._by_status[status]

    def as_map(self) -> dict[str, int]:
        """Every status's count, by the status's name (every status, those at 0 too)."""
        return {status.value: self._by_status[status] for status in TaskStatus}

    @property
    def finished(self) -> int:
        return sum(self._by_status[status] for status in TERMINAL_STATUSES)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def running(self) -> list[int]:
        """The positions of the running tasks, in the order the tasks were added."""
        return sorted(self._running)

    def can_progress(self) -> bool:
        """Whether any task not yet finished may still run without outside help.

        A blocked task waits for a dependency to complete, and only a running task (or one that
        will run) completes without help: with none left, the blocked ones wait on a failure,
        a result in review, or on each other."""
        return any(self._by_status[status] for status in _MAY_RUN)

    def moved(self, index: int, old: TaskStatus | None, new: TaskStatus) -> None:
        """Count a task's move from `old` to `new` (from None: a task just added)."""
        if old is not None:
            self._by_status[old] -= 1
        self._by_status[new] += 1
        if new in IN_FLIGHT_STATUSES:
            self._running.add(index)
        else:
            self._running.discard(index)

"""Where the batch's tasks wait before they run: the ready queue (by priority, then in the order
they were added), the due times of scheduled tasks, and which tasks wait on which.

Collaborators of the task table (taskpool/domain/scheduling.py), which tells them of each change
it makes. They read the table's live columns rather than copies: an entry may go stale (a task that
left `queued`, or was given another priority, since it was queued) and is skipped when it comes up,
which costs less than finding and removing it at each change. Pure and deterministic.
"""

from __future__ import annotations

import heapq
from datetime import datetime

from taskpool.domain.task_columns import PRIORITY_BY_CODE, STATUS_CODES, TaskColumns
from taskpool.domain.tasks import TaskStatus

_QUEUED = STATUS_CODES[TaskStatus.QUEUED]
_SCHEDULED = STATUS_CODES[TaskStatus.SCHEDULED]
_COMPLETED = STATUS_CODES[TaskStatus.COMPLETED]
_FAILED = STATUS_CODES[TaskStatus.FAILED]


class ReadyQueue:
    """Queued tasks in run order: by priority (highest first), then in the order they were added.

    A new run must not spend its first workflow task putting every queued task of a million in a
    heap. So, per priority, the tasks queued when the table was built are found by a C search of
    a byte mask (queued and of that priority), from a cursor that only moves forward; tasks
    queued later, or given a new priority while queued, go to a heap. An entry whose task is no
    longer queued, or no longer of that priority, is skipped when it comes up.
    """

    def __init__(self, columns: TaskColumns) -> None:
        self._status = columns.status
        self._priority = columns.priority
        count = len(columns)
        queued = int.from_bytes(columns.status.translate(_QUEUED_MASK), "big")
        self._initial: dict[int, bytes] = {}
        self._cursor: dict[int, int] = {}
        self._later: dict[int, list[int]] = {}
        for code in sorted(PRIORITY_BY_CODE, reverse=True):
            of_priority = int.from_bytes(columns.priority.translate(_PRIORITY_MASKS[code]), "big")
            self._initial[code] = (queued & of_priority).to_bytes(count, "big")
            self._cursor[code] = 0
            self._later[code] = []

    def push(self, index: int) -> None:
        """Queue a task at its current priority (again, when that changed)."""
        heapq.heappush(self._later[self._priority[index]], index)

    def pop(self) -> int | None:
        """The next queued task, taken off the queue; None when no task is queued."""
        code = self._next_code()
        if code is None:
            return None
        initial, later = self._next_initial(code), self._later[code]
        if initial is not None and (not later or initial < later[0]):
            self._cursor[code] = initial + 1
            return initial
        return heapq.heappop(later)

    def _live(self, index: int, code: int) -> bool:
        return self._status[index] == _QUEUED and self._priority[index] == code

    def _next_code(self) -> int | None:
        """The highest priority with a queued task, after dropping stale entries."""
        for code in self._initial:
            later = self._later[code]
            while later and not self._live(later[0], code):
                heapq.heappop(later)
            if later or self._next_initial(code) is not None:
                return code
        return None

    def _next_initial(self, code: int) -> int | None:
        """The first task from the cursor on that was queued when the table was built and still
        is, at that priority; the cursor moves past those that are not."""
        initial = self._initial[code]
        index = initial.find(1, self._cursor[code])
        while index != -1 and not self._live(index, code):
            index = initial.find(1, index + 1)
        self._cursor[code] = len(initial) if index == -1 else index
        return None if index == -1 else index


class DueTimes:
    """Scheduled tasks by due time, soonest first."""

    def __init__(self, columns: TaskColumns) -> None:
        self._status = columns.status
        self._scheduled_for = columns.scheduled_for
        self._heap = [
            (due, index)
            for index, due in columns.scheduled_for.items()
            if columns.status[index] == _SCHEDULED
        ]
        heapq.heapify(self._heap)

    def push(self, index: int) -> None:
        """Note a task that became scheduled (one without a due time waits for nothing here)."""
        due = self._scheduled_for.get(index)
        if due is not None:
            heapq.heappush(self._heap, (due, index))

    def next_due(self) -> datetime | None:
        """When the next scheduled task is due; None when none is scheduled."""
        heap, status = self._heap, self._status
        while heap:
            due, index = heap[0]
            if status[index] == _SCHEDULED:
                return due
            heapq.heappop(heap)
        return None

    def pop_due(self, now: datetime) -> list[int]:
        """The scheduled tasks whose time has come, soonest first, taken off."""
        due_now = []
        while (due := self.next_due()) is not None and due <= now:
            due_now.append(heapq.heappop(self._heap)[1])
        return due_now


class Dependencies:
    """Which tasks wait on which, by id, and whether what a task waits on has completed."""

    def __init__(self, columns: TaskColumns) -> None:
        self._columns = columns
        # Tasks waiting on each id, by position.
        self._dependents: dict[str, list[int]] = {}
        for index in sorted(columns.depends_on):
            self.add(index)

    def add(self, index: int) -> None:
        """Note a new task's dependencies."""
        for dependency in self._columns.depends_on.get(index, ()):
            self._dependents.setdefault(dependency, []).append(index)

    def dependents(self, task_id: str) -> list[int]:
        """The tasks that wait on `task_id`, by position, in the order they were added."""
        return self._dependents.get(task_id, [])

    def unmet(self, index: int) -> list[str]:
        """The dependencies of a task that have not completed."""
        position, status = self._columns.position, self._columns.status
        return [
            dependency
            for dependency in self._columns.depends_on.get(index, ())
            if dependency not in position or status[position[dependency]] != _COMPLETED
        ]

    def failed(self, index: int) -> list[str]:
        """The dependencies of a task that failed: while they stay failed, it waits for good."""
        position, status = self._columns.position, self._columns.status
        return [
            dependency
            for dependency in self._columns.depends_on.get(index, ())
            if dependency in position and status[position[dependency]] == _FAILED
        ]


# Byte translation tables for the masks above: 1 where a task's byte matches, 0 elsewhere.
_QUEUED_MASK = bytes(1 if byte == _QUEUED else 0 for byte in range(256))
_PRIORITY_MASKS = {
    code: bytes(1 if byte == code else 0 for byte in range(256)) for code in PRIORITY_BY_CODE
}

"""The batch's task table and its scheduling policy: which task runs next.

Pure and deterministic (the batch workflow owns one), so the rules are unit-tested without Temporal:
- a task waits while it is scheduled for later or blocked on dependencies that have not completed;
- ready tasks run by priority (critical first), then in the order they were added;
- a task whose dependency failed stays blocked (a retry of the dependency may still unblock it)
  until nothing else can run, when it is cancelled with the reason; a cancelled dependency cancels
  its dependents at once;
- a result waiting in review is not complete: its dependents stay blocked until it is approved, and
  a result sent back is queued again for its next attempt.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from datetime import datetime

from taskpool.domain.batch import TaskOutcome, TaskView
from taskpool.domain.task_columns import (
    PRIORITY_BY_CODE,
    STATUS_BY_CODE,
    STATUS_CODES,
    TaskColumns,
    TaskEntry,
    TaskRow,
    put_sparse,
)
from taskpool.domain.tasks import TERMINAL_STATUSES, TaskError, TaskSpec, TaskStatus, TokenUsage
from taskpool.domain.transitions import transition

S = TaskStatus
# A batch rebuilds its table from the packed state at each continue-as-new, inside one workflow
# task, which the SDK fails as a deadlock after 2 s without a yield; `bench/scale.py` measures how
# long that first workflow task takes for a million tasks (docs/scale.md), and this cap keeps it
# well under the limit on a loaded machine. Past this, several batches (docs/scale.md).
MAX_TASKS_PER_BATCH = 1_000_000
IN_FLIGHT_STATUSES = frozenset({S.ASSIGNED, S.IN_PROGRESS})
_MAY_RUN = (S.PENDING, S.QUEUED, S.SCHEDULED, S.ASSIGNED, S.IN_PROGRESS)
RECENT_FAILURES = 5

_QUEUED = STATUS_CODES[S.QUEUED]
_SCHEDULED = STATUS_CODES[S.SCHEDULED]


class TaskTable:
    def __init__(
        self,
        tasks: TaskColumns | Iterable[TaskEntry],
        *,
        usage: TokenUsage | None = None,
        llm_calls: int = 0,
        recent_failures: Iterable[str] = (),
    ) -> None:
        # Built from columns with C-speed passes: a new run rebuilds the whole table inside one
        # workflow task, and this is most of that work.
        columns = tasks if isinstance(tasks, TaskColumns) else TaskColumns.from_entries(tasks)
        self.columns = columns
        status = columns.status
        # Tasks waiting on each id, by position.
        self._dependents: dict[str, list[int]] = {}
        for index, dependencies in sorted(columns.depends_on.items()):
            for dependency in dependencies:
                self._dependents.setdefault(dependency, []).append(index)
        self._ready = _ReadyQueue(columns)
        self._scheduled: list[tuple[datetime, int]] = [
            (due, index)
            for index, due in columns.scheduled_for.items()
            if status[index] == _SCHEDULED
        ]
        heapq.heapify(self._scheduled)
        self.counts: Counter[TaskStatus] = Counter(
            {task_status: status.count(code) for task_status, code in STATUS_CODES.items()}
        )
        self._in_flight: set[int] = {
            index for running in IN_FLIGHT_STATUSES for index in columns.positions_with(running)
        }
        self.usage = usage or TokenUsage()
        self.llm_calls = llm_calls
        # The latest failures, newest last, so a status needs no scan of the whole table.
        self.recent_failures: deque[str] = deque(recent_failures, maxlen=RECENT_FAILURES)

    # --- reading ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.columns)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.columns.position

    def get(self, task_id: str) -> TaskRow | None:
        index = self.columns.position.get(task_id)
        return None if index is None else TaskRow(self.columns, index)

    def _row(self, index: int) -> TaskRow:
        return TaskRow(self.columns, index)

    def _by_id(self, task_id: str) -> TaskRow:
        return TaskRow(self.columns, self.columns.position[task_id])

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def finished_count(self) -> int:
        return sum(self.counts[status] for status in TERMINAL_STATUSES)

    def in_flight_entries(self) -> list[TaskRow]:
        """The running tasks, in the order they were added."""
        return [self._row(index) for index in sorted(self._in_flight)]

    def with_status(self, status: TaskStatus | None) -> Iterator[TaskRow]:
        if status is None:
            return (self._row(index) for index in range(len(self.columns)))
        return (self._row(index) for index in self.columns.positions_with(status))

    def count_with(self, status: TaskStatus | None) -> int:
        return len(self.columns) if status is None else self.counts[status]

    def count_map(self) -> dict[str, int]:
        return {status.value: self.counts[status] for status in TaskStatus}

    def can_progress(self) -> bool:
        """Whether any task not yet finished may still run without outside help.

        A blocked task waits for a dependency to complete, and only a running task (or one that
        will run) completes without help: with none left, the blocked ones wait on a failure,
        a result in review, or on each other."""
        return any(self.counts[status] for status in _MAY_RUN)

    # --- adding tasks -----------------------------------------------------------------------------

    def add(self, specs: Iterable[TaskSpec], now: datetime) -> dict[str, TaskStatus]:
        """Add new tasks and move each out of `pending`; returns their first status."""
        added = [self._index(TaskEntry.from_spec(spec)) for spec in specs]
        for entry in added:
            self._settle_new(entry, now)
        return {entry.id: entry.status for entry in added}

    def settle_pending(self, now: datetime) -> list[TaskRow]:
        """Move every `pending` task to its first status (a batch's first run does this)."""
        pending = list(self.with_status(S.PENDING))
        for entry in pending:
            self._settle_new(entry, now)
        return pending

    def _settle_new(self, entry: TaskRow, now: datetime) -> None:
        due = entry.scheduled_for
        if due is not None and due > now:
            self._move(entry, S.SCHEDULED)
            return
        self._move(entry, S.QUEUED)
        if self._unmet_dependencies(entry):
            self._move(entry, S.BLOCKED)

    # --- choosing what runs -----------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        status = self.columns.status
        while self._scheduled:
            due, index = self._scheduled[0]
            if status[index] == _SCHEDULED:
                return due
            heapq.heappop(self._scheduled)
        return None

    def release_due(self, now: datetime) -> list[TaskRow]:
        """Queue (or block) scheduled tasks whose time has come."""
        released = []
        while (due := self.next_due()) is not None and due <= now:
            _, index = heapq.heappop(self._scheduled)
            entry = self._row(index)
            self._move(entry, S.QUEUED)
            if self._unmet_dependencies(entry):
                self._move(entry, S.BLOCKED)
            released.append(entry)
        return released

    def take_ready(self, limit: int) -> list[TaskRow]:
        """Up to `limit` queued tasks in run order, marked assigned with a new attempt."""
        taken: list[TaskRow] = []
        columns = self.columns
        while len(taken) < limit and (index := self._ready.pop()) is not None:
            entry = self._row(index)
            self._move(entry, S.ASSIGNED)
            columns.attempts[index] += 1
            columns.errors.pop(index, None)
            columns.reasons.pop(index, None)
            taken.append(entry)
        return taken

    # --- outcomes and commands --------------------------------------------------------------------

    def accept_outcome(self, outcome: TaskOutcome, now: datetime) -> list[TaskRow] | None:
        """Apply a child's report. Returns the tasks whose status changed as a consequence
        (dependents), or None when the report is stale or a duplicate and was ignored."""
        entry = self.get(outcome.task_id)
        if entry is None or entry.index not in self._in_flight:
            return None
        if outcome.attempt != entry.attempts or not outcome.status.ends_attempt:
            return None
        # The child enforced the lifecycle on its side (assigned, in_progress, ...); the batch
        # mirrors where it ended.
        self._set(entry, outcome.status)
        put_sparse(self.columns.errors, entry.index, _compact_error(outcome.error))
        self.usage = self.usage + outcome.usage
        self.llm_calls += outcome.llm_calls
        if outcome.status is S.FAILED:
            self.recent_failures.append(entry.id)
        if outcome.status is S.REVIEW:
            return []
        return self._after_finish(entry, now)

    def approve(self, entry: TaskRow, now: datetime) -> list[TaskRow]:
        """Complete a task whose result was waiting in review; returns every task whose status
        changed (dependents it unblocked too)."""
        self._move(entry, S.COMPLETED)
        return [entry, *self._after_finish(entry, now)]

    def send_back(self, entry: TaskRow) -> list[TaskRow]:
        """Queue a task whose result was sent back from review, for another attempt."""
        self._move(entry, S.QUEUED)
        return [entry]

    def cancel(self, entry: TaskRow, reason: str, now: datetime) -> list[TaskRow]:
        """Cancel a task that is not running; returns every task cancelled (with dependents)."""
        self._move(entry, S.CANCELLED)
        entry.status_reason = reason
        return [entry, *self._after_finish(entry, now)]

    def retry(self, entry: TaskRow) -> list[TaskRow]:
        """Queue a failed task again; returns the tasks whose status changed."""
        self._move(entry, S.QUEUED)
        self.columns.retries[entry.index] = entry.retry_count + 1
        self.columns.errors.pop(entry.index, None)
        entry.status_reason = None
        if self._unmet_dependencies(entry):
            self._move(entry, S.BLOCKED)
        return [entry]

    def cancel_blocked_for_good(self, now: datetime) -> list[TaskRow]:
        stuck = [e for e in self.with_status(S.BLOCKED) if self._blocked_for_good(e)]
        cancelled: list[TaskRow] = []
        for entry in stuck:
            if entry.status is S.BLOCKED:
                failed = [d for d in entry.depends_on if self._by_id(d).status is S.FAILED]
                cancelled += self.cancel(entry, f"dependency {', '.join(failed)} failed", now)
        return cancelled

    # --- views ------------------------------------------------------------------------------------

    def recent_failure_views(self) -> list[TaskView]:
        """The latest failures that are still failed (a retry takes a task off), newest first."""
        entries = (self._by_id(task_id) for task_id in reversed(self.recent_failures))
        return [self.view(e) for e in entries if e.status is S.FAILED]

    def view(self, entry: TaskRow) -> TaskView:
        return TaskView(
            id=entry.id,
            priority=entry.priority,
            status=entry.status,
            attempts=entry.attempts,
            retry_count=entry.retry_count,
            error=entry.error,
            status_reason=entry.status_reason,
            depends_on=list(entry.depends_on),
            started_at=entry.started_at if entry.status in IN_FLIGHT_STATUSES else None,
        )

    # --- internals --------------------------------------------------------------------------------

    def _index(self, entry: TaskEntry) -> TaskRow:
        index = self.columns.append(entry)
        for dependency in entry.depends_on:
            self._dependents.setdefault(dependency, []).append(index)
        self.counts[entry.status] += 1
        row = self._row(index)
        self._track(row)
        return row

    def _move(self, entry: TaskRow, target: TaskStatus) -> None:
        self._set(entry, transition(entry.id, entry.status, target))

    def _set(self, entry: TaskRow, status: TaskStatus) -> None:
        index = entry.index
        self.counts[STATUS_BY_CODE[self.columns.status[index]]] -= 1
        self.columns.status[index] = STATUS_CODES[status]
        self.counts[status] += 1
        self._track(entry)

    def _track(self, entry: TaskRow) -> None:
        index, status = entry.index, entry.status
        if status in IN_FLIGHT_STATUSES:
            self._in_flight.add(index)
        else:
            self._in_flight.discard(index)
        if status is S.QUEUED:
            self._ready.push(index)
        elif status is S.SCHEDULED and (due := entry.scheduled_for) is not None:
            heapq.heappush(self._scheduled, (due, index))

    def _unmet_dependencies(self, entry: TaskRow) -> list[str]:
        position, status = self.columns.position, self.columns.status
        completed = STATUS_CODES[S.COMPLETED]
        return [
            dependency
            for dependency in entry.depends_on
            if dependency not in position or status[position[dependency]] != completed
        ]

    def _blocked_for_good(self, entry: TaskRow) -> bool:
        """Blocked on a failed dependency that nothing will rerun."""
        position = self.columns.position
        return any(self._by_id(d).status is S.FAILED for d in entry.depends_on if d in position)

    def _after_finish(self, finished: TaskRow, now: datetime) -> list[TaskRow]:
        changed: list[TaskRow] = []
        for index in self._dependents.get(finished.id, []):
            dependent = self._row(index)
            if dependent.status is not S.BLOCKED:
                continue
            if finished.status is S.CANCELLED:
                reason = f"dependency {finished.id} was cancelled"
                changed += self.cancel(dependent, reason, now)
            elif finished.status is S.COMPLETED and not self._unmet_dependencies(dependent):
                self._move(dependent, S.QUEUED)
                changed.append(dependent)
        return changed


# An error's message is for people reading a status; the store keeps it whole. The batch keeps a
# bounded prefix so that many failures cannot outgrow its state.
ERROR_MESSAGE_LIMIT = 300


class _ReadyQueue:
    """Queued tasks in run order: by priority (highest first), then in the order they were added.

    A new run must not spend its first workflow task putting every queued task of a million in a
    heap. So, per priority, the tasks queued when the table was built are found by a C search of
    a byte mask (queued and of that priority), from a cursor that only moves forward; tasks
    queued later go to a heap. Either may hold a task that has left `queued` since: the live
    status is checked when a task comes up, and such a task is skipped.
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

    def _next_code(self) -> int | None:
        """The highest priority with a queued task, after dropping stale entries."""
        for code in self._initial:
            later = self._later[code]
            while later and self._status[later[0]] != _QUEUED:
                heapq.heappop(later)
            if later or self._next_initial(code) is not None:
                return code
        return None

    def _next_initial(self, code: int) -> int | None:
        """The first task from the cursor on that was queued when the table was built and still
        is; the cursor moves past those that are not."""
        initial, status = self._initial[code], self._status
        index = initial.find(1, self._cursor[code])
        while index != -1 and status[index] != _QUEUED:
            index = initial.find(1, index + 1)
        self._cursor[code] = len(initial) if index == -1 else index
        return None if index == -1 else index


# Byte translation tables for the masks above: 1 where a task's byte matches, 0 elsewhere.
_QUEUED_MASK = bytes(1 if byte == _QUEUED else 0 for byte in range(256))
_PRIORITY_MASKS = {
    code: bytes(1 if byte == code else 0 for byte in range(256)) for code in PRIORITY_BY_CODE
}


def _compact_error(error: TaskError | None) -> TaskError | None:
    if error is None or len(error.message) <= ERROR_MESSAGE_LIMIT:
        return error
    message = error.message[: ERROR_MESSAGE_LIMIT - 1] + "…"
    return error.model_copy(update={"message": message})

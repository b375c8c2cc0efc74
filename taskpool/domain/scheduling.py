"""The batch's task table and its scheduling policy: which task runs next.

Pure and deterministic (the batch workflow owns one), so the rules are unit-tested without Temporal:
- a task waits while it is scheduled for later or blocked on dependencies that have not completed;
- ready tasks run by priority (critical first), then in the order they were added; a task's
  priority may change until it starts;
- a task whose dependency failed stays blocked (a retry of the dependency may still unblock it)
  until nothing else can run, when it is cancelled with the reason; a cancelled dependency cancels
  its dependents at once;
- a result waiting in review is not complete: its dependents stay blocked until it is approved, and
  a result sent back is queued again for its next attempt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from datetime import datetime

from taskpool.domain.batch import TaskOutcome, TaskView
from taskpool.domain.task_columns import (
    PRIORITY_CODES,
    STATUS_CODES,
    TaskColumns,
    TaskEntry,
    TaskRow,
    put_sparse,
)
from taskpool.domain.task_counts import IN_FLIGHT_STATUSES, TaskCounts
from taskpool.domain.tasks import Priority, TaskError, TaskSpec, TaskStatus, TokenUsage
from taskpool.domain.transitions import transition
from taskpool.domain.waiting import Dependencies, DueTimes, ReadyQueue

S = TaskStatus
# A batch rebuilds its table from the packed state at each continue-as-new, inside one workflow
# task, which the SDK fails as a deadlock after 2 s without a yield; `bench/scale.py` measures how
# long that first workflow task takes for a million tasks (docs/scale.md), and this cap keeps it
# well under the limit on a loaded machine. Past this, several batches (docs/scale.md).
MAX_TASKS_PER_BATCH = 1_000_000
# The statuses of a task that has not started (or is waiting to start again): its priority may
# change until it runs.
WAITING_STATUSES = frozenset({S.PENDING, S.QUEUED, S.BLOCKED, S.SCHEDULED})
RECENT_FAILURES = 5


class TaskTable:
    """The batch's tasks as columns, and the rules that move them. What the rules need to answer
    fast lives in collaborators kept in step with every move: the counts by status
    (taskpool/domain/task_counts.py), the ready queue, the due times and the dependencies
    (taskpool/domain/waiting.py)."""

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
        self.counts = TaskCounts(columns)
        self._ready = ReadyQueue(columns)
        self._due = DueTimes(columns)
        self._dependencies = Dependencies(columns)
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
        return None if index is None else self._row(index)

    def _row(self, index: int) -> TaskRow:
        return TaskRow(self.columns, index)

    @property
    def in_flight(self) -> int:
        return self.counts.in_flight

    def in_flight_entries(self) -> list[TaskRow]:
        """The running tasks, in the order they were added."""
        return [self._row(index) for index in self.counts.running()]

    def with_status(self, status: TaskStatus | None) -> Iterator[TaskRow]:
        if status is None:
            return (self._row(index) for index in range(len(self.columns)))
        return (self._row(index) for index in self.columns.positions_with(status))

    def recent_failure_views(self) -> list[TaskView]:
        """The latest failures that are still failed (a retry takes a task off), newest first."""
        entries = (self.get(task_id) for task_id in reversed(self.recent_failures))
        return [task_view(e) for e in entries if e is not None and e.status is S.FAILED]

    # --- adding tasks -----------------------------------------------------------------------------

    def add(self, specs: Iterable[TaskSpec], now: datetime) -> dict[str, TaskStatus]:
        """Add new tasks and move each out of `pending`; returns their first status."""
        added = []
        for spec in specs:
            index = self.columns.append(TaskEntry.from_spec(spec))
            self._dependencies.add(index)
            self.counts.moved(index, None, S.PENDING)
            added.append(self._row(index))
        self._settle(added, now)
        return {entry.id: entry.status for entry in added}

    def settle_pending(self, now: datetime) -> list[TaskRow]:
        """Move every `pending` task to its first status (a batch's first run does this)."""
        pending = list(self.with_status(S.PENDING))
        self._settle(pending, now)
        return pending

    def _settle(self, entries: Iterable[TaskRow], now: datetime) -> None:
        for entry in entries:
            due = entry.scheduled_for
            if due is not None and due > now:
                self._move(entry, S.SCHEDULED)
            else:
                self._queue(entry)

    # --- choosing what runs -----------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        return self._due.next_due()

    def release_due(self, now: datetime) -> list[TaskRow]:
        """Queue (or block) scheduled tasks whose time has come."""
        released = [self._row(index) for index in self._due.pop_due(now)]
        for entry in released:
            self._queue(entry)
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

    def set_priority(self, entry: TaskRow, priority: Priority) -> Priority:
        """Give a task that has not started a new priority; returns its old one. Queued, it takes
        its place among the tasks of its new priority by the order tasks were added; blocked or
        scheduled, it queues there when it may run."""
        if entry.status not in WAITING_STATUSES:
            raise ValueError(
                f"task {entry.id!r} is {entry.status.value}: only a task that waits to run "
                "changes priority"
            )
        old = entry.priority
        if priority is not old:
            self.columns.priority[entry.index] = PRIORITY_CODES[priority]
            if entry.status is S.QUEUED:
                self._ready.push(entry.index)
        return old

    # --- outcomes and commands --------------------------------------------------------------------

    def accept_outcome(self, outcome: TaskOutcome, now: datetime) -> list[TaskRow] | None:
        """Apply a child's report. Returns the tasks whose status changed as a consequence
        (dependents), or None when the report is stale or a duplicate and was ignored."""
        entry = self.get(outcome.task_id)
        if entry is None or entry.status not in IN_FLIGHT_STATUSES:
            return None
        if outcome.attempt != entry.attempts or not outcome.status.ends_attempt:
            return None
        # The child enforced the lifecycle on its side (assigned, in_progress, ...); the batch
        # mirrors where it ended.
        self._move(entry, outcome.status, checked=False)
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
        self._queue(entry)
        self.columns.retries[entry.index] = entry.retry_count + 1
        self.columns.errors.pop(entry.index, None)
        entry.status_reason = None
        return [entry]

    def cancel_blocked_for_good(self, now: datetime) -> list[TaskRow]:
        """Cancel the tasks blocked on a failed dependency that nothing will rerun."""
        stuck = [e for e in self.with_status(S.BLOCKED) if self._dependencies.failed(e.index)]
        cancelled: list[TaskRow] = []
        for entry in stuck:
            if entry.status is S.BLOCKED:
                failed = self._dependencies.failed(entry.index)
                cancelled += self.cancel(entry, f"dependency {', '.join(failed)} failed", now)
        return cancelled

    # --- internals --------------------------------------------------------------------------------

    def _queue(self, entry: TaskRow) -> None:
        """Queue a task, which is blocked at once while a dependency has not completed."""
        self._move(entry, S.QUEUED)
        if self._dependencies.unmet(entry.index):
            self._move(entry, S.BLOCKED)

    def _move(self, entry: TaskRow, target: TaskStatus, *, checked: bool = True) -> None:
        """Move a task to `target` (which the lifecycle must allow, when `checked`), and tell the
        collaborators."""
        index, old = entry.index, entry.status
        status = transition(entry.id, old, target) if checked else target
        self.columns.status[index] = STATUS_CODES[status]
        self.counts.moved(index, old, status)
        if status is S.QUEUED:
            self._ready.push(index)
        elif status is S.SCHEDULED:
            self._due.push(index)

    def _after_finish(self, finished: TaskRow, now: datetime) -> list[TaskRow]:
        changed: list[TaskRow] = []
        for index in self._dependencies.dependents(finished.id):
            dependent = self._row(index)
            if dependent.status is not S.BLOCKED:
                continue
            if finished.status is S.CANCELLED:
                reason = f"dependency {finished.id} was cancelled"
                changed += self.cancel(dependent, reason, now)
            elif finished.status is S.COMPLETED and not self._dependencies.unmet(index):
                self._move(dependent, S.QUEUED)
                changed.append(dependent)
        return changed


def task_view(entry: TaskRow) -> TaskView:
    """A task as the `tasks` and `task` queries show it."""
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


# An error's message is for people reading a status; the store keeps it whole. The batch keeps a
# bounded prefix so that many failures cannot outgrow its state.
ERROR_MESSAGE_LIMIT = 300


def _compact_error(error: TaskError | None) -> TaskError | None:
    if error is None or len(error.message) <= ERROR_MESSAGE_LIMIT:
        return error
    message = error.message[: ERROR_MESSAGE_LIMIT - 1] + "…"
    return error.model_copy(update={"message": message})

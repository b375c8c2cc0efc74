"""The batch's task table and its scheduling policy: which task runs next.

Pure and deterministic (the batch workflow owns one), so the rules are unit-tested without Temporal:
- a task waits while it is scheduled for later or blocked on dependencies that have not completed;
- ready tasks run by priority (critical first), then in the order they were added;
- a task whose dependency failed stays blocked (a retry of the dependency may still unblock it)
  until nothing else can run, when it is cancelled with the reason; a cancelled dependency cancels
  its dependents at once.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from taskpool.lifecycle import transition
from taskpool.models import (
    TERMINAL_STATUSES,
    Priority,
    TaskError,
    TaskOutcome,
    TaskSpec,
    TaskStatus,
    TaskView,
    TokenUsage,
)

S = TaskStatus
# A batch rebuilds its table from the packed state at each continue-as-new, inside one workflow
# task, which the SDK fails as a deadlock after 2 s without a yield. About 3.5 µs per task here:
# 100,000 tasks take about 0.35 s, with room for a loaded machine. Larger work runs as several
# batches (README, "Scale").
MAX_TASKS_PER_BATCH = 100_000
IN_FLIGHT_STATUSES = frozenset({S.ASSIGNED, S.IN_PROGRESS})
RECENT_FAILURES = 5


@dataclass(slots=True)
class TaskEntry:
    """What the batch keeps per task: enough to schedule and to answer queries, and no more, so
    a batch of a million tasks fits in memory and (packed) in one payload. The definition
    (input, label, kind, metadata), results, usage and timestamps live in the task store."""

    id: str
    priority: Priority = Priority.NORMAL
    depends_on: tuple[str, ...] = ()
    scheduled_for: datetime | None = None
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0
    retry_count: int = 0
    error: TaskError | None = None
    status_reason: str | None = None
    # When the batch started the task's current attempt; kept while it runs, for watchers.
    started_at: datetime | None = None

    @classmethod
    def from_spec(cls, spec: TaskSpec) -> TaskEntry:
        return cls(
            id=spec.id,
            priority=spec.priority,
            depends_on=tuple(spec.depends_on),
            scheduled_for=spec.scheduled_for,
        )


class TaskTable:
    def __init__(
        self,
        entries: Iterable[TaskEntry],
        *,
        usage: TokenUsage | None = None,
        llm_calls: int = 0,
        recent_failures: Iterable[str] = (),
    ) -> None:
        # Built in bulk rather than task by task: a new run rebuilds the whole table inside one
        # workflow task, and this is most of that work.
        self.entries: list[TaskEntry] = list(entries)
        self._by_id: dict[str, TaskEntry] = {entry.id: entry for entry in self.entries}
        if len(self._by_id) != len(self.entries):
            counted = Counter(entry.id for entry in self.entries)
            duplicate = next(task_id for task_id, n in counted.items() if n > 1)
            raise ValueError(f"task id {duplicate!r} is already in the batch")
        self._order: dict[str, int] = dict(zip(self._by_id, range(len(self.entries)), strict=True))
        self._dependents: dict[str, list[str]] = {}
        for entry in self.entries:
            for dependency in entry.depends_on:
                self._dependents.setdefault(dependency, []).append(entry.id)
        self._ready: list[tuple[int, int, str]] = [
            _ready_item(entry, order)
            for order, entry in enumerate(self.entries)
            if entry.status is S.QUEUED
        ]
        heapq.heapify(self._ready)
        self._scheduled: list[tuple[datetime, int, str]] = [
            (entry.scheduled_for, order, entry.id)
            for order, entry in enumerate(self.entries)
            if entry.status is S.SCHEDULED and entry.scheduled_for is not None
        ]
        heapq.heapify(self._scheduled)
        self.counts: Counter[TaskStatus] = Counter(entry.status for entry in self.entries)
        self.usage = usage or TokenUsage()
        self.llm_calls = llm_calls
        # The latest failures, newest last, so a status needs no scan of the whole table.
        self.recent_failures: deque[str] = deque(recent_failures, maxlen=RECENT_FAILURES)

    # --- reading ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_id

    def get(self, task_id: str) -> TaskEntry | None:
        return self._by_id.get(task_id)

    @property
    def in_flight(self) -> int:
        return sum(self.counts[status] for status in IN_FLIGHT_STATUSES)

    @property
    def finished_count(self) -> int:
        return sum(self.counts[status] for status in TERMINAL_STATUSES)

    def in_flight_entries(self) -> list[TaskEntry]:
        return [entry for entry in self.entries if entry.status in IN_FLIGHT_STATUSES]

    def with_status(self, status: TaskStatus | None) -> Iterator[TaskEntry]:
        return (e for e in self.entries if status is None or e.status is status)

    def count_map(self) -> dict[str, int]:
        return {status.value: self.counts[status] for status in TaskStatus}

    def can_progress(self) -> bool:
        """Whether any task not yet finished may still run without outside help."""
        waiting = (S.PENDING, S.QUEUED, S.SCHEDULED, S.ASSIGNED, S.IN_PROGRESS)
        if any(self.counts[status] for status in waiting):
            return True
        return any(not self._blocked_for_good(e) for e in self.with_status(S.BLOCKED))

    # --- adding tasks -----------------------------------------------------------------------------

    def add(self, specs: Iterable[TaskSpec], now: datetime) -> dict[str, TaskStatus]:
        """Add new tasks and move each out of `pending`; returns their first status."""
        added = [TaskEntry.from_spec(spec) for spec in specs]
        for entry in added:
            self._index(entry)
        for entry in added:
            self._settle_new(entry, now)
        return {entry.id: entry.status for entry in added}

    def settle_pending(self, now: datetime) -> list[TaskEntry]:
        """Move every `pending` task to its first status (a batch's first run does this)."""
        pending = list(self.with_status(S.PENDING))
        for entry in pending:
            self._settle_new(entry, now)
        return pending

    def _settle_new(self, entry: TaskEntry, now: datetime) -> None:
        due = entry.scheduled_for
        if due is not None and due > now:
            self._move(entry, S.SCHEDULED)
            return
        self._move(entry, S.QUEUED)
        if self._unmet_dependencies(entry):
            self._move(entry, S.BLOCKED)

    # --- choosing what runs -----------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        while self._scheduled:
            due, _, task_id = self._scheduled[0]
            if self._by_id[task_id].status is S.SCHEDULED:
                return due
            heapq.heappop(self._scheduled)
        return None

    def release_due(self, now: datetime) -> list[TaskEntry]:
        """Queue (or block) scheduled tasks whose time has come."""
        released = []
        while (due := self.next_due()) is not None and due <= now:
            _, _, task_id = heapq.heappop(self._scheduled)
            entry = self._by_id[task_id]
            self._move(entry, S.QUEUED)
            if self._unmet_dependencies(entry):
                self._move(entry, S.BLOCKED)
            released.append(entry)
        return released

    def take_ready(self, limit: int) -> list[TaskEntry]:
        """Up to `limit` queued tasks in run order, marked assigned with a new attempt."""
        taken: list[TaskEntry] = []
        while self._ready and len(taken) < limit:
            _, _, task_id = heapq.heappop(self._ready)
            entry = self._by_id[task_id]
            if entry.status is not S.QUEUED:
                continue
            self._move(entry, S.ASSIGNED)
            entry.attempts += 1
            entry.error = None
            entry.status_reason = None
            taken.append(entry)
        return taken

    def has_ready(self) -> bool:
        return any(self._by_id[task_id].status is S.QUEUED for _, _, task_id in self._ready)

    # --- outcomes and commands --------------------------------------------------------------------

    def accept_outcome(self, outcome: TaskOutcome, now: datetime) -> list[TaskEntry] | None:
        """Apply a child's report. Returns the tasks whose status changed as a consequence
        (dependents), or None when the report is stale or a duplicate and was ignored."""
        entry = self._by_id.get(outcome.task_id)
        if entry is None or entry.status not in IN_FLIGHT_STATUSES:
            return None
        if outcome.attempt != entry.attempts or not outcome.status.is_terminal:
            return None
        # The child enforced the lifecycle on its side (assigned, in_progress, ...); the batch
        # mirrors where it ended.
        self._set(entry, outcome.status)
        entry.error = _compact_error(outcome.error)
        self.usage = self.usage + outcome.usage
        self.llm_calls += outcome.llm_calls
        if outcome.status is S.FAILED:
            self.recent_failures.append(entry.id)
        return self._after_finish(entry, now)

    def cancel(self, entry: TaskEntry, reason: str, now: datetime) -> list[TaskEntry]:
        """Cancel a task that is not running; returns every task cancelled (with dependents)."""
        self._move(entry, S.CANCELLED)
        entry.status_reason = reason
        return [entry, *self._after_finish(entry, now)]

    def retry(self, entry: TaskEntry) -> list[TaskEntry]:
        """Queue a failed task again; returns the tasks whose status changed."""
        self._move(entry, S.QUEUED)
        entry.retry_count += 1
        entry.error = None
        entry.status_reason = None
        if self._unmet_dependencies(entry):
            self._move(entry, S.BLOCKED)
        return [entry]

    def cancel_blocked_for_good(self, now: datetime) -> list[TaskEntry]:
        stuck = [e for e in self.with_status(S.BLOCKED) if self._blocked_for_good(e)]
        cancelled: list[TaskEntry] = []
        for entry in stuck:
            if entry.status is S.BLOCKED:
                failed = [d for d in entry.depends_on if self._by_id[d].status is S.FAILED]
                cancelled += self.cancel(entry, f"dependency {', '.join(failed)} failed", now)
        return cancelled

    # --- views ------------------------------------------------------------------------------------

    def recent_failure_views(self) -> list[TaskView]:
        """The latest failures that are still failed (a retry takes a task off), newest first."""
        entries = (self._by_id[task_id] for task_id in reversed(self.recent_failures))
        return [self.view(e) for e in entries if e.status is S.FAILED]

    def view(self, entry: TaskEntry) -> TaskView:
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

    def _index(self, entry: TaskEntry) -> None:
        task_id = entry.id
        if task_id in self._by_id:
            raise ValueError(f"task id {task_id!r} is already in the batch")
        self._order[task_id] = len(self.entries)
        self.entries.append(entry)
        self._by_id[task_id] = entry
        for dependency in entry.depends_on:
            self._dependents.setdefault(dependency, []).append(task_id)
        self.counts[entry.status] += 1
        self._track(entry)

    def _move(self, entry: TaskEntry, target: TaskStatus) -> None:
        self._set(entry, transition(entry.id, entry.status, target))

    def _set(self, entry: TaskEntry, status: TaskStatus) -> None:
        self.counts[entry.status] -= 1
        entry.status = status
        self.counts[status] += 1
        self._track(entry)

    def _track(self, entry: TaskEntry) -> None:
        order = self._order[entry.id]
        if entry.status is S.QUEUED:
            heapq.heappush(self._ready, _ready_item(entry, order))
        elif entry.status is S.SCHEDULED and entry.scheduled_for is not None:
            heapq.heappush(self._scheduled, (entry.scheduled_for, order, entry.id))

    def _unmet_dependencies(self, entry: TaskEntry) -> list[str]:
        return [
            dependency
            for dependency in entry.depends_on
            if dependency not in self._by_id or self._by_id[dependency].status is not S.COMPLETED
        ]

    def _blocked_for_good(self, entry: TaskEntry) -> bool:
        """Blocked on a failed dependency that nothing will rerun."""
        return any(self._by_id[d].status is S.FAILED for d in entry.depends_on if d in self._by_id)

    def _after_finish(self, finished: TaskEntry, now: datetime) -> list[TaskEntry]:
        changed: list[TaskEntry] = []
        for task_id in self._dependents.get(finished.id, []):
            dependent = self._by_id[task_id]
            if dependent.status is not S.BLOCKED:
                continue
            if finished.status is S.CANCELLED:
                reason = f"dependency {finished.id} was cancelled"
                changed += self.cancel(dependent, reason, now)
            elif finished.status is S.COMPLETED and not self._unmet_dependencies(dependent):
                self._move(dependent, S.QUEUED)
                changed.append(dependent)
        return changed


def _ready_item(entry: TaskEntry, order: int) -> tuple[int, int, str]:
    """Ready tasks run by priority (highest first), then in the order they were added."""
    return (-entry.priority.rank, order, entry.id)


# An error's message is for people reading a status; the store keeps it whole. The batch keeps a
# bounded prefix so that many failures cannot outgrow its state.
ERROR_MESSAGE_LIMIT = 300


def _compact_error(error: TaskError | None) -> TaskError | None:
    if error is None or len(error.message) <= ERROR_MESSAGE_LIMIT:
        return error
    message = error.message[: ERROR_MESSAGE_LIMIT - 1] + "…"
    return error.model_copy(update={"message": message})

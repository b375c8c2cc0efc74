"""What a batch keeps per task, stored as columns.

A batch rebuilds its table from the packed state at every continue-as-new, inside one workflow task
that the SDK fails as a deadlock after 2 s without a yield. An object per task is too slow to
rebuild for a million tasks within that (docs/scale.md). Columns are built by C code instead: the
id list and the attempt counts come straight from the decoded JSON, status and priority are byte
strings with one ASCII character per task (the packed form's own characters), and what only some
tasks have (dependencies, a due time, an error, ...) sits in maps by position. A `TaskRow` reads
one task through the columns, so only the tasks a workflow task touches ever become objects.

`TaskEntry` is the same state as one plain record per task, for building a table from specs and for
tests and tools that look at every task."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from taskpool.domain.tasks import Priority, TaskError, TaskSpec, TaskStatus

V = TypeVar("V")

STATUS_CODES: dict[TaskStatus, int] = {
    TaskStatus.PENDING: ord("p"),
    TaskStatus.SCHEDULED: ord("s"),
    TaskStatus.QUEUED: ord("q"),
    TaskStatus.ASSIGNED: ord("a"),
    TaskStatus.IN_PROGRESS: ord("i"),
    TaskStatus.BLOCKED: ord("b"),
    TaskStatus.REVIEW: ord("r"),
    TaskStatus.COMPLETED: ord("c"),
    TaskStatus.FAILED: ord("f"),
    TaskStatus.CANCELLED: ord("x"),
}
STATUS_BY_CODE: dict[int, TaskStatus] = {code: status for status, code in STATUS_CODES.items()}
PRIORITY_CODES: dict[Priority, int] = {priority: ord(str(priority.rank)) for priority in Priority}
PRIORITY_BY_CODE: dict[int, Priority] = {code: p for p, code in PRIORITY_CODES.items()}


@dataclass(slots=True)
class TaskEntry:
    """One task's scheduling state as a plain record. The definition (input, label, kind,
    metadata), results, usage and timestamps live in the task store."""

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


@dataclass(slots=True)
class TaskColumns:
    """Every task's state, by position (the order tasks were added). The sparse maps hold only
    the tasks that have the field."""

    ids: list[str] = field(default_factory=list)
    status: bytearray = field(default_factory=bytearray)
    priority: bytearray = field(default_factory=bytearray)
    attempts: list[int] = field(default_factory=list)
    retries: dict[int, int] = field(default_factory=dict)
    depends_on: dict[int, tuple[str, ...]] = field(default_factory=dict)
    scheduled_for: dict[int, datetime] = field(default_factory=dict)
    errors: dict[int, TaskError] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    started_at: dict[int, datetime] = field(default_factory=dict)
    _position: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not len(self.status) == len(self.priority) == len(self.attempts) == len(self.ids):
            raise ValueError("the task columns disagree in length")

    @property
    def position(self) -> dict[str, int]:
        """Position by id. Built (in C) when first needed rather than with the columns: for a
        million tasks it is a fifth of a second, which then falls in a later workflow task than
        the rebuild."""
        if self._position is None:
            position = dict(zip(self.ids, range(len(self.ids)), strict=True))
            if len(position) != len(self.ids):
                counted = Counter(self.ids)
                duplicate = next(task_id for task_id, n in counted.items() if n > 1)
                raise ValueError(f"task id {duplicate!r} is already in the batch")
            self._position = position
        return self._position

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_entries(cls, entries: Iterable[TaskEntry]) -> TaskColumns:
        columns = cls()
        for entry in entries:
            columns.append(entry)
        return columns

    def append(self, entry: TaskEntry) -> int:
        """Add a task at the end; returns its position."""
        if entry.id in self.position:
            raise ValueError(f"task id {entry.id!r} is already in the batch")
        index = len(self.ids)
        self.ids.append(entry.id)
        self.position[entry.id] = index
        self.status.append(STATUS_CODES[entry.status])
        self.priority.append(PRIORITY_CODES[entry.priority])
        self.attempts.append(entry.attempts)
        put_sparse(self.retries, index, entry.retry_count or None)
        put_sparse(self.depends_on, index, tuple(entry.depends_on) or None)
        put_sparse(self.scheduled_for, index, entry.scheduled_for)
        put_sparse(self.errors, index, entry.error)
        put_sparse(self.reasons, index, entry.status_reason)
        put_sparse(self.started_at, index, entry.started_at)
        return index

    def entry(self, index: int) -> TaskEntry:
        return TaskEntry(
            id=self.ids[index],
            priority=PRIORITY_BY_CODE[self.priority[index]],
            depends_on=self.depends_on.get(index, ()),
            scheduled_for=self.scheduled_for.get(index),
            status=STATUS_BY_CODE[self.status[index]],
            attempts=self.attempts[index],
            retry_count=self.retries.get(index, 0),
            error=self.errors.get(index),
            status_reason=self.reasons.get(index),
            started_at=self.started_at.get(index),
        )

    def entries(self) -> list[TaskEntry]:
        return [self.entry(index) for index in range(len(self.ids))]

    def positions_with(self, status: TaskStatus) -> Iterator[int]:
        """Positions of the tasks in `status`, in order; the search runs in C."""
        column, code = self.status, STATUS_CODES[status]
        index = column.find(code)
        while index != -1:
            yield index
            index = column.find(code, index + 1)


class TaskRow:
    """One task of a table, read and written through its columns. Status and attempts change
    only through the table, which keeps its counts and queues in step with them."""

    __slots__ = ("_columns", "index")

    def __init__(self, columns: TaskColumns, index: int) -> None:
        self._columns = columns
        self.index = index

    @property
    def id(self) -> str:
        return self._columns.ids[self.index]

    @property
    def priority(self) -> Priority:
        return PRIORITY_BY_CODE[self._columns.priority[self.index]]

    @property
    def depends_on(self) -> tuple[str, ...]:
        return self._columns.depends_on.get(self.index, ())

    @property
    def scheduled_for(self) -> datetime | None:
        return self._columns.scheduled_for.get(self.index)

    @property
    def status(self) -> TaskStatus:
        return STATUS_BY_CODE[self._columns.status[self.index]]

    @property
    def attempts(self) -> int:
        return self._columns.attempts[self.index]

    @property
    def retry_count(self) -> int:
        return self._columns.retries.get(self.index, 0)

    @property
    def error(self) -> TaskError | None:
        return self._columns.errors.get(self.index)

    @property
    def status_reason(self) -> str | None:
        return self._columns.reasons.get(self.index)

    @status_reason.setter
    def status_reason(self, reason: str | None) -> None:
        put_sparse(self._columns.reasons, self.index, reason)

    @property
    def started_at(self) -> datetime | None:
        return self._columns.started_at.get(self.index)

    @started_at.setter
    def started_at(self, at: datetime | None) -> None:
        put_sparse(self._columns.started_at, self.index, at)

    def __repr__(self) -> str:
        return f"TaskRow({self._columns.entry(self.index)!r})"


def put_sparse(sparse: dict[int, V], index: int, value: V | None) -> None:
    """Set a task's entry in a sparse map, or remove it for None."""
    if value is None:
        sparse.pop(index, None)
    else:
        sparse[index] = value

"""What every task-store backend shares: the columns, value encoding and the merging rules.

Backends differ only in SQL and connections. Values cross the boundary in one canonical form:
timestamps as fixed-width ISO 8601 UTC text (so text order is time order), JSON as compact text,
enums as their values. A backend that stores native types converts at its own edge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from pydantic import JsonValue, TypeAdapter

from taskpool.domain.records import RegisterTasksRequest, TaskRecord, TaskRecordUpdate
from taskpool.domain.tasks import (
    EventType,
    TaskError,
    TaskEvent,
    TaskProgress,
    TaskSpec,
    TaskStatus,
    TokenUsage,
)
from taskpool.domain.turns import ChatMessage, TurnRecord

SCHEMA_VERSION = 1

TASK_COLUMNS: tuple[str, ...] = (
    "batch_id",
    "task_id",
    "seq",
    "label",
    "kind",
    "priority",
    "input",
    "metadata",
    "status",
    "attempt",
    "retry_count",
    "progress",
    "result",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "llm_calls",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
)

# No `seq`: the database numbers events as they are inserted, and that is the order they are read.
EVENT_COLUMNS: tuple[str, ...] = ("batch_id", "task_id", "key", "type", "at", "message", "data")

# A model turn of an attempt: the messages the workflow added before the call and the model's reply
# (JSON), the result a complete_task in it gave (JSON), and when it was stored.
TURN_COLUMNS: tuple[str, ...] = (
    "batch_id",
    "task_id",
    "attempt",
    "turn",
    "messages",
    "result",
    "at",
)

# The event that explains a task registered in a status other than pending.
STATUS_EVENT_TYPES: Mapping[TaskStatus, EventType] = {
    TaskStatus.PENDING: EventType.CREATED,
    TaskStatus.SCHEDULED: EventType.SCHEDULED,
    TaskStatus.QUEUED: EventType.QUEUED,
    TaskStatus.ASSIGNED: EventType.ASSIGNED,
    TaskStatus.IN_PROGRESS: EventType.STARTED,
    TaskStatus.BLOCKED: EventType.BLOCKED,
    TaskStatus.REVIEW: EventType.REVIEW,
    TaskStatus.COMPLETED: EventType.COMPLETED,
    TaskStatus.FAILED: EventType.FAILED,
    TaskStatus.CANCELLED: EventType.CANCELLED,
}

CREATED_EVENT_KEY = "created"


class UnknownTaskError(KeyError):
    """An update names a task its batch never registered; the whole update list is refused."""

    def __init__(self, batch_id: str, task_id: str) -> None:
        super().__init__(batch_id, task_id)
        self.batch_id = batch_id
        self.task_id = task_id

    def __str__(self) -> str:
        # KeyError's own str() shows the repr of its args; people need a sentence.
        return (
            f"task {self.task_id!r} is not registered in batch {self.batch_id!r}; "
            "register it before recording updates for it"
        )


class StoreSchemaError(RuntimeError):
    """The database was written by a newer taskpool than this one."""


class Row(Protocol):
    """A result row addressable by column name (sqlite3.Row, a dict, a driver's record)."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True)
class BatchSummary:
    """One batch as the store sees it: how many tasks, in which states, and when."""

    batch_id: str
    total: int
    counts: dict[str, int]
    created_at: datetime
    updated_at: datetime


# --- Values ---------------------------------------------------------------------------------------


def encode_time(value: datetime) -> str:
    """Fixed-width UTC ISO 8601; naive datetimes are taken to be UTC already."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def encode_optional_time(value: datetime | None) -> str | None:
    return None if value is None else encode_time(value)


def decode_time(value: str | datetime) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def decode_optional_time(value: str | datetime | None) -> datetime | None:
    return None if value is None else decode_time(value)


# One encoder for all calls: json.dumps builds a new one whenever options differ from its defaults.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_json(value: JsonValue) -> str:
    return _JSON.encode(value)


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --- Registration ---------------------------------------------------------------------------------


def unique_specs(tasks: Iterable[TaskSpec]) -> list[TaskSpec]:
    """Specs with repeated ids dropped; the first definition wins, as it would in the database."""
    seen: set[str] = set()
    specs: list[TaskSpec] = []
    for spec in tasks:
        if spec.id not in seen:
            seen.add(spec.id)
            specs.append(spec)
    return specs


def registration_rows(
    request: RegisterTasksRequest, specs: Sequence[TaskSpec], first_seq: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Task rows (TASK_COLUMNS order) and event rows (EVENT_COLUMNS order) for new tasks.

    Each task gets a `created` event, plus one for its initial status when that is not pending.
    Rows are built directly, without a model per event: registration handles tens of thousands of
    tasks in one call.
    """
    batch_id = request.batch_id
    at = encode_time(request.at)
    progress = TaskProgress().model_dump_json()
    task_rows: list[tuple[Any, ...]] = []
    event_rows: list[tuple[Any, ...]] = []
    for seq, spec in enumerate(specs, start=first_seq):
        status = request.initial_status.get(spec.id, TaskStatus.PENDING)
        task_rows.append(
            (
                batch_id,
                spec.id,
                seq,
                spec.display_label,
                spec.kind,
                spec.priority.value,
                encode_json(spec.input),
                encode_json(spec.metadata),
                status.value,
                0,
                0,
                progress,
                None,
                None,
                0,
                0,
                0,
                at,
                None,
                None,
                at,
            )
        )
        event_rows.append(
            (batch_id, spec.id, CREATED_EVENT_KEY, EventType.CREATED.value, at, None, "{}")
        )
        if status is not TaskStatus.PENDING:
            event_rows.append(
                (
                    batch_id,
                    spec.id,
                    f"initial:{status.value}",
                    STATUS_EVENT_TYPES[status].value,
                    at,
                    f"registered as {status.value}",
                    encode_json({"status": status.value}),
                )
            )
    return task_rows, event_rows


def event_row(batch_id: str, task_id: str, event: TaskEvent) -> tuple[Any, ...]:
    """An event as a row in EVENT_COLUMNS order."""
    return (
        batch_id,
        task_id,
        event.key,
        event.type.value,
        encode_time(event.at),
        event.message,
        encode_json(event.data),
    )


# --- Updates --------------------------------------------------------------------------------------


# The statuses whose update clears the task's result, unless it keeps it.
_RESULT_CLEARED = frozenset({TaskStatus.QUEUED, TaskStatus.FAILED, TaskStatus.CANCELLED})


def update_assignments(update: TaskRecordUpdate, now: datetime) -> dict[str, Any]:
    """The columns an update sets, with encoded values; the merging rules live here.

    Only fields the update carries are set (None means unchanged). Going back to queued is a
    retry: the previous attempt's result, error, completion time and progress are cleared unless
    the update sets them itself, or keeps the result (one sent back from review, which the next
    attempt revises). A failed or cancelled task's result is cleared too, unless kept (a result
    cancelled in review). A result taken from a stored turn is a FromTurn the backend resolves.
    `updated_at` is the update's latest event time, else `now`, so applying the same update twice
    leaves the same record.
    """
    values: dict[str, Any] = {}
    if update.status is TaskStatus.QUEUED:
        values.update(error=None, completed_at=None, progress=TaskProgress().model_dump_json())
    if update.status in _RESULT_CLEARED and not update.keep_result:
        # A queued task's next attempt starts afresh; a failed or cancelled task has no result.
        values["result"] = None
    if update.status is not None:
        values["status"] = update.status.value
    if update.attempt is not None:
        values["attempt"] = update.attempt
    if update.retry_count is not None:
        values["retry_count"] = update.retry_count
    if update.progress is not None:
        values["progress"] = update.progress.model_dump_json()
    if update.result is not None:
        values["result"] = encode_json(update.result)
    if update.result_turn is not None:
        values["result"] = FromTurn(
            update.batch_id, update.task_id, update.attempt or 0, update.result_turn
        )
    if update.error is not None:
        values["error"] = update.error.model_dump_json()
    if update.usage is not None:
        values["prompt_tokens"] = update.usage.prompt_tokens
        values["completion_tokens"] = update.usage.completion_tokens
    if update.llm_calls is not None:
        values["llm_calls"] = update.llm_calls
    if update.started_at is not None:
        values["started_at"] = encode_time(update.started_at)
    if update.completed_at is not None:
        values["completed_at"] = encode_time(update.completed_at)
    if update.input is not None:
        values["input"] = encode_json(update.input)
    if update.priority is not None:
        values["priority"] = update.priority.value
    latest = max((event.at for event in update.events), key=decode_time, default=now)
    values["updated_at"] = encode_time(latest)
    return values


class FromTurn(NamedTuple):
    """A value a backend copies from a stored turn in the same statement: the `result` of
    (batch_id, task_id, attempt, turn)."""

    batch_id: str
    task_id: str
    attempt: int
    turn: int


def current_attempt_condition(mark: str) -> str:
    """The condition an `only_if_current` update applies under, with `mark` as the backend's
    placeholder: the task is not cancelled, and its record shows an earlier attempt, or this one
    not yet ended. Its values come from current_attempt_params."""
    return (
        f"status <> {mark} AND (attempt < {mark} OR "
        f"(attempt = {mark} AND status NOT IN ({mark}, {mark}, {mark})))"
    )


def current_attempt_params(update: TaskRecordUpdate) -> tuple[Any, ...]:
    attempt = update.attempt or 0
    return (
        TaskStatus.CANCELLED.value,
        attempt,
        attempt,
        TaskStatus.COMPLETED.value,
        TaskStatus.FAILED.value,
        TaskStatus.REVIEW.value,
    )


# --- Turns ----------------------------------------------------------------------------------------

_MESSAGES = TypeAdapter(list[ChatMessage])


def turn_row(turn: TurnRecord) -> tuple[Any, ...]:
    """A turn as a row in TURN_COLUMNS order."""
    return (
        turn.batch_id,
        turn.task_id,
        turn.attempt,
        turn.turn,
        _MESSAGES.dump_json(turn.messages, exclude_defaults=True).decode(),
        None if turn.result is None else encode_json(turn.result),
        encode_time(turn.at),
    )


def turn_from_row(row: Row) -> TurnRecord:
    return TurnRecord(
        batch_id=row["batch_id"],
        task_id=row["task_id"],
        attempt=row["attempt"],
        turn=row["turn"],
        messages=_MESSAGES.validate_json(row["messages"]),
        result=decode_json(row["result"]),
        at=decode_time(row["at"]),
    )


# --- Reading --------------------------------------------------------------------------------------


def event_from_row(row: Row) -> TaskEvent:
    return TaskEvent(
        key=row["key"],
        type=EventType(row["type"]),
        at=decode_time(row["at"]),
        message=row["message"],
        data=decode_json(row["data"]) or {},
    )


def record_from_row(row: Row, events: Sequence[TaskEvent] = ()) -> TaskRecord:
    error = row["error"]
    return TaskRecord(
        batch_id=row["batch_id"],
        task_id=row["task_id"],
        label=row["label"],
        kind=row["kind"],
        priority=row["priority"],
        input=decode_json(row["input"]),
        metadata=decode_json(row["metadata"]) or {},
        status=TaskStatus(row["status"]),
        attempt=row["attempt"],
        retry_count=row["retry_count"],
        progress=TaskProgress.model_validate_json(row["progress"])
        if row["progress"]
        else TaskProgress(),
        result=decode_json(row["result"]),
        error=None if error is None else TaskError.model_validate_json(error),
        usage=TokenUsage(
            prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"]
        ),
        llm_calls=row["llm_calls"],
        created_at=decode_time(row["created_at"]),
        started_at=decode_optional_time(row["started_at"]),
        completed_at=decode_optional_time(row["completed_at"]),
        updated_at=decode_time(row["updated_at"]),
        events=list(events),
    )


def summarize_batches(
    rows: Iterable[tuple[str, str, int, str | datetime, str | datetime]],
) -> list[BatchSummary]:
    """Fold (batch_id, status, count, first created, last updated) rows into summaries, oldest
    batch first."""
    folded: dict[str, tuple[dict[str, int], datetime, datetime]] = {}
    for batch_id, status, count, created, updated in rows:
        counts, first, last = folded.get(batch_id, ({}, decode_time(created), decode_time(updated)))
        counts[status] = counts.get(status, 0) + count
        folded[batch_id] = (
            counts,
            min(first, decode_time(created)),
            max(last, decode_time(updated)),
        )
    summaries = [
        BatchSummary(
            batch_id=batch_id,
            total=sum(counts.values()),
            counts=counts,
            created_at=first,
            updated_at=last,
        )
        for batch_id, (counts, first, last) in folded.items()
    ]
    return sorted(summaries, key=lambda summary: (summary.created_at, summary.batch_id))

"""A task as the user defines it, and what an attempt of it records: status, priority, usage,
progress, errors and events.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, JsonValue, field_validator

from taskpool.domain.base import StrictModel


class TaskStatus(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    BLOCKED = "blocked"
    REVIEW = "review"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def ends_attempt(self) -> bool:
        """Whether an attempt's agent loop stops here: at the end, or with a result for review."""
        return self in TERMINAL_STATUSES or self is TaskStatus.REVIEW


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Higher runs first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {
    Priority.LOW: 1,
    Priority.NORMAL: 2,
    Priority.HIGH: 3,
    Priority.URGENT: 4,
    Priority.CRITICAL: 5,
}


class EventType(StrEnum):
    CREATED = "created"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    BLOCKED = "blocked"
    ASSIGNED = "assigned"
    STARTED = "started"
    PROGRESS = "progress"
    COMMENT = "comment"
    REVIEW = "review"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRIED = "retried"
    # A waiting task was given another priority; the event's data has the old and the new.
    PRIORITY = "priority"


# A task's input, as a task file gives it.
TaskInput = str | dict[str, JsonValue]


class TaskSpec(StrictModel):
    """One unit of work, as written in an input file."""

    id: str = Field(min_length=1, max_length=200)
    input: TaskInput
    label: str | None = None
    kind: str = "summarize"
    priority: Priority = Priority.NORMAL
    depends_on: list[str] = Field(default_factory=list)
    scheduled_for: datetime | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id_is_usable_in_workflow_ids(cls, value: str) -> str:
        if value != value.strip() or any(ch in value for ch in "/\n\r\t"):
            raise ValueError("must not contain '/', tabs, newlines or surrounding spaces")
        return value

    @property
    def display_label(self) -> str:
        return self.label or self.id


class TaskError(StrictModel):
    """A structured failure: a stable code for machines, a message for people."""

    code: str
    message: str
    retryable: bool = False


class TokenUsage(StrictModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class TaskProgress(StrictModel):
    percent: float = 0.0
    step: str | None = None
    eta_seconds: float | None = None


class TaskEvent(StrictModel):
    """One line of a task's history in the store. `key` makes the write idempotent."""

    key: str
    type: EventType
    at: datetime
    message: str | None = None
    data: dict[str, JsonValue] = Field(default_factory=dict)

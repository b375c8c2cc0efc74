"""The task store's records and the writes that change them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

from pydantic import Field, JsonValue

from taskpool.domain.base import StrictModel
from taskpool.domain.tasks import (
    Priority,
    TaskError,
    TaskEvent,
    TaskInput,
    TaskProgress,
    TaskSpec,
    TaskStatus,
    TokenUsage,
)


class TaskRecordUpdate(StrictModel):
    """A change to one task's record in the store, with the events that explain it."""

    batch_id: str
    task_id: str
    status: TaskStatus | None = None
    attempt: int | None = None
    progress: TaskProgress | None = None
    result: JsonValue = None
    # The turn of this update's attempt whose stored complete_task result becomes the task's
    # result (taskpool.domain.turns.TurnRecord): results go from the model to the store directly,
    # never through a workflow's history. Takes the place of `result`.
    result_turn: int | None = None
    error: TaskError | None = None
    usage: TokenUsage | None = None
    llm_calls: int | None = None
    retry_count: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # A retry's new input replaces the task's definition input.
    input: TaskInput | None = None
    # A priority changed while the task waited (the batch's set_priority update).
    priority: Priority | None = None
    # Going back to queued, failing or being cancelled clears the last result; a result sent back
    # from review (the next attempt revises it) or cancelled in review keeps it.
    keep_result: bool = False
    events: list[TaskEvent] = Field(default_factory=list)
    # A write of a running attempt, which may land late (the model activity that carries it can
    # still be running after its workflow was cancelled, or be a retry of a turn the attempt has
    # moved past): it is skipped, events and all, once the record shows a later attempt, a
    # cancelled task, or this attempt ended.
    only_if_current: bool = False


class RecordTasksRequest(StrictModel):
    """Lifecycle writes, several tasks or several changes at once to keep activities few."""

    updates: list[TaskRecordUpdate]


class RegisterTasksRequest(StrictModel):
    batch_id: str
    tasks: list[TaskSpec]
    initial_status: dict[str, TaskStatus]
    at: datetime

    @classmethod
    def in_groups(
        cls,
        batch_id: str,
        tasks: Sequence[TaskSpec],
        initial_status: Mapping[str, TaskStatus],
        at: datetime,
        size: int,
    ) -> Iterator[RegisterTasksRequest]:
        """The registration of `tasks` as requests of at most `size` tasks each, in order."""
        for start in range(0, len(tasks), size):
            group = list(tasks[start : start + size])
            yield cls(
                batch_id=batch_id,
                tasks=group,
                initial_status={spec.id: initial_status[spec.id] for spec in group},
                at=at,
            )


class TaskRecord(StrictModel):
    """A task as the store holds it: what `results` exports and people read."""

    batch_id: str
    task_id: str
    label: str
    kind: str
    priority: Priority
    input: TaskInput
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    status: TaskStatus
    attempt: int = 0
    retry_count: int = 0
    progress: TaskProgress = Field(default_factory=TaskProgress)
    result: JsonValue = None
    error: TaskError | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    llm_calls: int = 0
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime
    events: list[TaskEvent] = Field(default_factory=list)

    def definition(self) -> TaskSpec:
        return TaskSpec(
            id=self.task_id,
            input=self.input,
            label=self.label if self.label != self.task_id else None,
            kind=self.kind,
            priority=self.priority,
            metadata=self.metadata,
        )

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds()

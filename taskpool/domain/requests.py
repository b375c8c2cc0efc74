"""Signal, query and update payloads of the batch workflow: a public API that the Temporal UI,
the `temporal` CLI and starter.py all use (docs/design.md section 4).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from taskpool.domain.base import LenientModel
from taskpool.domain.tasks import Priority, TaskInput, TaskSpec, TaskStatus


class PauseRequest(LenientModel):
    reason: str | None = None


class ResumeRequest(LenientModel):
    pass


class CancelRequest(LenientModel):
    reason: str | None = None


class TasksQuery(LenientModel):
    status: TaskStatus | None = None
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)


class TaskQuery(LenientModel):
    task_id: str


class AddTasksRequest(LenientModel):
    tasks: list[TaskSpec]


class RetryTasksRequest(LenientModel):
    task_ids: list[str] = Field(default_factory=list)
    all_failed: bool = False
    # New inputs for some of the tasks retried, by task id: the store's definition is replaced
    # before the task is queued again, so its next attempt reads the new input.
    inputs: dict[str, TaskInput] = Field(default_factory=dict)


# Reviewers write prose, not documents; the bound keeps a batch's state small while tasks wait.
FEEDBACK_LIMIT = 4000


ReviewDecision = Literal["approve", "reject"]


class ReviewTasksRequest(LenientModel):
    """Approve results waiting in review, or send them back to be redone with feedback."""

    task_ids: list[str] = Field(default_factory=list)
    all_in_review: bool = False
    decision: ReviewDecision
    # Required to reject (it tells the next attempt what to change); a note with an approval.
    feedback: str | None = Field(default=None, max_length=FEEDBACK_LIMIT)


class CancelTasksRequest(LenientModel):
    task_ids: list[str]
    reason: str | None = None


class SetConcurrencyRequest(LenientModel):
    concurrency: int = Field(ge=1, le=1000)


class SetPriorityRequest(LenientModel):
    """Give tasks that have not started another priority: they run before (or after) the tasks
    they now outrank (or trail)."""

    task_ids: list[str] = Field(min_length=1)
    priority: Priority

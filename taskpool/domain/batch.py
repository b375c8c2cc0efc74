"""What the batch workflow carries and answers: its input across continue-as-new, a task child's
input and outcome, and the views its queries return.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, JsonValue

from taskpool.domain.base import LenientModel, StrictModel
from taskpool.domain.records import TaskRecordUpdate
from taskpool.domain.tasks import Priority, TaskError, TaskStatus, TokenUsage


class BatchState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    # Nothing left to run, and results waiting for someone to approve or send back.
    AWAITING_REVIEW = "awaiting_review"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


ModelCalls = Literal["activity", "local"]


class AgentSettings(StrictModel):
    """Per-batch knobs for the agent loop. No secrets: those stay in the worker's environment."""

    model: str | None = None
    max_turns: int = Field(default=8, ge=1, le=50)
    llm_timeout_seconds: float = Field(default=120.0, gt=0)
    llm_heartbeat_seconds: float = Field(default=10.0, gt=0)
    llm_max_attempts: int = Field(default=8, ge=1)
    # "local" runs each model turn as a local activity inside the task's workflow task: fewer
    # server round trips per task, for short model calls (docs/design.md, "One way per turn").
    model_calls: ModelCalls = "activity"
    # A result the agent completes with waits in `review` until a person approves it or sends it
    # back with feedback for another attempt.
    review: bool = False


class BatchOptions(StrictModel):
    concurrency: int = Field(default=10, ge=1, le=1000)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    # Continue as new after this many task reports in one run, in addition to whenever Temporal
    # suggests it. Tests set it low to exercise the hand-over.
    continue_as_new_after: int = Field(default=2000, ge=1)


class PackedTasks(StrictModel):
    """The batch's per-task state in one compressed payload (see taskpool.domain.packing).

    Definitions (input, label, kind, metadata) live in the task store; what is packed here is
    what scheduling needs: ids, status, priority, attempts, dependencies, due times and errors.
    """

    encoding: str = "json+lzma+base64/1"
    count: int = 0
    data: str = ""


class BatchRun(StrictModel):
    """Everything a batch run needs; the same model starts the batch and carries it across
    continue-as-new. Task definitions are in the task store before the batch starts."""

    tasks: PackedTasks = Field(default_factory=PackedTasks)
    options: BatchOptions = Field(default_factory=BatchOptions)
    paused: bool = False
    pause_reason: str | None = None
    cancel_reason: str | None = None
    started_at: datetime | None = None
    run_number: int = 1
    # Every task has its first status (not pending) in the state and in the store: the starter
    # registers them so, otherwise the first run settles and writes them.
    registered: bool = False
    # Totals over every task, which the packed per-task state does not repeat.
    usage: TokenUsage = Field(default_factory=TokenUsage)
    llm_calls: int = 0
    recent_failures: list[str] = Field(default_factory=list)
    # Webhook deliveries started so far (their ids count on), and whether the batch has announced
    # that it awaits review since it last had something to run.
    webhooks_sent: int = 0
    review_announced: bool = False
    # Feedback on results sent back from review, by task id, until the task's next attempt starts.
    rework_feedback: dict[str, str] = Field(default_factory=dict)


class TaskRunInput(StrictModel):
    """A task child's input: which task (its definition is read from the store) and attempt."""

    batch_id: str
    task_id: str
    attempt: int = 1
    agent: AgentSettings = Field(default_factory=AgentSettings)
    # Why this attempt redoes a result sent back from review: the reviewer's words.
    rework_feedback: str | None = None


WebhookEvent = Literal["batch.finished", "batch.awaiting_review"]


class WebhookDelivery(StrictModel):
    """What a batch's webhook POSTs: the event and where the batch stands."""

    event: WebhookEvent
    # The same across retries of one delivery, so a receiver can take it once.
    delivery_id: str
    batch_id: str
    state: BatchState
    total: int
    counts: dict[str, int]
    usage: TokenUsage = Field(default_factory=TokenUsage)
    llm_calls: int = 0
    at: datetime


class TaskOutcome(StrictModel):
    task_id: str
    attempt: int
    status: TaskStatus
    result: JsonValue = None
    error: TaskError | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    llm_calls: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # The attempt's last store write, which the batch queues with its own writes: a finished
    # task costs its workflow no write of its own (docs/design.md, "One way per turn").
    record: TaskRecordUpdate | None = None


class TaskView(StrictModel):
    """A task as the batch sees it. Label, kind, usage and timestamps come from the task store
    (the batch keeps only what scheduling needs); the batch's own queries leave them unset."""

    id: str
    label: str | None = None
    kind: str | None = None
    priority: Priority
    status: TaskStatus
    attempts: int
    retry_count: int
    error: TaskError | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    llm_calls: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    status_reason: str | None = None
    depends_on: list[str] = Field(default_factory=list)

    @property
    def display_label(self) -> str:
        return self.label or self.id


class TaskPage(StrictModel):
    total: int
    offset: int
    items: list[TaskView]


class BatchStatus(StrictModel):
    batch_id: str
    state: BatchState
    total: int
    counts: dict[str, int]
    concurrency: int
    in_flight: int
    progress_percent: float
    paused: bool
    pause_reason: str | None = None
    # Whether every running task has been told the current pause state (a pause reaches running
    # tasks a moment after the batch; from then on none starts another model call). A batch with
    # local model turns tells its tasks nothing (they finish), so it is true at once.
    pause_delivered: bool = True
    cancel_reason: str | None = None
    usage: TokenUsage
    llm_calls: int
    started_at: datetime | None = None
    run_number: int
    recent_errors: list[TaskView] = Field(default_factory=list)


class BatchResult(StrictModel):
    batch_id: str
    state: BatchState
    total: int
    counts: dict[str, int]
    usage: TokenUsage


class TaskRef(StrictModel):
    task_id: str
    attempt: int


class ChildControl(LenientModel):
    """The batch's instruction to one of its task children: pause or resume its agent loop, and
    (sent before the batch continues as new) report the outcome by signal from now on."""

    paused: bool
    report_by_signal: bool = False

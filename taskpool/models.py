"""The domain's data: what a task is, what the batch remembers, and every message's payload.

Everything here is plain pydantic, deterministic and free of I/O, so workflow code can import it.
Each workflow, activity, signal, query and update takes exactly one of these models; new fields are
added with defaults so that running workflows keep decoding old payloads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator


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


class BatchState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    # Nothing left to run, and results waiting for someone to approve or send back.
    AWAITING_REVIEW = "awaiting_review"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class _Lenient(BaseModel):
    """Payloads typed by people in the Temporal UI or CLI: unknown keys are ignored, not fatal."""

    model_config = ConfigDict(extra="ignore")


# --- The task as the user defines it ------------------------------------------------------------


# A task's input, as a task file gives it.
TaskInput = str | dict[str, JsonValue]


class TaskSpec(_Model):
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


class TaskError(_Model):
    """A structured failure: a stable code for machines, a message for people."""

    code: str
    message: str
    retryable: bool = False


class TokenUsage(_Model):
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


class TaskProgress(_Model):
    percent: float = 0.0
    step: str | None = None
    eta_seconds: float | None = None


# --- Workflow inputs -----------------------------------------------------------------------------


ModelCalls = Literal["activity", "local"]


class AgentSettings(_Model):
    """Per-batch knobs for the agent loop. No secrets: those stay in the worker's environment."""

    model: str | None = None
    max_turns: int = Field(default=8, ge=1, le=50)
    llm_timeout_seconds: float = Field(default=120.0, gt=0)
    llm_heartbeat_seconds: float = Field(default=10.0, gt=0)
    llm_max_attempts: int = Field(default=8, ge=1)
    # "local" runs each model turn as a local activity inside the task's workflow task: fewer
    # server round trips per task, for short model calls (see README, "Local model turns").
    model_calls: ModelCalls = "activity"
    # A result the agent completes with waits in `review` until a person approves it or sends it
    # back with feedback for another attempt.
    review: bool = False


class BatchOptions(_Model):
    concurrency: int = Field(default=10, ge=1, le=1000)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    # Continue as new after this many task reports in one run, in addition to whenever Temporal
    # suggests it. Tests set it low to exercise the hand-over.
    continue_as_new_after: int = Field(default=2000, ge=1)


class PackedTasks(_Model):
    """The batch's per-task state in one compressed payload (see taskpool.packing).

    Definitions (input, label, kind, metadata) live in the task store; what is packed here is
    what scheduling needs: ids, status, priority, attempts, dependencies, due times and errors.
    """

    encoding: str = "json+lzma+base64/1"
    count: int = 0
    data: str = ""


class BatchRun(_Model):
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
    # Set for every batch started since webhooks exist: one started before (no field in its
    # input) sends none, so its history replays.
    webhooks: bool = False
    # Webhook deliveries started so far (their ids count on), and whether the batch has announced
    # that it awaits review since it last had something to run.
    webhooks_sent: int = 0
    review_announced: bool = False
    # Feedback on results sent back from review, by task id, until the task's next attempt starts.
    rework_feedback: dict[str, str] = Field(default_factory=dict)


class TaskRunInput(_Model):
    """A task child's input: which task (its definition is read from the store) and attempt."""

    batch_id: str
    task_id: str
    attempt: int = 1
    agent: AgentSettings = Field(default_factory=AgentSettings)
    # Set for every child started since a model turn records its own tool calls: a child started
    # before that (no field in its input) keeps writing each turn itself, so its history replays.
    # A field rather than workflow.patched(): a patch upserts a search attribute on every child,
    # one more event and visibility write per task.
    turns_record_themselves: bool = False
    # Why this attempt redoes a result sent back from review: the reviewer's words.
    rework_feedback: str | None = None


WebhookEvent = Literal["batch.finished", "batch.awaiting_review"]


class WebhookDelivery(_Model):
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


class TaskOutcome(_Model):
    task_id: str
    attempt: int
    status: TaskStatus
    result: JsonValue = None
    error: TaskError | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    llm_calls: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None


# --- Signals, queries and updates (a public API: see DESIGN.md section 4) ------------------------


class PauseRequest(_Lenient):
    reason: str | None = None


class ResumeRequest(_Lenient):
    pass


class CancelRequest(_Lenient):
    reason: str | None = None


class TasksQuery(_Lenient):
    status: TaskStatus | None = None
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)


class TaskQuery(_Lenient):
    task_id: str


class AddTasksRequest(_Lenient):
    tasks: list[TaskSpec]


class RetryTasksRequest(_Lenient):
    task_ids: list[str] = Field(default_factory=list)
    all_failed: bool = False
    # New inputs for some of the tasks retried, by task id: the store's definition is replaced
    # before the task is queued again, so its next attempt reads the new input.
    inputs: dict[str, TaskInput] = Field(default_factory=dict)


# Reviewers write prose, not documents; the bound keeps a batch's state small while tasks wait.
FEEDBACK_LIMIT = 4000


ReviewDecision = Literal["approve", "reject"]


class ReviewTasksRequest(_Lenient):
    """Approve results waiting in review, or send them back to be redone with feedback."""

    task_ids: list[str] = Field(default_factory=list)
    all_in_review: bool = False
    decision: ReviewDecision
    # Required to reject (it tells the next attempt what to change); a note with an approval.
    feedback: str | None = Field(default=None, max_length=FEEDBACK_LIMIT)


class CancelTasksRequest(_Lenient):
    task_ids: list[str]
    reason: str | None = None


class SetConcurrencyRequest(_Lenient):
    concurrency: int = Field(ge=1, le=1000)


class TaskView(_Model):
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


class TaskPage(_Model):
    total: int
    offset: int
    items: list[TaskView]


class BatchStatus(_Model):
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


class BatchResult(_Model):
    batch_id: str
    state: BatchState
    total: int
    counts: dict[str, int]
    usage: TokenUsage


class TaskRef(_Model):
    task_id: str
    attempt: int


class ChildControl(_Lenient):
    """The batch's instruction to one of its task children: pause or resume its agent loop, and
    (sent before the batch continues as new) report the outcome by signal from now on."""

    paused: bool
    report_by_signal: bool = False


# --- Activities ----------------------------------------------------------------------------------


class ToolSpec(_Model):
    name: str
    description: str
    parameters: dict[str, Any]


class ToolCall(_Model):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    # Set when the model sent arguments that are not a JSON object; the agent reports it back.
    arguments_error: str | None = None


class ChatMessage(_Model):
    role: str
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None


class DefinitionRef(_Model):
    """Where a task's definition is kept: its batch and id in the task store."""

    batch_id: str
    task_id: str


class ChatTurnRequest(_Model):
    task_key: str
    turn: int
    messages: list[ChatMessage]
    # A task's turn names the task instead of carrying what every turn repeats: the activity reads
    # the definition from the store, puts the opening messages built from it before `messages`
    # and offers the lifecycle tools. So no turn's history holds the task's input or the tool
    # schemas, and loading the definition needs no step of its own.
    definition: DefinitionRef | None = None
    tools: list[ToolSpec] = Field(default_factory=list)
    model: str | None = None
    timeout_seconds: float = 120.0
    # A redo of a result sent back from review: the activity shows the model the result the store
    # holds and this feedback after the opening messages.
    rework_feedback: str | None = None
    # For models that emulate tools with JSON: the call a sample reply shows (small models copy
    # the sample far more reliably than they follow prose).
    emulation_example: str | None = None
    # Set by a task's turn: the activity applies the reply's lifecycle tool calls to this state
    # and records them in the task store itself, so the common path needs no store write of its
    # own in the workflow (taskpool/task_ledger.py).
    lifecycle: TurnLifecycle | None = None


class ChatTurnResult(_Model):
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    model: str
    # Present when the request carried `lifecycle`: the state after the reply's tool calls, as
    # the store now has it, and what each call returned for the model.
    recorded: RecordedTurn | None = None


class AttemptState(_Model):
    """One attempt of a task as its agent loop knows it. The task workflow and the LLM activity
    hand it to each other, turn by turn."""

    status: TaskStatus = TaskStatus.ASSIGNED
    progress: TaskProgress = Field(default_factory=TaskProgress)
    result: JsonValue = None
    error: TaskError | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    llm_calls: int = 0
    started_at: datetime
    completed_at: datetime | None = None
    # Numbers the attempt's store events, so every event has its own key.
    event_seq: int = 0


class TurnLifecycle(_Model):
    """What a turn needs to apply and record the reply's lifecycle tool calls: the attempt, its
    state before the turn and the changes the store does not have yet."""

    attempt: int
    state: AttemptState
    unrecorded: TaskRecordUpdate
    # complete_task submits the result for review instead of completing (AgentSettings.review).
    review: bool = False


class RecordedTurn(_Model):
    state: AttemptState
    tool_replies: list[ChatMessage] = Field(default_factory=list)


class TaskEvent(_Model):
    """One line of a task's history in the store. `key` makes the write idempotent."""

    key: str
    type: EventType
    at: datetime
    message: str | None = None
    data: dict[str, JsonValue] = Field(default_factory=dict)


class TaskRecordUpdate(_Model):
    """A change to one task's record in the store, with the events that explain it."""

    batch_id: str
    task_id: str
    status: TaskStatus | None = None
    attempt: int | None = None
    progress: TaskProgress | None = None
    result: JsonValue = None
    error: TaskError | None = None
    usage: TokenUsage | None = None
    llm_calls: int | None = None
    retry_count: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # A retry's new input replaces the task's definition input.
    input: TaskInput | None = None
    # Going back to queued, failing or being cancelled clears the last result; a result sent back
    # from review (the next attempt revises it) or cancelled in review keeps it.
    keep_result: bool = False
    events: list[TaskEvent] = Field(default_factory=list)
    # A model turn's write: its events replace any whose key starts with this prefix, which an
    # earlier attempt of the same turn may have written before it was lost.
    replaces_events: str | None = None
    # Apply only while `attempt` is the task's latest attempt and the task is not cancelled, and
    # otherwise skip the update: a model turn that ends after its task was cancelled or retried
    # must not overwrite the newer record.
    only_if_current: bool = False


class RecordTasksRequest(_Model):
    """Lifecycle writes, several tasks or several changes at once to keep activities few."""

    updates: list[TaskRecordUpdate]


class RegisterTasksRequest(_Model):
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


class TaskRecord(_Model):
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

"""One model turn as the task workflow asks for it and the model activity answers it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, JsonValue

from taskpool.domain.base import StrictModel
from taskpool.domain.records import TaskRecordUpdate
from taskpool.domain.tasks import TaskError, TaskProgress, TaskStatus, TokenUsage


class ToolSpec(StrictModel):
    name: str
    description: str
    parameters: dict[str, Any]


class ToolCall(StrictModel):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    # Set when the model sent arguments that are not a JSON object; the agent reports it back.
    arguments_error: str | None = None


class ChatMessage(StrictModel):
    role: str
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None


class DefinitionRef(StrictModel):
    """Where a task's definition is kept: its batch and id in the task store."""

    batch_id: str
    task_id: str


class ChatTurnRequest(StrictModel):
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


class ChatTurnResult(StrictModel):
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    model: str
    # Present when the request carried `lifecycle`: the state after the reply's tool calls, as
    # the store now has it, and what each call returned for the model.
    recorded: RecordedTurn | None = None


class AttemptState(StrictModel):
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


class TurnLifecycle(StrictModel):
    """What a turn needs to apply and record the reply's lifecycle tool calls: the attempt, its
    state before the turn and the changes the store does not have yet."""

    attempt: int
    state: AttemptState
    unrecorded: TaskRecordUpdate
    # complete_task submits the result for review instead of completing (AgentSettings.review).
    review: bool = False


class RecordedTurn(StrictModel):
    state: AttemptState
    tool_replies: list[ChatMessage] = Field(default_factory=list)

"""One model turn: what the task workflow asks for, what the model activity answers, and what the
task store keeps of it (docs/design.md, "One way per turn")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, JsonValue

from taskpool.domain.base import StrictModel
from taskpool.domain.records import TaskRecord, TaskRecordUpdate
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
    # Set on a complete_task call as the workflow sees it: its arguments carry no result (the
    # store keeps it under the turn), only whether a non-empty one was given.
    has_result: bool = False


class ChatMessage(StrictModel):
    role: str
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None


class TurnRequest(StrictModel):
    """A model turn of one task's attempt. It names the task instead of carrying the conversation:
    the activity rebuilds that from the store (the definition and the attempt's earlier turns), so
    no history holds the task's input or a model's reply."""

    batch_id: str
    task_id: str
    attempt: int
    turn: int
    model: str | None = None
    timeout_seconds: float = 120.0
    # A redo of a result sent back from review: the activity shows the model the result the store
    # holds and this feedback after the opening messages.
    rework_feedback: str | None = None
    # What the workflow tells the model after the previous turn: the tool calls' replies, and a
    # reminder when the model stopped without finishing. The activity stores them with this turn.
    follow_ups: list[ChatMessage] = Field(default_factory=list)
    # The attempt's store write that is due (its changes since the last one): the activity applies
    # it before the call, so the lifecycle reaches the store without a round trip of its own.
    record: TaskRecordUpdate | None = None

    @property
    def task_key(self) -> str:
        return f"{self.batch_id}/{self.task_id}"


class TurnReply(StrictModel):
    """What the workflow needs of a model's reply to decide what happens next. The reply itself
    (its text and complete arguments) is in the store, under the task, attempt and turn."""

    tool_calls: list[ToolCall] = Field(default_factory=list)
    has_content: bool = False
    finish_reason: str | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    model: str


class TurnRecord(StrictModel):
    """A model turn as the store keeps it: the messages the workflow added before the call, then
    the model's reply; and the result a complete_task call in the reply gave, if any."""

    batch_id: str
    task_id: str
    attempt: int
    turn: int
    messages: list[ChatMessage]
    result: JsonValue = None
    at: datetime


class TaskConversation(StrictModel):
    """What a turn reads from the store: the task's record (its definition, and a result sent back
    from review) and the earlier turns of the attempt, in order."""

    record: TaskRecord
    turns: list[TurnRecord] = Field(default_factory=list)


class AttemptState(StrictModel):
    """One attempt of a task as its agent loop knows it (taskpool.domain.ledger)."""

    status: TaskStatus = TaskStatus.ASSIGNED
    progress: TaskProgress = Field(default_factory=TaskProgress)
    # The turn whose complete_task result is the attempt's result; the store holds the result.
    result_turn: int | None = None
    error: TaskError | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    llm_calls: int = 0
    started_at: datetime
    completed_at: datetime | None = None
    # Numbers the attempt's store events, so every event has its own key.
    event_seq: int = 0

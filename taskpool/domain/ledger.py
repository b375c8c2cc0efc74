"""One attempt of a task as its agent drives it: the lifecycle tools, the attempt's state and the
store write that records each change.

Pure, with the clock passed in, so the task workflow (with `workflow.now`) and the LLM activity
(with the wall clock) run the same code: whichever of them applies a reply's tool calls, the
attempt ends up the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from taskpool.domain import agents
from taskpool.domain.records import TaskRecordUpdate
from taskpool.domain.tasks import (
    EventType,
    TaskError,
    TaskEvent,
    TaskProgress,
    TaskStatus,
    TokenUsage,
)
from taskpool.domain.transitions import transition
from taskpool.domain.turns import AttemptState, ChatMessage, ToolCall


def workflow_event_prefix(attempt: int) -> str:
    """Keys of the events the task workflow notes itself: `<attempt>:<n>`."""
    return f"{attempt}:"


def turn_event_prefix(attempt: int, turn: int) -> str:
    """Keys of the events a model turn notes: `<attempt>:t<turn>:<n>`, so a retried turn can
    replace exactly what an earlier try of it wrote."""
    return f"{attempt}:t{turn}:"


class TaskLedger:
    def __init__(
        self,
        batch_id: str,
        task_id: str,
        attempt: int,
        state: AttemptState,
        *,
        clock: Callable[[], datetime],
        event_prefix: str,
        unrecorded: TaskRecordUpdate | None = None,
        review: bool = False,
    ) -> None:
        self._batch_id = batch_id
        self._task_id = task_id
        self._attempt = attempt
        self._clock = clock
        self._event_prefix = event_prefix
        self._review = review
        self.state = state
        self.unrecorded = unrecorded or self._blank_update()

    @classmethod
    def begin(
        cls,
        batch_id: str,
        task_id: str,
        attempt: int,
        *,
        clock: Callable[[], datetime],
        review: bool = False,
    ) -> TaskLedger:
        # An attempt's clock starts when its run starts, so its duration includes the model's time.
        started_at = clock()
        return cls(
            batch_id,
            task_id,
            attempt,
            AttemptState(started_at=started_at),
            clock=clock,
            event_prefix=workflow_event_prefix(attempt),
            unrecorded=TaskRecordUpdate(batch_id=batch_id, task_id=task_id, started_at=started_at),
            review=review,
        )

    @property
    def has_unrecorded(self) -> bool:
        # Every change outside a model turn notes an event; a turn's usage travels with the turn.
        return bool(self.unrecorded.events)

    def adopt(self, state: AttemptState) -> None:
        """Take the state a model turn applied and recorded in the store."""
        self.state = state
        self.unrecorded = self._blank_update()

    def take_update(self) -> TaskRecordUpdate:
        """Everything that changed since the last take, as one idempotent store write."""
        update = self.unrecorded
        update.status = self.state.status
        update.attempt = self._attempt
        update.usage = self.state.usage
        update.llm_calls = self.state.llm_calls
        self.unrecorded = self._blank_update()
        return update

    def _blank_update(self) -> TaskRecordUpdate:
        return TaskRecordUpdate(batch_id=self._batch_id, task_id=self._task_id)

    # --- the model's turns ------------------------------------------------------------------------

    def count_call(self, usage: TokenUsage) -> None:
        self.state.llm_calls += 1
        self.state.usage = self.state.usage + usage

    def apply_calls(self, calls: Sequence[ToolCall]) -> list[ChatMessage]:
        """Apply a reply's tool calls in order until one ends the attempt; returns what each call
        tells the model."""
        replies: list[ChatMessage] = []
        for call in calls:
            if self.state.status.ends_attempt:
                break
            replies.append(
                ChatMessage(role="tool", tool_call_id=call.id, content=self._apply(call))
            )
        return replies

    def _apply(self, call: ToolCall) -> str:
        if call.arguments_error:
            return f"error: the arguments of {call.name} were not valid: {call.arguments_error}"
        args = call.arguments
        if call.name == agents.START_TASK:
            if self.state.status is TaskStatus.IN_PROGRESS:
                return "the task is already started"
            self._start()
            return "task started"
        if call.name == agents.REPORT_PROGRESS:
            percent = args.get("percent")
            if not isinstance(percent, int | float) or not 0 <= percent <= 100:
                return "error: percent must be a number from 0 to 100"
            self._start_if_needed()
            step = args.get("step")
            self._report_progress(float(percent), step if isinstance(step, str) else None)
            return "progress recorded"
        if call.name == agents.COMPLETE_TASK:
            if "result" not in args or args["result"] in (None, ""):
                return "error: complete_task needs a non-empty result"
            self._start_if_needed()
            self.state.result = args["result"]
            if self._review:
                self._submit_for_review()
                return "result submitted for review"
            self.finish(TaskStatus.COMPLETED, error=None, message="completed by the agent")
            return "task completed"
        if call.name == agents.FAIL_TASK:
            reason = args.get("reason")
            self.fail("agent_failed", reason if isinstance(reason, str) and reason else "no reason")
            return "task failed"
        known = ", ".join(tool.name for tool in agents.LIFECYCLE_TOOLS)
        return f"error: there is no tool named {call.name!r}; the tools are {known}"

    # --- transitions ------------------------------------------------------------------------------

    def note(self, event_type: EventType, message: str | None, **data: Any) -> None:
        self.state.event_seq += 1
        self.unrecorded.events.append(
            TaskEvent(
                key=f"{self._event_prefix}{self.state.event_seq}",
                type=event_type,
                at=self._clock(),
                message=message,
                data=data,
            )
        )

    def fail(self, code: str, message: str) -> None:
        self._start_if_needed()
        self.finish(TaskStatus.FAILED, error=TaskError(code=code, message=message), message=message)

    def finish(self, status: TaskStatus, *, error: TaskError | None, message: str) -> None:
        state = self.state
        if state.status.is_terminal:
            return
        state.status = transition(self._task_id, state.status, status)
        state.error = error
        state.completed_at = self._clock()
        if status is TaskStatus.COMPLETED:
            self._record_result()
        self.unrecorded.error = error
        self.unrecorded.completed_at = state.completed_at
        self.note(EventType(status.value), message)

    def _submit_for_review(self) -> None:
        # The attempt ends here; the task completes only when a person approves the result.
        self.state.status = transition(self._task_id, self.state.status, TaskStatus.REVIEW)
        self._record_result()
        self.note(EventType.REVIEW, "result submitted for review")

    def _record_result(self) -> None:
        state = self.state
        state.progress = TaskProgress(percent=100.0, step=state.progress.step, eta_seconds=0)
        self.unrecorded.progress = state.progress
        self.unrecorded.result = state.result

    def _start_if_needed(self) -> None:
        # A model may go straight to complete_task; the lifecycle still passes through in_progress.
        if self.state.status is TaskStatus.ASSIGNED:
            self._start()

    def _start(self) -> None:
        self.state.status = transition(self._task_id, self.state.status, TaskStatus.IN_PROGRESS)
        self.note(EventType.STARTED, "started by the agent")

    def _report_progress(self, percent: float, step: str | None) -> None:
        elapsed = (self._clock() - self.state.started_at).total_seconds()
        eta = elapsed * (100 - percent) / percent if percent > 0 else None
        self.state.progress = TaskProgress(percent=percent, step=step, eta_seconds=eta)
        self.unrecorded.progress = self.state.progress
        self.note(EventType.PROGRESS, step, percent=percent)

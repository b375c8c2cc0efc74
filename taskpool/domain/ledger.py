"""One attempt of a task as its agent drives it: the lifecycle tools, the attempt's state and the
store writes that record each change.

Pure, with the clock passed in. The task workflow runs it with `workflow.now`, and nothing else
does: every transition of an attempt is decided in the workflow (docs/design.md, "One way per
turn").
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


class TaskLedger:
    def __init__(
        self,
        batch_id: str,
        task_id: str,
        attempt: int,
        *,
        clock: Callable[[], datetime],
        review: bool = False,
    ) -> None:
        self._batch_id = batch_id
        self._task_id = task_id
        self._attempt = attempt
        self._clock = clock
        self._review = review
        # An attempt's clock starts when its run starts, so its duration includes the model's time.
        started_at = clock()
        self.state = AttemptState(started_at=started_at)
        self._unrecorded = TaskRecordUpdate(
            batch_id=batch_id, task_id=task_id, started_at=started_at
        )

    # --- store writes -----------------------------------------------------------------------------

    def pending_update(self) -> TaskRecordUpdate:
        """The store write due now, for the next model turn to apply before its call.

        It stays due until `recorded()`: a turn that fails or is cancelled may not have written
        it, so the attempt's final write repeats it (writes are idempotent). The workflow changes
        nothing in the ledger while the turn runs. The turn's activity may still apply it after
        the attempt has moved on (its workflow cancelled meanwhile), so the store skips it then.
        """
        update = self._stamped(self._unrecorded.model_copy(deep=True))
        update.only_if_current = True
        return update

    def recorded(self) -> None:
        """The pending update is in the store: its turn came back."""
        self._unrecorded = self._blank_update()

    def take_update(self) -> TaskRecordUpdate:
        """Everything that changed since the last recorded write, as one idempotent store write."""
        update = self._stamped(self._unrecorded)
        self._unrecorded = self._blank_update()
        return update

    def _stamped(self, update: TaskRecordUpdate) -> TaskRecordUpdate:
        update.status = self.state.status
        update.attempt = self._attempt
        update.usage = self.state.usage
        update.llm_calls = self.state.llm_calls
        return update

    def _blank_update(self) -> TaskRecordUpdate:
        return TaskRecordUpdate(batch_id=self._batch_id, task_id=self._task_id)

    # --- the model's turns ------------------------------------------------------------------------

    def count_call(self, usage: TokenUsage) -> None:
        self.state.llm_calls += 1
        self.state.usage = self.state.usage + usage

    def apply_calls(self, turn: int, calls: Sequence[ToolCall]) -> list[ChatMessage]:
        """Apply the tool calls of `turn`'s reply in order until one ends the attempt; returns
        what each call tells the model."""
        replies: list[ChatMessage] = []
        for call in calls:
            if self.state.status.ends_attempt:
                break
            replies.append(
                ChatMessage(role="tool", tool_call_id=call.id, content=self._apply(turn, call))
            )
        return replies

    def _apply(self, turn: int, call: ToolCall) -> str:
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
            if not call.has_result:
                return "error: complete_task needs a non-empty result"
            self._start_if_needed()
            # The result itself is in the store, under this turn.
            self.state.result_turn = turn
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
        self._unrecorded.events.append(
            TaskEvent(
                key=f"{self._attempt}:{self.state.event_seq}",
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
        self._unrecorded.error = error
        self._unrecorded.completed_at = state.completed_at
        self.note(EventType(status.value), message)

    def _submit_for_review(self) -> None:
        # The attempt ends here; the task completes only when a person approves the result.
        self.state.status = transition(self._task_id, self.state.status, TaskStatus.REVIEW)
        self._record_result()
        self.note(EventType.REVIEW, "result submitted for review")

    def _record_result(self) -> None:
        state = self.state
        state.progress = TaskProgress(percent=100.0, step=state.progress.step, eta_seconds=0)
        self._unrecorded.progress = state.progress
        self._unrecorded.result_turn = state.result_turn

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
        self._unrecorded.progress = self.state.progress
        self.note(EventType.PROGRESS, step, percent=percent)

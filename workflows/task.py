"""TaskWorkflow: one task's agent loop.

Each LLM turn is one activity. The model drives the task through lifecycle tools bound to this one
task; every tool call in a reply is applied in order, so a simple task costs a single LLM call. The
LLM activity reads the task's definition from the task store on every turn (a definition can be
large, so it stays out of every history and of this workflow's input). The workflow records
transitions in the store (a local activity per turn) and returns its outcome, which the batch run
that started it awaits. A child handed over to a later run of the batch (see workflows/batch.py)
reports by signal instead, as does a cancelled one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from taskpool import agents, names
    from taskpool.lifecycle import transition
    from taskpool.models import (
        ChatMessage,
        ChatTurnRequest,
        ChatTurnResult,
        ChildControl,
        DefinitionRef,
        EventType,
        RecordTasksRequest,
        TaskError,
        TaskEvent,
        TaskOutcome,
        TaskProgress,
        TaskRecordUpdate,
        TaskRef,
        TaskRunInput,
        TaskStatus,
        TokenUsage,
        ToolCall,
    )
    from taskpool.policies import STORE_WRITE_OPTIONS, llm_activity_options


class _Finished(Exception):
    """Raised inside the agent loop once the task has reached a terminal state."""


@workflow.defn(name=names.TASK_WORKFLOW)
class TaskWorkflow:
    @workflow.init
    def __init__(self, request: TaskRunInput) -> None:
        self._request = request
        self._task_id = request.task_id
        self._status = TaskStatus.ASSIGNED
        self._progress = TaskProgress()
        self._paused = False
        self._usage = TokenUsage()
        self._llm_calls = 0
        self._result: Any = None
        self._error: TaskError | None = None
        self._started_at = workflow.now()
        self._completed_at: Any = None
        self._event_seq = 0
        self._report_by_signal = False
        self._returned = False
        # A task's clock starts when its run starts, so its duration includes the model's time.
        self._pending = TaskRecordUpdate(
            batch_id=request.batch_id, task_id=request.task_id, started_at=self._started_at
        )

    @workflow.run
    async def run(self, request: TaskRunInput) -> TaskOutcome:
        workflow.logger.info("Task %s attempt %d started", self._task_id, request.attempt)
        try:
            self._note(
                EventType.ASSIGNED,
                f"attempt {request.attempt} assigned to {workflow.info().workflow_id}",
                attempt=request.attempt,
            )
            await self._agent_loop()
        except asyncio.CancelledError:
            # Record and report the cancellation before letting it end the workflow; Temporal lets
            # a workflow run more commands after it has caught its cancellation.
            self._finish(TaskStatus.CANCELLED, error=None, message="cancelled with the batch")
            await self._flush()
            await self._report()
            raise
        await self._flush()
        # The decision point: from here on a hand-over message is refused (see control()), so
        # the run that started this child waits for its completion instead.
        self._returned = True
        if self._report_by_signal:
            await self._report()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._outcome_for_batch()

    @workflow.signal(name=names.CONTROL)
    async def control(self, command: ChildControl) -> None:
        self._paused = command.paused
        if command.report_by_signal and not self._report_by_signal and not self._returned:
            self._report_by_signal = True
            ref = TaskRef(task_id=self._task_id, attempt=self._request.attempt)
            await self._signal_batch(names.TASK_HANDED_OVER, ref)

    @workflow.query(name=names.TASK_STATE)
    def state(self) -> TaskOutcome:
        return self._outcome()

    @workflow.query(name=names.TASK_PROGRESS)
    def progress(self) -> TaskProgress:
        return self._progress

    # --- the agent loop ---------------------------------------------------------------------------

    async def _agent_loop(self) -> None:
        settings = self._request.agent
        # The conversation after its opening messages, which the activity builds from the
        # definition on every turn.
        messages: list[ChatMessage] = []
        nudged = False
        for turn in range(1, settings.max_turns + 1):
            # A paused batch starts no new LLM call; a turn already running may finish.
            await workflow.wait_condition(lambda: not self._paused)
            reply = await self._chat_turn(messages, turn)
            if reply is None:
                return
            messages.append(
                ChatMessage(role="assistant", content=reply.content, tool_calls=reply.tool_calls)
            )
            if not reply.tool_calls:
                if nudged:
                    self._fail(
                        "no_result",
                        "the model stopped without calling complete_task or fail_task, "
                        "even after being reminded",
                    )
                    return
                nudged = True
                messages.append(ChatMessage(role="user", content=agents.NUDGE))
                await self._flush()
                continue
            try:
                for call in reply.tool_calls:
                    messages.append(
                        ChatMessage(role="tool", tool_call_id=call.id, content=self._apply(call))
                    )
            except _Finished:
                return
            await self._flush()
        self._fail(
            "turn_limit",
            f"the model did not finish the task within {settings.max_turns} turns",
        )

    async def _chat_turn(self, messages: list[ChatMessage], turn: int) -> ChatTurnResult | None:
        settings = self._request.agent
        request = ChatTurnRequest(
            task_key=f"{self._request.batch_id}/{self._task_id}",
            turn=turn,
            messages=messages,
            definition=DefinitionRef(batch_id=self._request.batch_id, task_id=self._task_id),
            model=settings.model,
            timeout_seconds=settings.llm_timeout_seconds,
        )
        try:
            reply: ChatTurnResult = await workflow.execute_activity(
                names.CHAT_TURN,
                request,
                result_type=ChatTurnResult,
                **llm_activity_options(settings),
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                # The turn was cancelled because this workflow is: handled as a cancellation.
                raise asyncio.CancelledError from err
            cause = err.cause
            detail = str(cause) if cause is not None else str(err)
            code = cause.type if isinstance(cause, ApplicationError) and cause.type else "llm_error"
            if code != names.DEFINITION_MISSING:
                detail = f"the model call failed: {detail}"
            self._fail(code, detail)
            return None
        self._llm_calls += 1
        self._usage = self._usage + reply.usage
        if reply.finish_reason == "content_filter":
            self._fail("content_filter", "the provider's content filter stopped the reply")
            return None
        return reply

    # --- lifecycle tools --------------------------------------------------------------------------

    def _apply(self, call: ToolCall) -> str:
        """Apply one tool call and return what the model is told about it."""
        if self._status.is_terminal:
            raise _Finished
        if call.arguments_error:
            return f"error: the arguments of {call.name} were not valid: {call.arguments_error}"
        args = call.arguments
        if call.name == agents.START_TASK:
            if self._status is TaskStatus.IN_PROGRESS:
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
            self._result = args["result"]
            self._finish(TaskStatus.COMPLETED, error=None, message="completed by the agent")
            raise _Finished
        if call.name == agents.FAIL_TASK:
            reason = args.get("reason")
            self._start_if_needed()
            self._fail(
                "agent_failed", reason if isinstance(reason, str) and reason else "no reason"
            )
            raise _Finished
        known = ", ".join(tool.name for tool in agents.LIFECYCLE_TOOLS)
        return f"error: there is no tool named {call.name!r}; the tools are {known}"

    def _start_if_needed(self) -> None:
        # A model may go straight to complete_task; the lifecycle still passes through in_progress.
        if self._status is TaskStatus.ASSIGNED:
            self._start()

    def _start(self) -> None:
        self._status = transition(self._task_id, self._status, TaskStatus.IN_PROGRESS)
        self._note(EventType.STARTED, "started by the agent")

    def _report_progress(self, percent: float, step: str | None) -> None:
        elapsed = (workflow.now() - self._started_at).total_seconds()
        eta = elapsed * (100 - percent) / percent if percent > 0 else None
        self._progress = TaskProgress(percent=percent, step=step, eta_seconds=eta)
        self._pending.progress = self._progress
        self._note(EventType.PROGRESS, step, percent=percent)

    def _fail(self, code: str, message: str) -> None:
        self._start_if_needed()
        self._finish(
            TaskStatus.FAILED, error=TaskError(code=code, message=message), message=message
        )

    def _finish(self, status: TaskStatus, *, error: TaskError | None, message: str) -> None:
        if self._status.is_terminal:
            return
        self._status = transition(self._task_id, self._status, status)
        self._error = error
        self._completed_at = workflow.now()
        if status is TaskStatus.COMPLETED:
            self._progress = TaskProgress(percent=100.0, step=self._progress.step, eta_seconds=0)
            self._pending.progress = self._progress
            self._pending.result = self._result
        self._pending.error = error
        self._pending.completed_at = self._completed_at
        self._note(EventType(status.value), message)

    # --- the task store ---------------------------------------------------------------------------

    def _note(self, event_type: EventType, message: str | None, **data: Any) -> None:
        self._event_seq += 1
        self._pending.events.append(
            TaskEvent(
                key=f"{self._request.attempt}:{self._event_seq}",
                type=event_type,
                at=workflow.now(),
                message=message,
                data=data,
            )
        )

    async def _flush(self) -> None:
        """Write what changed since the last flush as one idempotent store write."""
        update = self._pending
        update.status = self._status
        update.attempt = self._request.attempt
        update.usage = self._usage
        update.llm_calls = self._llm_calls
        self._pending = TaskRecordUpdate(batch_id=update.batch_id, task_id=update.task_id)
        await workflow.execute_local_activity(
            names.RECORD_TASKS, RecordTasksRequest(updates=[update]), **STORE_WRITE_OPTIONS
        )

    async def _report(self) -> None:
        await self._signal_batch(names.TASK_FINISHED, self._outcome_for_batch())

    def _outcome_for_batch(self) -> TaskOutcome:
        # The batch needs the outcome, not the result: results live in the store.
        outcome = self._outcome()
        outcome.result = None
        return outcome

    async def _signal_batch(self, name: str, payload: Any) -> None:
        batch = workflow.get_external_workflow_handle(self._request.batch_id)
        try:
            await batch.signal(name, payload)
        except FailureError as err:
            # The batch is gone (terminated, or its id reused): nobody is left to tell, and the
            # store already has the outcome.
            workflow.logger.warning("Batch %s did not take the report: %s", batch.id, err)

    def _outcome(self) -> TaskOutcome:
        return TaskOutcome(
            task_id=self._task_id,
            attempt=self._request.attempt,
            status=self._status,
            result=self._result,
            error=self._error,
            usage=self._usage,
            llm_calls=self._llm_calls,
            started_at=self._started_at,
            completed_at=self._completed_at,
        )

"""TaskWorkflow: one task's agent loop.

Each LLM turn is one activity (a local one when the batch sets `model_calls="local"`). The model
drives the task through lifecycle tools bound to this one task; every tool call in a reply is
applied in order, so a simple task costs a single LLM call. The LLM activity reads the task's
definition from the task store on every turn (a definition can be large, so it stays out of every
history and of this workflow's input), applies the reply's tool calls to the attempt's state and
records them in the store in the same activity; the workflow adopts the state it returns. What the
workflow decides itself (a turn limit, a failed model call, a cancellation) it records with a local
activity. In a batch with review, complete_task ends the attempt with its result waiting in
`review` instead: the batch approves it, or starts a new attempt that is given the reviewer's
feedback. The workflow returns its outcome, which the batch run that started it awaits. A child
handed over to a later run of the batch (see workflows/batch.py) reports by signal instead, as does
a cancelled one.
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
    from taskpool.domain import agents, names
    from taskpool.domain.activity_options import (
        STORE_WRITE_OPTIONS,
        llm_activity_options,
        llm_local_activity_options,
    )
    from taskpool.domain.batch import ChildControl, TaskOutcome, TaskRef, TaskRunInput
    from taskpool.domain.ledger import TaskLedger, turn_event_prefix
    from taskpool.domain.records import RecordTasksRequest
    from taskpool.domain.tasks import EventType, TaskProgress, TaskStatus
    from taskpool.domain.turns import (
        ChatMessage,
        ChatTurnRequest,
        ChatTurnResult,
        DefinitionRef,
        TurnLifecycle,
    )


@workflow.defn(name=names.TASK_WORKFLOW)
class TaskWorkflow:
    @workflow.init
    def __init__(self, request: TaskRunInput) -> None:
        self._request = request
        self._task_id = request.task_id
        self._ledger = TaskLedger.begin(
            request.batch_id,
            request.task_id,
            request.attempt,
            clock=workflow.now,
            review=request.agent.review,
        )
        # Children started before turns recorded themselves keep recording every turn in the
        # workflow, as their histories did (see TaskRunInput).
        self._turns_record_themselves = request.turns_record_themselves
        # A turn whose activity may have recorded a reply this workflow never took (its
        # completion lost, or the task cancelled meanwhile): the next store write replaces it.
        self._unadopted_turn: int | None = None
        self._paused = False
        self._report_by_signal = False
        self._returned = False

    @workflow.run
    async def run(self, request: TaskRunInput) -> TaskOutcome:
        workflow.logger.info("Task %s attempt %d started", self._task_id, request.attempt)
        try:
            self._ledger.note(
                EventType.ASSIGNED,
                f"attempt {request.attempt} assigned to {workflow.info().workflow_id}",
                attempt=request.attempt,
            )
            await self._agent_loop()
        except asyncio.CancelledError:
            # Record and report the cancellation before letting it end the workflow; Temporal lets
            # a workflow run more commands after it has caught its cancellation.
            self._ledger.finish(
                TaskStatus.CANCELLED, error=None, message="cancelled with the batch"
            )
            await self._flush()
            await self._report()
            raise
        # Whatever ended the loop noted an event unless a recorded turn ended it.
        if self._ledger.has_unrecorded:
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
        return self._ledger.state.progress

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
            if reply.recorded is not None:
                self._ledger.adopt(reply.recorded.state)
                self._unadopted_turn = None
                messages.extend(reply.recorded.tool_replies)
            else:
                messages.extend(self._ledger.apply_calls(reply.tool_calls))
            if self._ledger.state.status.ends_attempt:
                return
            if not reply.tool_calls:
                if nudged:
                    self._ledger.fail(
                        "no_result",
                        "the model stopped without calling complete_task or fail_task, "
                        "even after being reminded",
                    )
                    return
                nudged = True
                messages.append(ChatMessage(role="user", content=agents.NUDGE))
            if reply.recorded is None:
                await self._flush()
        self._ledger.fail(
            "turn_limit",
            f"the model did not finish the task within {settings.max_turns} turns",
        )

    async def _chat_turn(self, messages: list[ChatMessage], turn: int) -> ChatTurnResult | None:
        settings = self._request.agent
        lifecycle = None
        if self._turns_record_themselves:
            self._unadopted_turn = turn
            lifecycle = TurnLifecycle(
                attempt=self._request.attempt,
                state=self._ledger.state,
                unrecorded=self._ledger.unrecorded,
                review=settings.review,
            )
        request = ChatTurnRequest(
            task_key=f"{self._request.batch_id}/{self._task_id}",
            turn=turn,
            messages=messages,
            definition=DefinitionRef(batch_id=self._request.batch_id, task_id=self._task_id),
            model=settings.model,
            timeout_seconds=settings.llm_timeout_seconds,
            rework_feedback=self._request.rework_feedback,
            lifecycle=lifecycle,
        )
        try:
            reply = await self._run_turn(request)
        except FailureError as err:
            if is_cancelled_exception(err):
                # The turn was cancelled because this workflow is: handled as a cancellation.
                raise asyncio.CancelledError from err
            # A local turn's failure may arrive as the activity's own error, without the
            # ActivityError around it that an activity's has.
            cause = err.cause if isinstance(err, ActivityError) else err
            detail = str(cause) if cause is not None else str(err)
            code = cause.type if isinstance(cause, ApplicationError) and cause.type else "llm_error"
            if code != names.DEFINITION_MISSING:
                detail = f"the model call failed: {detail}"
            self._ledger.fail(code, detail)
            return None
        if reply.recorded is not None:
            return reply
        self._ledger.count_call(reply.usage)
        if reply.finish_reason == "content_filter":
            self._ledger.fail("content_filter", "the provider's content filter stopped the reply")
            return None
        return reply

    async def _run_turn(self, request: ChatTurnRequest) -> ChatTurnResult:
        settings = self._request.agent
        reply: ChatTurnResult
        if settings.model_calls == "local":
            reply = await workflow.execute_local_activity(
                names.CHAT_TURN,
                request,
                result_type=ChatTurnResult,
                **llm_local_activity_options(settings),
            )
        else:
            reply = await workflow.execute_activity(
                names.CHAT_TURN,
                request,
                result_type=ChatTurnResult,
                **llm_activity_options(settings),
            )
        return reply

    # --- the task store ---------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Write what changed since the last write as one idempotent store write."""
        update = self._ledger.take_update()
        if self._unadopted_turn is not None:
            # The store must show what this workflow decided, not a reply it never saw.
            update.replaces_events = turn_event_prefix(self._request.attempt, self._unadopted_turn)
            self._unadopted_turn = None
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
        state = self._ledger.state
        return TaskOutcome(
            task_id=self._task_id,
            attempt=self._request.attempt,
            status=state.status,
            result=state.result,
            error=state.error,
            usage=state.usage,
            llm_calls=state.llm_calls,
            started_at=state.started_at,
            completed_at=state.completed_at,
        )

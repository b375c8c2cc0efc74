"""TaskWorkflow: one task's agent loop.

The workflow owns the loop and decides every transition with the pure TaskLedger, on
`workflow.now()`. Each model turn is one activity (a local one when the batch sets
`model_calls="local"`; TurnRunner is where that is chosen). A turn is told which task, attempt and
turn it is, the follow-up messages this workflow decided after the previous turn, and the
attempt's due store write, which it applies before the model call. It keeps the model's reply in
the task store and answers with what the workflow needs to decide: the tool calls, without a
complete_task's result (the store has it under the turn). Every tool call in a reply is applied in
order, so a simple task costs a single model call and a single activity.

The attempt's last store write is not done here: the outcome carries it (`TaskOutcome.record`) and
the batch queues it with its own writes. A cancelled attempt writes its record itself, with a local
activity, as does a report by signal that no batch takes: both are rare, and the store should not
depend on a batch that may be gone. In a batch with review, complete_task ends the attempt with its
result waiting in `review` instead: the batch approves it, or starts a new attempt that is given
the reviewer's feedback. The workflow returns its outcome, which the batch run that started it
awaits. A child handed over to a later run of the batch (see workflows/batch.py) reports by signal
instead, as does a cancelled one. docs/design.md, "One way per turn", gives the reasons.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

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
    from taskpool.domain.batch import (
        AgentSettings,
        ChildControl,
        TaskOutcome,
        TaskRef,
        TaskRunInput,
    )
    from taskpool.domain.ledger import TaskLedger
    from taskpool.domain.records import RecordTasksRequest, TaskRecordUpdate
    from taskpool.domain.tasks import EventType, TaskProgress, TaskStatus
    from taskpool.domain.turns import ChatMessage, TurnReply, TurnRequest


@workflow.defn(name=names.TASK_WORKFLOW)
class TaskWorkflow:
    @workflow.init
    def __init__(self, request: TaskRunInput) -> None:
        self._request = request
        self._task_id = request.task_id
        self._ledger = TaskLedger(
            request.batch_id,
            request.task_id,
            request.attempt,
            clock=workflow.now,
            review=request.agent.review,
        )
        self._turns = turn_runner(request.agent)
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
            await self._write(self._ledger.take_update())
            await self._report(self._outcome())
            raise
        # The decision point: from here on a hand-over message is refused (see control()), so
        # the run that started this child waits for its completion instead.
        self._returned = True
        outcome = self._outcome(record=self._ledger.take_update())
        if self._report_by_signal:
            await self._report(outcome)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return outcome

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
        follow_ups: list[ChatMessage] = []
        nudged = False
        for turn in range(1, settings.max_turns + 1):
            # A paused batch starts no new model call; a turn already running may finish.
            await workflow.wait_condition(lambda: not self._paused)
            reply = await self._turn(turn, follow_ups)
            if reply is None:
                return
            follow_ups = self._ledger.apply_calls(turn, reply.tool_calls)
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
                follow_ups.append(ChatMessage(role="user", content=agents.NUDGE))
        self._ledger.fail(
            "turn_limit",
            f"the model did not finish the task within {settings.max_turns} turns",
        )

    async def _turn(self, turn: int, follow_ups: list[ChatMessage]) -> TurnReply | None:
        """Run one model turn; None when it failed, and the ledger says how."""
        settings = self._request.agent
        request = TurnRequest(
            batch_id=self._request.batch_id,
            task_id=self._task_id,
            attempt=self._request.attempt,
            turn=turn,
            model=settings.model,
            timeout_seconds=settings.llm_timeout_seconds,
            rework_feedback=self._request.rework_feedback,
            follow_ups=follow_ups,
            record=self._ledger.pending_update(),
        )
        try:
            reply = await self._turns.run(request)
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
        # The turn applied the due write before it called the model.
        self._ledger.recorded()
        self._ledger.count_call(reply.usage)
        return reply

    # --- reports and the task store ---------------------------------------------------------------

    async def _write(self, update: TaskRecordUpdate) -> None:
        await workflow.execute_local_activity(
            names.RECORD_TASKS, RecordTasksRequest(updates=[update]), **STORE_WRITE_OPTIONS
        )

    async def _report(self, outcome: TaskOutcome) -> None:
        taken = await self._signal_batch(names.TASK_FINISHED, outcome)
        if not taken and outcome.record is not None:
            # Nobody is left to queue the attempt's last write: the store still gets it.
            await self._write(outcome.record)

    async def _signal_batch(self, name: str, payload: Any) -> bool:
        batch = workflow.get_external_workflow_handle(self._request.batch_id)
        try:
            await batch.signal(name, payload)
        except FailureError as err:
            # The batch is gone (terminated, or its id reused): nobody is left to tell.
            workflow.logger.warning("Batch %s did not take the report: %s", batch.id, err)
            return False
        return True

    def _outcome(self, record: TaskRecordUpdate | None = None) -> TaskOutcome:
        # No result: the store has it, under the turn that gave it.
        state = self._ledger.state
        return TaskOutcome(
            task_id=self._task_id,
            attempt=self._request.attempt,
            status=state.status,
            error=state.error,
            usage=state.usage,
            llm_calls=state.llm_calls,
            started_at=state.started_at,
            completed_at=state.completed_at,
            record=record,
        )


class TurnRunner(Protocol):
    async def run(self, request: TurnRequest) -> TurnReply: ...


class ActivityTurns:
    """Each model turn an activity: heartbeats notice a lost worker, and the server's task-queue
    rate limit applies."""

    def __init__(self, settings: AgentSettings) -> None:
        self._options = llm_activity_options(settings)

    async def run(self, request: TurnRequest) -> TurnReply:
        reply: TurnReply = await workflow.execute_activity(
            names.CHAT_TURN, request, result_type=TurnReply, **self._options
        )
        return reply


class LocalActivityTurns:
    """Each model turn a local activity inside the workflow task: fewer server round trips per
    turn, for short model calls; the workflow-task timeout notices a lost worker instead."""

    def __init__(self, settings: AgentSettings) -> None:
        self._options = llm_local_activity_options(settings)

    async def run(self, request: TurnRequest) -> TurnReply:
        reply: TurnReply = await workflow.execute_local_activity(
            names.CHAT_TURN, request, result_type=TurnReply, **self._options
        )
        return reply


def turn_runner(settings: AgentSettings) -> TurnRunner:
    """How this task's model turns run: the one place the batch's `model_calls` is read here."""
    if settings.model_calls == "local":
        return LocalActivityTurns(settings)
    return ActivityTurns(settings)

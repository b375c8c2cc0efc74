"""ChildFleet: a batch run's task children: starting them, awaiting their outcomes, telling them
the pause state, cancelling them, and handing them over before the batch continues as new.

Children are started with parent close policy ABANDON, so they keep running across
continue-as-new; cancelling the batch cancels them explicitly.

How an outcome comes back: a run awaits the children it started, so a child's completion event is
its report (no signal, no extra workflow task on either side). Before continuing as new, the run
hands its running children over: it tells each to report by signal to the batch's workflow id
(which reaches the newest run) and waits until each has confirmed or completed, so no outcome can
fall between the runs. A cancelled child always reports by signal, since it ends without a result.

Deterministic: what the fleet asks of Temporal goes through `Children` (TemporalChildren in a
workflow, a fake in tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from temporalio import workflow
from temporalio.exceptions import (
    CancelledError,
    ChildWorkflowError,
    FailureError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import (
    TimeoutError as TemporalTimeoutError,
)

with workflow.unsafe.imports_passed_through():
    from taskpool.domain import names
    from taskpool.domain.activity_options import task_workflow_task_timeout
    from taskpool.domain.batch import AgentSettings, ChildControl, TaskOutcome, TaskRunInput
    from taskpool.domain.task_columns import TaskRow
    from taskpool.domain.tasks import TaskError, TaskStatus
from workflows.store_queue import ended_by_batch

# A workflow task is all-or-nothing and the server refuses one with too many pending commands, so
# child starts and child signals go out in groups of this size.
COMMAND_GROUP = 100
# How long cancellation waits for running children to confirm before it marks them cancelled.
CANCEL_CONFIRM_TIMEOUT = timedelta(minutes=2)


class Children(Protocol):
    """What the fleet asks of Temporal about its children."""

    def now(self) -> datetime: ...

    async def start(self, child_id: str, request: TaskRunInput) -> Awaitable[TaskOutcome]:
        """Start a child; the start is accepted on return, and the awaitable is its outcome."""
        ...

    async def signal(self, child_id: str, control: ChildControl) -> None:
        """Signal a child; one that has just finished no longer takes it (its report is on the
        way), and that is no error."""
        ...

    async def cancel(self, child_id: str) -> None:
        """Cancel a child, as `signal` does."""
        ...

    async def wait_condition(
        self, done: Callable[[], bool], within: timedelta | None = None
    ) -> bool:
        """Wait until `done()`; False if `within` passed first."""
        ...


class RunningTasks(Protocol):
    """The batch's running tasks (its TaskTable)."""

    @property
    def in_flight(self) -> int: ...

    def in_flight_entries(self) -> list[TaskRow]: ...


class TemporalChildren:
    """`Children` inside the batch workflow."""

    def now(self) -> datetime:
        return workflow.now()

    async def start(self, child_id: str, request: TaskRunInput) -> Awaitable[TaskOutcome]:
        return await workflow.start_child_workflow(
            names.TASK_WORKFLOW,
            request,
            id=child_id,
            result_type=TaskOutcome,
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            task_timeout=task_workflow_task_timeout(request.agent),
            static_summary=f"task {request.task_id} of batch {request.batch_id}"[:200],
        )

    async def signal(self, child_id: str, control: ChildControl) -> None:
        try:
            await workflow.get_external_workflow_handle(child_id).signal(names.CONTROL, control)
        except FailureError as err:
            workflow.logger.info("Child %s did not take the signal: %s", child_id, err)

    async def cancel(self, child_id: str) -> None:
        try:
            await workflow.get_external_workflow_handle(child_id).cancel()
        except FailureError as err:
            workflow.logger.info("Child %s did not take the cancellation: %s", child_id, err)

    async def wait_condition(
        self, done: Callable[[], bool], within: timedelta | None = None
    ) -> bool:
        try:
            await workflow.wait_condition(done, timeout=within)
        except TimeoutError:
            return False
        return True


class ChildFleet:
    def __init__(
        self,
        batch_id: str,
        agent: AgentSettings,
        *,
        children: Children,
        is_paused: Callable[[], bool],
        tasks: RunningTasks,
        on_outcome: Callable[[TaskOutcome], None],
        on_started: Callable[[], None],
    ) -> None:
        """`is_paused` is the batch's pause state and `tasks` its running tasks; the fleet
        hands each outcome to `on_outcome` and calls `on_started` when a start is settled."""
        self._batch_id = batch_id
        self._agent = agent
        self._children = children
        self._is_paused = is_paused
        self._tasks = tasks
        self._on_outcome = on_outcome
        self._on_started = on_started
        self._starting = 0
        self._start_tasks: set[asyncio.Task[None]] = set()
        # Children this run started and awaits, by workflow id; those that confirmed the hand-over.
        self._awaited: dict[str, TaskRow] = {}
        self._handed_over: set[str] = set()
        # Children of an earlier run were told the pause state before it continued as new.
        self._paused_told = is_paused()

    @property
    def starting(self) -> int:
        """Child starts not yet accepted (a batch with starts under way is running)."""
        return self._starting

    @property
    def local_turns(self) -> bool:
        return self._agent.model_calls == "local"

    @property
    def pause_delivered(self) -> bool:
        """Whether every running child has been told the batch's pause state."""
        return self._paused_told == self._is_paused()

    @property
    def awaited(self) -> frozenset[str]:
        """The workflow ids of the children this run awaits."""
        return frozenset(self._awaited)

    def child_id(self, entry: TaskRow) -> str:
        return names.task_workflow_id(self._batch_id, entry.id, entry.attempts)

    def start(self, entry: TaskRow, rework_feedback: str | None = None) -> None:
        """Start the child for `entry`'s current attempt and await its outcome, in the
        background."""
        self._starting += 1
        task = asyncio.create_task(self._run_child(entry, rework_feedback))
        self._start_tasks.add(task)
        task.add_done_callback(self._start_tasks.discard)

    async def all_started(self) -> None:
        await self._children.wait_condition(lambda: self._starting == 0)

    def handed_over(self, task_id: str, attempt: int) -> None:
        """A child confirmed that it reports by signal from now on."""
        self._handed_over.add(names.task_workflow_id(self._batch_id, task_id, attempt))

    async def tell_pause_state(self) -> None:
        if self.pause_delivered:
            return
        if self.local_turns:
            # A child whose turns are local is never signalled (see let_finish): a pause stops
            # new tasks, and the running ones finish.
            self._paused_told = self._is_paused()
            return
        await self.all_started()
        paused = self._is_paused()
        control = ChildControl(paused=paused)
        await self._each(
            [self.child_id(e) for e in self._tasks.in_flight_entries()],
            lambda child_id: self._children.signal(child_id, control),
        )
        self._paused_told = paused

    async def cancel(self, entries: Sequence[TaskRow]) -> None:
        await self._each(
            [self.child_id(e) for e in entries], lambda child_id: self._children.cancel(child_id)
        )

    async def cancel_all(self, reason: str) -> None:
        """Cancel every running child, for `reason`, and wait for each to report. One that does
        not confirm in time is taken as cancelled, with the store write it did not make."""
        await self.all_started()
        running = self._tasks.in_flight_entries()
        for entry in running:
            entry.status_reason = reason
        await self.cancel(running)
        confirmed = await self._children.wait_condition(
            lambda: self._tasks.in_flight == 0, within=CANCEL_CONFIRM_TIMEOUT
        )
        if confirmed:
            return
        now = self._children.now()
        for entry in self._tasks.in_flight_entries():
            entry.status_reason = f"{reason} (the task did not confirm in time)"
            record = ended_by_batch(
                self._batch_id, entry, TaskStatus.CANCELLED, now, reason=entry.status_reason
            )
            self._on_outcome(
                TaskOutcome(
                    task_id=entry.id,
                    attempt=entry.attempts,
                    status=TaskStatus.CANCELLED,
                    completed_at=now,
                    record=record,
                )
            )

    async def hand_over(self) -> None:
        """Make every child this run awaits report by signal instead, so its outcome reaches the
        next run. A child confirms by signal; one that had already finished cannot take the
        message, and its completion reaches this run, which waits for one or the other."""
        awaited = sorted(self._awaited)
        control = ChildControl(paused=self._is_paused(), report_by_signal=True)
        await self._each(awaited, lambda child_id: self._children.signal(child_id, control))
        await self._children.wait_condition(
            lambda: all(c in self._handed_over or c not in self._awaited for c in awaited)
        )

    async def let_finish(self, stop: Callable[[], bool]) -> None:
        """Wait for every child this run awaits to finish, instead of handing them over, until
        `stop` (a cancellation) says otherwise.

        A child whose model turns are local activities spends its turns inside its workflow
        task, and a signal reaching it meanwhile makes Temporal reject that task's completion:
        the turn would run again, a second paid model call. So such a child is never signalled,
        not even to pause (it runs to its end), and the run lets its children finish (starting
        none) rather than hand them over.
        """
        await self._children.wait_condition(lambda: not self._awaited or stop())

    async def _run_child(self, entry: TaskRow, rework_feedback: str | None) -> None:
        child_id = self.child_id(entry)
        request = TaskRunInput(
            batch_id=self._batch_id,
            task_id=entry.id,
            attempt=entry.attempts,
            agent=self._agent,
            rework_feedback=rework_feedback,
        )
        try:
            outcome_of_child = await self._children.start(child_id, request)
        except (WorkflowAlreadyStartedError, FailureError) as err:
            # Not adopted: a workflow already holding this id was not started by this batch
            # (for example a batch id reused while old children still run).
            self._on_outcome(self._never_started(entry, err))
            return
        finally:
            self._starting -= 1
            self._on_started()
        self._awaited[child_id] = entry
        try:
            outcome: TaskOutcome | None = await outcome_of_child
        except ChildWorkflowError as err:
            outcome = self._unfinished(entry, err)
        finally:
            del self._awaited[child_id]
        if outcome is not None:
            self._on_outcome(outcome)

    def _never_started(self, entry: TaskRow, err: Exception) -> TaskOutcome:
        return self._failed(entry, _start_error(err))

    def _unfinished(self, entry: TaskRow, err: ChildWorkflowError) -> TaskOutcome | None:
        """What the batch records for a child that ended without an outcome. A cancelled child
        has reported by signal already (with its usage), so there is nothing to add."""
        if isinstance(err.cause, CancelledError):
            return None
        if isinstance(err.cause, TerminatedError):
            error = TaskError(code="terminated", message=f"the task workflow was terminated: {err}")
        elif isinstance(err.cause, TemporalTimeoutError):
            error = TaskError(code="timed_out", message=f"the task workflow timed out: {err}")
        else:
            message = f"the task workflow failed: {err}"
            error = TaskError(code="task_workflow_failed", message=message)
        return self._failed(entry, error)

    def _failed(self, entry: TaskRow, error: TaskError) -> TaskOutcome:
        """A failed outcome for a child that cannot report one, with the store write it cannot
        make either."""
        now = self._children.now()
        return TaskOutcome(
            task_id=entry.id,
            attempt=entry.attempts,
            status=TaskStatus.FAILED,
            error=error,
            completed_at=now,
            record=ended_by_batch(self._batch_id, entry, TaskStatus.FAILED, now, error=error),
        )

    async def _each(
        self, child_ids: Sequence[str], action: Callable[[str], Awaitable[None]]
    ) -> None:
        """Apply `action` to each child, a group of commands per workflow task."""
        for start in range(0, len(child_ids), COMMAND_GROUP):
            await asyncio.gather(*(action(c) for c in child_ids[start : start + COMMAND_GROUP]))


def _start_error(err: Exception) -> TaskError:
    if isinstance(err, WorkflowAlreadyStartedError):
        message = "a task workflow with this id is already running and belongs to another batch"
        return TaskError(code="already_running", message=message)
    return TaskError(code="start_failed", message=f"the task workflow did not start: {err}")

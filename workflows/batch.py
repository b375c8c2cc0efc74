"""BatchWorkflow: the batch's task table as durable state, and a sliding window of task children.

Handlers only change state and set `_wake`; the run loop does the work (start children, tell them
to pause, write the store, continue as new). Children are started with parent close policy ABANDON,
so they keep running across continue-as-new; cancelling the batch cancels them explicitly.

How an outcome comes back: a run awaits the children it started, so a child's completion event is
its report (no signal, no extra workflow task on either side). Before continuing as new, the run
hands its running children over: it tells each to report by signal to the batch's workflow id
(which reaches the newest run) and waits until each has confirmed or completed, so no outcome can
fall between the runs. A cancelled child always reports by signal, since it ends without a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from temporalio import workflow
from temporalio.exceptions import (
    ApplicationError,
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
    from taskpool.domain import agents, names
    from taskpool.domain.activity_options import STORE_WRITE_OPTIONS, task_workflow_task_timeout
    from taskpool.domain.batch import (
        BatchResult,
        BatchRun,
        BatchState,
        BatchStatus,
        ChildControl,
        TaskOutcome,
        TaskPage,
        TaskRef,
        TaskRunInput,
        TaskView,
        WebhookDelivery,
        WebhookEvent,
    )
    from taskpool.domain.batch_details import batch_details
    from taskpool.domain.packing import pack, unpack
    from taskpool.domain.records import RecordTasksRequest, RegisterTasksRequest, TaskRecordUpdate
    from taskpool.domain.requests import (
        AddTasksRequest,
        CancelRequest,
        CancelTasksRequest,
        PauseRequest,
        ResumeRequest,
        RetryTasksRequest,
        ReviewTasksRequest,
        SetConcurrencyRequest,
        TaskQuery,
        TasksQuery,
    )
    from taskpool.domain.scheduling import MAX_TASKS_PER_BATCH, TaskTable
    from taskpool.domain.task_columns import TaskRow
    from taskpool.domain.tasks import EventType, TaskError, TaskEvent, TaskSpec, TaskStatus
    from taskpool.domain.transitions import can_transition

# A workflow task is all-or-nothing and the server refuses one with too many pending commands, so
# child starts, child signals and store writes go out in groups of this size.
COMMAND_GROUP = 100
STORE_CHUNK = 500
# Cancelling a whole batch writes its statuses to the store after this many tasks at a time. A
# multiple of STORE_CHUNK, so the writes go out in the same groups, in the same order, as when
# they all went out at the end: a cancellation under way on an older release replays.
CANCEL_GROUP = 40 * STORE_CHUNK
# Temporal refuses payloads over 2 MB; past this the packed state drops error details (the store
# keeps them) rather than risk a continue-as-new the server would refuse.
PACKED_STATE_LIMIT = 1_500_000
# The TaskpoolProgress search attribute moves in steps of this many percent.
PROGRESS_STEP = 5
# How long cancellation waits for running children to confirm before it marks them cancelled.
CANCEL_CONFIRM_TIMEOUT = timedelta(minutes=2)


@workflow.defn(name=names.BATCH_WORKFLOW)
class BatchWorkflow:
    @workflow.init
    def __init__(self, run: BatchRun) -> None:
        self._run = run
        self._table = TaskTable(
            unpack(run.tasks),
            usage=run.usage,
            llm_calls=run.llm_calls,
            recent_failures=run.recent_failures,
        )
        self._wake = True
        self._starting = 0
        self._reports_this_run = 0
        # Children of an earlier run were told the pause state before it continued as new.
        self._children_paused = run.paused
        self._store_updates: list[_Change] = []
        self._search_attributes: tuple[str, int] | None = None
        self._start_tasks: set[asyncio.Task[None]] = set()
        # Children this run started and awaits, by workflow id; those that confirmed the hand-over.
        self._awaited: dict[str, TaskRow] = {}
        self._handed_over: set[str] = set()
        # A retry that brings new inputs queues its tasks only after their store write. Retries
        # take turns, so one accepted meanwhile cannot queue such a task before its new input is
        # written (a turn on another worker would read the old one).
        self._retrying = asyncio.Lock()
        self._finished = False

    @property
    def _local_turns(self) -> bool:
        return self._run.options.agent.model_calls == "local"

    @property
    def _batch_id(self) -> str:
        return workflow.info().workflow_id

    @workflow.run
    async def run(self, run: BatchRun) -> BatchResult:
        if self._run.started_at is None:
            self._run.started_at = workflow.now()
        try:
            if not self._run.registered:
                # The starter put the definitions in the store; record where each task begins.
                self._note_changes(self._table.settle_pending(workflow.now()))
                await self._flush_store()
                self._run.registered = True
            await self._run_loop()
        except asyncio.CancelledError:
            # "Request Cancellation" in the UI or CLI: clean up like the cancel signal, then let
            # the workflow end as cancelled.
            self._run.cancel_reason = (
                self._run.cancel_reason
                or workflow.cancellation_reason()
                or "cancellation requested from Temporal"
            )
            await self._cancel_everything()
            self._refresh_visibility()
            await self._announce("batch.finished")
            raise
        # The run loop is done with the table: an update accepted from here on would change it
        # for nobody (see _reject_if_closing).
        self._finished = True
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._refresh_visibility()
        await self._announce("batch.finished")
        return BatchResult(
            batch_id=self._batch_id,
            state=self._state(),
            total=len(self._table),
            counts=self._table.count_map(),
            usage=self._table.usage,
        )

    async def _run_loop(self) -> None:
        while True:
            self._wake = False
            self._release_scheduled()
            if self._run.cancel_reason is not None:
                await self._cancel_everything()
                return
            await self._tell_children_pause_state()
            self._dispatch()
            await self._flush_store()
            self._refresh_visibility()
            await self._announce_review_when_due()
            # A retry still writing new inputs has tasks to queue, and a result in review waits
            # for a decision: the batch is not done.
            if (
                self._starting == 0
                and not self._table.can_progress()
                and not self._retrying.locked()
                and not self._table.counts[TaskStatus.REVIEW]
            ):
                self._note_changes(self._table.cancel_blocked_for_good(workflow.now()))
                await self._flush_store()
                return
            if self._should_continue_as_new():
                await self._continue_as_new()
            await self._sleep_until_woken()

    async def _sleep_until_woken(self) -> None:
        due = self._table.next_due()
        timeout = None if due is None else max((due - workflow.now()).total_seconds(), 0.001)
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._wake, timeout=timeout)

    # --- signals (the public API: see DESIGN.md section 4) ----------------------------------------

    @workflow.signal(name=names.PAUSE)
    def pause(self, request: PauseRequest | None = None) -> None:
        self._run.paused = True
        self._run.pause_reason = request.reason if request else None
        self._wake = True

    @workflow.signal(name=names.RESUME)
    def resume(self, request: ResumeRequest | None = None) -> None:
        self._run.paused = False
        self._run.pause_reason = None
        self._wake = True

    @workflow.signal(name=names.CANCEL)
    def cancel(self, request: CancelRequest | None = None) -> None:
        if self._run.cancel_reason is None:
            reason = request.reason if request and request.reason else None
            self._run.cancel_reason = reason or "cancelled by request"
        self._wake = True

    @workflow.signal(name=names.TASK_FINISHED)
    def task_finished(self, outcome: TaskOutcome) -> None:
        self._accept(outcome)

    @workflow.signal(name=names.TASK_HANDED_OVER)
    def task_handed_over(self, ref: TaskRef) -> None:
        self._handed_over.add(names.task_workflow_id(self._batch_id, ref.task_id, ref.attempt))

    def _accept(self, outcome: TaskOutcome) -> None:
        changed = self._table.accept_outcome(outcome, workflow.now())
        if changed is None:
            return
        self._reports_this_run += 1
        self._note_changes(changed)
        self._wake = True

    # --- queries ----------------------------------------------------------------------------------

    @workflow.query(name=names.STATUS)
    def status(self) -> BatchStatus:
        table = self._table
        total = len(table)
        return BatchStatus(
            batch_id=self._batch_id,
            state=self._state(),
            total=total,
            counts=table.count_map(),
            concurrency=self._run.options.concurrency,
            in_flight=table.in_flight,
            progress_percent=round(100.0 * table.finished_count / total, 2) if total else 100.0,
            paused=self._run.paused,
            pause_reason=self._run.pause_reason,
            pause_delivered=self._children_paused == self._run.paused,
            cancel_reason=self._run.cancel_reason,
            usage=table.usage,
            llm_calls=table.llm_calls,
            started_at=self._run.started_at,
            run_number=self._run.run_number,
            recent_errors=table.recent_failure_views(),
        )

    @workflow.query(name=names.TASKS)
    def tasks(self, query: TasksQuery | None = None) -> TaskPage:
        query = query or TasksQuery()
        matching = self._table.with_status(query.status)
        page = itertools.islice(matching, query.offset, query.offset + query.limit)
        return TaskPage(
            total=self._table.count_with(query.status),
            offset=query.offset,
            items=[self._table.view(e) for e in page],
        )

    @workflow.query(name=names.TASK)
    def task(self, query: TaskQuery) -> TaskView:
        entry = self._table.get(query.task_id)
        if entry is None:
            raise ValueError(f"batch {self._batch_id} has no task {query.task_id!r}")
        return self._table.view(entry)

    # --- updates: validated first, so a bad request never reaches history -------------------------

    @workflow.update(name=names.ADD_TASKS)
    async def add_tasks(self, request: AddTasksRequest) -> BatchStatus:
        statuses = self._table.add(request.tasks, workflow.now())
        self._wake = True
        await self._register(request.tasks, statuses)
        return self.status()

    @add_tasks.validator
    def _validate_add_tasks(self, request: AddTasksRequest) -> None:
        self._reject_if_closing()
        if not request.tasks:
            raise ValueError("no tasks to add")
        if len(self._table) + len(request.tasks) > MAX_TASKS_PER_BATCH:
            raise ValueError(
                f"the batch has {len(self._table)} tasks and holds at most "
                f"{MAX_TASKS_PER_BATCH}; start another batch for these {len(request.tasks)}"
            )
        new_ids = [t.id for t in request.tasks]
        problems = []
        seen: set[str] = set()
        for spec in request.tasks:
            if spec.id in self._table or spec.id in seen:
                problems.append(f"task id {spec.id!r} is already in the batch")
            seen.add(spec.id)
            if spec.kind not in agents.KINDS:
                problems.append(f"task {spec.id!r}: unknown kind {spec.kind!r}")
            for dependency in spec.depends_on:
                if dependency not in self._table and dependency not in new_ids:
                    problems.append(f"task {spec.id!r} depends on unknown task {dependency!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @workflow.update(name=names.RETRY_TASKS)
    async def retry_tasks(self, request: RetryTasksRequest) -> BatchStatus:
        async with self._retrying:
            if request.inputs:
                # The next attempt's first turn reads the definition: the input goes first.
                await self._replace_inputs(request)
                if self._run.cancel_reason is not None:
                    raise ApplicationError(
                        f"the batch was cancelled ({self._run.cancel_reason}) while the new "
                        "inputs were written: the store has them, but nothing was retried",
                        non_retryable=True,
                    )
            for entry in self._still_failed(request):
                self._note_changes(self._table.retry(entry), EventType.RETRIED)
        self._wake = True
        return self.status()

    @retry_tasks.validator
    def _validate_retry_tasks(self, request: RetryTasksRequest) -> None:
        self._reject_if_closing()
        self._require_each(request.task_ids, TaskStatus.FAILED, "only failed tasks retry")
        retried = {entry.id for entry in self._still_failed(request)}
        if not retried:
            raise ValueError("no failed tasks to retry")
        strays = [task_id for task_id in request.inputs if task_id not in retried]
        if strays:
            shown = ", ".join(repr(task_id) for task_id in strays[:5])
            raise ValueError(f"new inputs given for tasks this request does not retry: {shown}")

    def _still_failed(self, request: RetryTasksRequest) -> list[TaskRow]:
        """The failed tasks a retry names. A task another retry has queued since this one was
        accepted is left out, so it is not queued twice."""
        return self._named(request.task_ids, TaskStatus.FAILED, every=request.all_failed)

    def _named(self, task_ids: Sequence[str], status: TaskStatus, *, every: bool) -> list[TaskRow]:
        """The tasks a request names (or, with `every`, all) that are in `status` now."""
        if every:
            return list(self._table.with_status(status))
        entries = (self._table.get(task_id) for task_id in dict.fromkeys(task_ids))
        return [e for e in entries if e is not None and e.status is status]

    def _require_each(self, task_ids: Sequence[str], status: TaskStatus, only: str) -> None:
        """Refuse a request that names a task the batch does not have or one not in `status`."""
        for task_id in task_ids:
            entry = self._table.get(task_id)
            if entry is None:
                raise ValueError(f"batch has no task {task_id!r}")
            if entry.status is not status:
                raise ValueError(f"task {task_id!r} is {entry.status.value}; {only}")

    async def _replace_inputs(self, request: RetryTasksRequest) -> None:
        now = workflow.now()
        updates = []
        for entry in self._still_failed(request):
            if entry.id not in request.inputs:
                continue
            retry = entry.retry_count + 1
            event = TaskEvent(
                key=f"batch:{retry}:input",
                type=EventType.COMMENT,
                at=now,
                message=f"input replaced for retry {retry}",
            )
            updates.append(
                TaskRecordUpdate(
                    batch_id=self._batch_id,
                    task_id=entry.id,
                    input=request.inputs[entry.id],
                    events=[event],
                )
            )
        if updates:
            await workflow.execute_local_activity(
                names.RECORD_TASKS, RecordTasksRequest(updates=updates), **STORE_WRITE_OPTIONS
            )

    @workflow.update(name=names.REVIEW_TASKS)
    def review_tasks(self, request: ReviewTasksRequest) -> BatchStatus:
        now = workflow.now()
        for entry in self._in_review(request):
            if request.decision == "approve":
                note = f": {request.feedback}" if request.feedback else ""
                entry.status_reason = f"approved in review{note}"
                self._note_changes(self._table.approve(entry, now))
                # The store's event keeps the note; the batch's state need not.
                entry.status_reason = None
            else:
                feedback = request.feedback or ""
                self._table.send_back(entry)
                entry.status_reason = f"sent back from review: {feedback}"
                # The result stays in the store for the next attempt to revise.
                self._note_changes([entry], keep_result=True)
                entry.status_reason = "sent back from review"
                self._run.rework_feedback[entry.id] = feedback
        self._wake = True
        return self.status()

    @review_tasks.validator
    def _validate_review_tasks(self, request: ReviewTasksRequest) -> None:
        self._reject_if_closing()
        if request.decision == "reject" and not (request.feedback or "").strip():
            raise ValueError("a result sent back needs feedback: say what to change")
        if not request.task_ids and not request.all_in_review:
            raise ValueError("name the tasks to review, or set all_in_review")
        only = "only a task in review can be approved or sent back"
        self._require_each(request.task_ids, TaskStatus.REVIEW, only)
        if not self._in_review(request):
            raise ValueError("no task of the batch is waiting in review")

    def _in_review(self, request: ReviewTasksRequest) -> list[TaskRow]:
        return self._named(request.task_ids, TaskStatus.REVIEW, every=request.all_in_review)

    @workflow.update(name=names.CANCEL_TASKS)
    async def cancel_tasks(self, request: CancelTasksRequest) -> BatchStatus:
        reason = request.reason or "cancelled by request"
        running = []
        for task_id in request.task_ids:
            entry = self._table.get(task_id)
            if entry is None or entry.status.is_terminal:
                continue
            if entry.status in (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS):
                entry.status_reason = reason
                running.append(entry)
            else:
                self._run.rework_feedback.pop(task_id, None)
                self._cancel_waiting(entry, reason)
        self._wake = True
        await self._cancel_children(running)
        return self.status()

    @cancel_tasks.validator
    def _validate_cancel_tasks(self, request: CancelTasksRequest) -> None:
        self._reject_if_closing()
        for task_id in request.task_ids:
            entry = self._table.get(task_id)
            if entry is None:
                raise ValueError(f"batch has no task {task_id!r}")
            if entry.status.is_terminal:
                raise ValueError(f"task {task_id!r} has already ended ({entry.status.value})")
            if not can_transition(entry.status, TaskStatus.CANCELLED):
                raise ValueError(f"task {task_id!r} cannot be cancelled from {entry.status.value}")

    @workflow.update(name=names.SET_CONCURRENCY)
    def set_concurrency(self, request: SetConcurrencyRequest) -> BatchStatus:
        self._run.options.concurrency = request.concurrency
        self._wake = True
        return self.status()

    @set_concurrency.validator
    def _validate_set_concurrency(self, request: SetConcurrencyRequest) -> None:
        self._reject_if_closing()

    def _reject_if_closing(self) -> None:
        if self._run.cancel_reason is not None:
            raise ValueError(f"the batch is being cancelled ({self._run.cancel_reason})")
        if self._finished:
            raise ValueError("the batch has finished")

    # --- dispatch ---------------------------------------------------------------------------------

    def _release_scheduled(self) -> None:
        self._note_changes(self._table.release_due(workflow.now()), EventType.QUEUED)

    def _dispatch(self) -> None:
        if self._run.paused:
            return
        free = self._run.options.concurrency - self._table.in_flight
        for entry in self._table.take_ready(min(free, COMMAND_GROUP)):
            entry.started_at = workflow.now()
            self._starting += 1
            feedback = self._run.rework_feedback.pop(entry.id, None)
            start = asyncio.create_task(self._start_child(entry, feedback))
            self._start_tasks.add(start)
            start.add_done_callback(self._start_tasks.discard)

    async def _start_child(self, entry: TaskRow, rework_feedback: str | None) -> None:
        child_id = names.task_workflow_id(self._batch_id, entry.id, entry.attempts)
        try:
            handle = await workflow.start_child_workflow(
                names.TASK_WORKFLOW,
                TaskRunInput(
                    batch_id=self._batch_id,
                    task_id=entry.id,
                    attempt=entry.attempts,
                    agent=self._run.options.agent,
                    turns_record_themselves=True,
                    rework_feedback=rework_feedback,
                ),
                id=child_id,
                result_type=TaskOutcome,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                task_timeout=task_workflow_task_timeout(self._run.options.agent),
                static_summary=f"task {entry.id} of batch {self._batch_id}"[:200],
            )
        except (WorkflowAlreadyStartedError, FailureError) as err:
            # Not adopted: a workflow already holding this id was not started by this batch
            # (for example a batch id reused while old children still run).
            self._table.accept_outcome(
                TaskOutcome(
                    task_id=entry.id,
                    attempt=entry.attempts,
                    status=TaskStatus.FAILED,
                    error=_start_error(err),
                    completed_at=workflow.now(),
                ),
                workflow.now(),
            )
            self._note_changes([entry], EventType.FAILED)
            return
        finally:
            self._starting -= 1
            self._wake = True
        self._awaited[child_id] = entry
        try:
            outcome: TaskOutcome | None = await handle
        except ChildWorkflowError as err:
            outcome = _outcome_of_unfinished_child(entry, err, workflow.now())
        finally:
            del self._awaited[child_id]
        if outcome is not None:
            self._accept(outcome)

    async def _tell_children_pause_state(self) -> None:
        if self._children_paused == self._run.paused:
            return
        if self._local_turns:
            # A child whose turns are local is never signalled (see _let_children_finish): a
            # pause stops new tasks, and the running ones finish.
            self._children_paused = self._run.paused
            return
        await workflow.wait_condition(lambda: self._starting == 0)
        paused = self._run.paused
        await self._for_each_child(
            self._table.in_flight_entries(),
            lambda handle: handle.signal(names.CONTROL, ChildControl(paused=paused)),
        )
        self._children_paused = paused

    async def _cancel_children(self, entries: Sequence[TaskRow]) -> None:
        await self._for_each_child(entries, lambda handle: handle.cancel())

    async def _for_each_child(self, entries: Sequence[TaskRow], action: Any) -> None:
        """Apply `action` to each child's handle, a group of commands per workflow task. A child
        that has just finished no longer takes signals; its report is on the way."""

        child_ids = [names.task_workflow_id(self._batch_id, e.id, e.attempts) for e in entries]
        await self._for_each_child_id(child_ids, action)

    async def _for_each_child_id(self, child_ids: Sequence[str], action: Any) -> None:
        async def apply(child_id: str) -> None:
            try:
                await action(workflow.get_external_workflow_handle(child_id))
            except FailureError as err:
                workflow.logger.info("Child %s did not take the command: %s", child_id, err)

        for start in range(0, len(child_ids), COMMAND_GROUP):
            await asyncio.gather(*(apply(c) for c in child_ids[start : start + COMMAND_GROUP]))

    async def _hand_over_children(self) -> None:
        """Make every child this run awaits report by signal instead, so its outcome reaches the
        next run. A child confirms by signal; one that had already finished cannot take the
        message, and its completion reaches this run, which waits for one or the other."""
        awaited = sorted(self._awaited)
        control = ChildControl(paused=self._run.paused, report_by_signal=True)
        await self._for_each_child_id(awaited, lambda handle: handle.signal(names.CONTROL, control))
        await workflow.wait_condition(
            lambda: all(c in self._handed_over or c not in self._awaited for c in awaited)
        )

    async def _let_children_finish(self) -> None:
        """Wait for every child this run awaits to finish, instead of handing them over.

        A child whose model turns are local activities spends its turns inside its workflow
        task, and a signal reaching it meanwhile makes Temporal reject that task's completion:
        the turn would run again, a second paid model call. So such a child is never signalled,
        not even to pause (it runs to its end), and the run lets its children finish (starting
        none) rather than hand them over. A cancellation ends the wait.
        """
        await workflow.wait_condition(
            lambda: not self._awaited or self._run.cancel_reason is not None
        )

    def _cancel_waiting(self, entry: TaskRow, reason: str) -> None:
        """Cancel a task that is not running, and its dependents."""
        # A result cancelled in review was never approved, but it stays readable in the store.
        in_review = entry.status is TaskStatus.REVIEW
        cancelled = self._table.cancel(entry, reason, workflow.now())
        self._note_changes(cancelled, keep_result=in_review)

    async def _cancel_everything(self) -> None:
        reason = self._run.cancel_reason or "cancelled"
        for entry in self._table.with_status(None):
            if not entry.status.is_terminal and entry.status not in (
                TaskStatus.ASSIGNED,
                TaskStatus.IN_PROGRESS,
            ):
                self._cancel_waiting(entry, reason)
                if len(self._store_updates) >= CANCEL_GROUP:
                    # Each store write is a new workflow task: a batch of a million tasks
                    # cancels in many, none of them near the deadlock timeout.
                    await self._flush_store()
        await self._flush_store()
        await workflow.wait_condition(lambda: self._starting == 0)
        running = self._table.in_flight_entries()
        for entry in running:
            entry.status_reason = reason
        await self._cancel_children(running)
        try:
            await workflow.wait_condition(
                lambda: self._table.in_flight == 0, timeout=CANCEL_CONFIRM_TIMEOUT
            )
        except TimeoutError:
            for entry in self._table.in_flight_entries():
                self._table.accept_outcome(
                    TaskOutcome(
                        task_id=entry.id,
                        attempt=entry.attempts,
                        status=TaskStatus.CANCELLED,
                        completed_at=workflow.now(),
                    ),
                    workflow.now(),
                )
                entry.status_reason = f"{reason} (the task did not confirm in time)"
                self._note_changes([entry], EventType.CANCELLED)
        await self._flush_store()

    # --- continue-as-new --------------------------------------------------------------------------

    def _should_continue_as_new(self) -> bool:
        return (
            self._reports_this_run >= self._run.options.continue_as_new_after
            or workflow.info().is_continue_as_new_suggested()
        )

    async def _continue_as_new(self) -> None:
        # Every child start must be accepted before the hand-over, or the new run could not
        # find it; handlers must finish so no signal or update is lost.
        await workflow.wait_condition(lambda: self._starting == 0)
        if self._local_turns:
            await self._let_children_finish()
            if self._run.cancel_reason is not None:
                return  # the run loop cancels instead
        else:
            await self._hand_over_children()
        # Signals keep arriving while this run waits: a pause the children have not heard of,
        # or reports whose consequences are not in the store yet, would be lost with the run.
        while True:
            await self._tell_children_pause_state()
            await self._flush_store()
            await workflow.wait_condition(workflow.all_handlers_finished)
            if not self._store_updates and self._children_paused == self._run.paused:
                break
        self._run.tasks = pack(self._table.columns, limit_bytes=PACKED_STATE_LIMIT)
        self._run.usage = self._table.usage
        self._run.llm_calls = self._table.llm_calls
        self._run.recent_failures = list(self._table.recent_failures)
        self._run.run_number += 1
        workflow.logger.info(
            "Batch continues as new (run %d) after %d reports",
            self._run.run_number,
            self._reports_this_run,
        )
        workflow.continue_as_new(self._run)

    # --- webhooks ---------------------------------------------------------------------------------

    async def _announce_review_when_due(self) -> None:
        """Announce each time the batch comes to await review (once, across continue-as-new)."""
        awaiting = self._state() is BatchState.AWAITING_REVIEW
        if awaiting == self._run.review_announced:
            return
        self._run.review_announced = awaiting
        if awaiting:
            await self._announce("batch.awaiting_review")

    async def _announce(self, event: WebhookEvent) -> None:
        """Start the delivery of a webhook and leave it: it retries on its own, and the batch
        goes on (or ends) meanwhile. Where it goes is the workers' configuration."""
        if not self._run.webhooks:
            return
        self._run.webhooks_sent += 1
        status = self.status()
        delivery = WebhookDelivery(
            event=event,
            delivery_id=names.webhook_workflow_id(self._batch_id, self._run.webhooks_sent),
            batch_id=self._batch_id,
            state=status.state,
            total=status.total,
            counts=status.counts,
            usage=status.usage,
            llm_calls=status.llm_calls,
            at=workflow.now(),
        )
        try:
            await workflow.start_child_workflow(
                names.WEBHOOK_WORKFLOW,
                delivery,
                id=delivery.delivery_id,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                static_summary=f"{event} webhook of batch {self._batch_id}"[:200],
            )
        except (WorkflowAlreadyStartedError, FailureError) as err:
            workflow.logger.warning("Webhook %s not started: %s", delivery.delivery_id, err)

    # --- the task store ---------------------------------------------------------------------------

    async def _register(self, specs: Sequence[TaskSpec], statuses: dict[str, TaskStatus]) -> None:
        groups = RegisterTasksRequest.in_groups(
            self._batch_id, specs, statuses, workflow.now(), STORE_CHUNK
        )
        for request in groups:
            await workflow.execute_local_activity(
                names.REGISTER_TASKS, request, **STORE_WRITE_OPTIONS
            )

    def _note_changes(
        self,
        entries: Sequence[TaskRow],
        event: EventType | None = None,
        *,
        keep_result: bool = False,
    ) -> None:
        """Queue store writes for status changes the batch made itself. A change is noted as a
        plain tuple and becomes a model only when its group is written: cancelling or starting
        a large batch notes every task at once, inside one workflow task."""
        now = workflow.now()
        self._store_updates += [
            _Change(
                entry.id,
                entry.status,
                entry.retry_count,
                entry.attempts,
                entry.error,
                entry.status_reason,
                event if event is not None else EventType(entry.status.value),
                now,
                keep_result,
            )
            for entry in entries
        ]

    async def _flush_store(self) -> None:
        # One local activity per group: each completion starts a new workflow task, so the work of
        # a large flush is spread out rather than done in one.
        while self._store_updates:
            chunk = self._store_updates[:STORE_CHUNK]
            del self._store_updates[:STORE_CHUNK]
            updates = [change.update(self._batch_id) for change in chunk]
            await workflow.execute_local_activity(
                names.RECORD_TASKS, RecordTasksRequest(updates=updates), **STORE_WRITE_OPTIONS
            )

    # --- what people see --------------------------------------------------------------------------

    def _state(self) -> BatchState:
        counts = self._table.counts
        if self._run.cancel_reason is not None:
            return BatchState.CANCELLED
        if self._run.paused:
            return BatchState.PAUSED
        if self._starting or self._table.can_progress():
            return BatchState.RUNNING
        if counts[TaskStatus.REVIEW]:
            return BatchState.AWAITING_REVIEW
        return BatchState.FAILED if counts[TaskStatus.FAILED] else BatchState.COMPLETED

    def _refresh_visibility(self) -> None:
        status = self.status()
        workflow.set_current_details(batch_details(status, workflow.now()))
        # Each change is an event and a visibility write on the server; the list view needs no
        # finer steps (the details carry the exact figure).
        progress = int(status.progress_percent) // PROGRESS_STEP * PROGRESS_STEP
        visible = (status.state.value, progress)
        if visible != self._search_attributes:
            self._search_attributes = visible
            workflow.upsert_search_attributes(
                [
                    names.BATCH_STATE_ATTRIBUTE.value_set(visible[0]),
                    names.BATCH_PROGRESS_ATTRIBUTE.value_set(visible[1]),
                ]
            )


class _Change(NamedTuple):
    """A status change the batch made, as it was when noted, waiting for its store write."""

    task_id: str
    status: TaskStatus
    retry_count: int
    attempts: int
    error: TaskError | None
    reason: str | None
    event_type: EventType
    at: datetime
    keep_result: bool = False

    def update(self, batch_id: str) -> TaskRecordUpdate:
        return TaskRecordUpdate(
            batch_id=batch_id,
            task_id=self.task_id,
            status=self.status,
            retry_count=self.retry_count,
            error=self.error,
            completed_at=self.at if self.status.is_terminal else None,
            keep_result=self.keep_result,
            events=[
                TaskEvent(
                    key=f"batch:{self.retry_count}:{self.attempts}:{self.status.value}",
                    type=self.event_type,
                    at=self.at,
                    message=self.reason,
                )
            ],
        )


def _outcome_of_unfinished_child(
    entry: TaskRow, err: ChildWorkflowError, now: datetime
) -> TaskOutcome | None:
    """What the batch records for a child that ended without an outcome. A cancelled child has
    reported by signal already (with its usage), so there is nothing to add."""
    if isinstance(err.cause, CancelledError):
        return None
    if isinstance(err.cause, TerminatedError):
        error = TaskError(code="terminated", message=f"the task workflow was terminated: {err}")
    elif isinstance(err.cause, TemporalTimeoutError):
        error = TaskError(code="timed_out", message=f"the task workflow timed out: {err}")
    else:
        error = TaskError(code="task_workflow_failed", message=f"the task workflow failed: {err}")
    return TaskOutcome(
        task_id=entry.id,
        attempt=entry.attempts,
        status=TaskStatus.FAILED,
        error=error,
        completed_at=now,
    )


def _start_error(err: Exception) -> TaskError:
    if isinstance(err, WorkflowAlreadyStartedError):
        message = "a task workflow with this id is already running and belongs to another batch"
        return TaskError(code="already_running", message=message)
    return TaskError(code="start_failed", message=f"the task workflow did not start: {err}")

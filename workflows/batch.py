"""BatchWorkflow: the batch's task table as durable state, and a sliding window of task children.

Handlers only change state and set `_wake`; the run loop does the work (start children, tell them
to pause, write the store, continue as new). The class keeps the handlers, validators and the run
loop; its collaborators each keep a role and its state: the child fleet (workflows/child_fleet.py:
starting, awaiting, pausing, cancelling and handing over children), the store-write queue
(workflows/store_queue.py), the webhooks (workflows/announcements.py) and what the Temporal UI
shows (workflows/visibility.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from taskpool.domain import names
    from taskpool.domain.batch import (
        BatchResult,
        BatchRun,
        BatchStatus,
        TaskOutcome,
        TaskPage,
        TaskRef,
        TaskView,
    )
    from taskpool.domain.packing import pack, unpack
    from taskpool.domain.requests import (
        AddTasksRequest,
        CancelRequest,
        CancelTasksRequest,
        PauseRequest,
        ResumeRequest,
        RetryTasksRequest,
        ReviewTasksRequest,
        SetConcurrencyRequest,
        SetPriorityRequest,
        TaskQuery,
        TasksQuery,
    )
    from taskpool.domain.scheduling import TaskTable, task_view
    from taskpool.domain.task_columns import TaskRow
    from taskpool.domain.tasks import EventType, TaskStatus

from workflows import table_requests
from workflows.announcements import Announcer
from workflows.child_fleet import COMMAND_GROUP, ChildFleet, TemporalChildren
from workflows.store_queue import STORE_CHUNK, StoreQueue
from workflows.visibility import Visibility, batch_status

# Cancelling a whole batch writes the statuses it changed each time a store write's worth of them
# is noted, rather than all at the end: a batch of a million tasks then cancels across many
# activations, each doing a bounded share of the work, none near the deadlock timeout; and a full
# group is one store write, so the cancellation costs no more writes than writing them at the end.
CANCEL_GROUP = STORE_CHUNK
# Temporal refuses payloads over 2 MB; past this the packed state drops error details (the store
# keeps them) rather than risk a continue-as-new the server would refuse.
PACKED_STATE_LIMIT = 1_500_000


@workflow.defn(name=names.BATCH_WORKFLOW)
class BatchWorkflow:
    @workflow.init
    def __init__(self, run: BatchRun) -> None:
        self._run = run
        self._batch_id = workflow.info().workflow_id
        self._table = TaskTable(
            unpack(run.tasks),
            usage=run.usage,
            llm_calls=run.llm_calls,
            recent_failures=run.recent_failures,
        )
        # Set by whatever gives the run loop something to do (an event: collaborators set it too).
        self._wake = asyncio.Event()
        self._wake.set()
        self._reports_this_run = 0
        self._store = StoreQueue(self._batch_id, now=workflow.now)
        self._fleet = ChildFleet(
            self._batch_id,
            run.options.agent,
            children=TemporalChildren(),
            is_paused=lambda: self._run.paused,
            tasks=self._table,
            on_outcome=self._accept,
            on_started=self._wake.set,
        )
        self._announcer = Announcer(
            self._batch_id,
            sent=run.webhooks_sent,
            review_announced=run.review_announced,
            now=workflow.now,
        )
        self._visibility = Visibility()
        # A retry that brings new inputs queues its tasks only after their store write. Retries
        # take turns, so one accepted meanwhile cannot queue such a task before its new input is
        # written (a turn on another worker would read the old one).
        self._retrying = asyncio.Lock()
        self._finished = False

    @workflow.run
    async def run(self, run: BatchRun) -> BatchResult:
        if self._run.started_at is None:
            self._run.started_at = workflow.now()
        cancelled: asyncio.CancelledError | None = None
        # The store queue writes in the background from here on (see StoreQueue.keep_flushing).
        self._store_writer = asyncio.create_task(self._store.keep_flushing(workflow.wait_condition))
        try:
            if not self._run.registered:
                # The starter put the definitions in the store; record where each task begins.
                self._store.note(self._table.settle_pending(workflow.now()))
                await self._store.flush()
                self._run.registered = True
            await self._run_loop()
        except asyncio.CancelledError as err:
            # "Request Cancellation" in the UI or CLI: clean up like the cancel signal, then let
            # the workflow end as cancelled.
            self._run.cancel_reason = (
                self._run.cancel_reason
                or workflow.cancellation_reason()
                or "cancellation requested from Temporal"
            )
            await self._cancel_everything()
            cancelled = err
        else:
            # The run loop is done with the table: an update accepted from here on would change
            # it for nobody (see table_requests.refuse_if_closing).
            self._finished = True
            await workflow.wait_condition(workflow.all_handlers_finished)
        status = self.status()
        self._visibility.refresh(status, workflow.now())
        await self._announcer.announce("batch.finished", status)
        if cancelled is not None:
            raise cancelled
        return BatchResult(
            batch_id=self._batch_id,
            state=status.state,
            total=status.total,
            counts=status.counts,
            usage=status.usage,
        )

    async def _run_loop(self) -> None:
        while True:
            self._wake.clear()
            self._store.note(self._table.release_due(workflow.now()), EventType.QUEUED)
            if self._run.cancel_reason is not None:
                await self._cancel_everything()
                return
            await self._fleet.tell_pause_state()
            if not self._run.paused:
                free = self._run.options.concurrency - self._table.in_flight
                for entry in self._table.take_ready(min(free, COMMAND_GROUP)):
                    entry.started_at = workflow.now()
                    self._fleet.start(entry, self._run.rework_feedback.pop(entry.id, None))
            status = self.status()
            self._visibility.refresh(status, workflow.now())
            await self._announcer.review_when_due(status)
            # A retry still writing new inputs has tasks to queue, and a result in review waits
            # for a decision: the batch is not done.
            if (
                self._fleet.starting == 0
                and not self._table.counts.can_progress()
                and not self._retrying.locked()
                and not self._table.counts[TaskStatus.REVIEW]
            ):
                self._store.note(self._table.cancel_blocked_for_good(workflow.now()))
                await self._store.flush()
                return
            if (
                self._reports_this_run >= self._run.options.continue_as_new_after
                or workflow.info().is_continue_as_new_suggested()
            ):
                await self._continue_as_new()
            due = self._table.next_due()
            timeout = None if due is None else max((due - workflow.now()).total_seconds(), 0.001)
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(self._wake.is_set, timeout=timeout)

    # --- signals (the public API: see docs/design.md section 4) ---------------------------------

    @workflow.signal(name=names.PAUSE)
    def pause(self, request: PauseRequest | None = None) -> None:
        self._run.paused = True
        self._run.pause_reason = request.reason if request else None
        self._wake.set()

    @workflow.signal(name=names.RESUME)
    def resume(self, request: ResumeRequest | None = None) -> None:
        self._run.paused = False
        self._run.pause_reason = None
        self._wake.set()

    @workflow.signal(name=names.CANCEL)
    def cancel(self, request: CancelRequest | None = None) -> None:
        if self._run.cancel_reason is None:
            reason = request.reason if request and request.reason else None
            self._run.cancel_reason = reason or "cancelled by request"
        self._wake.set()

    @workflow.signal(name=names.TASK_FINISHED)
    def task_finished(self, outcome: TaskOutcome) -> None:
        self._accept(outcome)

    @workflow.signal(name=names.TASK_HANDED_OVER)
    def task_handed_over(self, ref: TaskRef) -> None:
        self._fleet.handed_over(ref.task_id, ref.attempt)

    def _accept(self, outcome: TaskOutcome) -> None:
        changed = self._table.accept_outcome(outcome, workflow.now())
        if changed is None:
            return
        self._reports_this_run += 1
        # The task's own last write goes first: the writes that follow from it (dependents
        # released or cancelled) come after it in the store's events.
        if outcome.record is not None:
            self._store.add(outcome.record)
        self._store.note(changed)
        self._wake.set()

    # --- queries ----------------------------------------------------------------------------------

    @workflow.query(name=names.STATUS)
    def status(self) -> BatchStatus:
        return batch_status(
            self._batch_id,
            self._run,
            self._table,
            starting=self._fleet.starting,
            pause_delivered=self._fleet.pause_delivered,
        )

    @workflow.query(name=names.TASKS)
    def tasks(self, query: TasksQuery | None = None) -> TaskPage:
        query = query or TasksQuery()
        matching = self._table.with_status(query.status)
        page = itertools.islice(matching, query.offset, query.offset + query.limit)
        return TaskPage(
            total=self._table.counts.of(query.status),
            offset=query.offset,
            items=[task_view(e) for e in page],
        )

    @workflow.query(name=names.TASK)
    def task(self, query: TaskQuery) -> TaskView:
        entry = self._table.get(query.task_id)
        if entry is None:
            raise ValueError(f"batch {self._batch_id} has no task {query.task_id!r}")
        return task_view(entry)

    # --- updates: validated first, so a bad request never reaches history -------------------------

    @workflow.update(name=names.ADD_TASKS)
    async def add_tasks(self, request: AddTasksRequest) -> BatchStatus:
        statuses = self._table.add(request.tasks, workflow.now())
        self._wake.set()
        await self._store.register(request.tasks, statuses)
        return self.status()

    @add_tasks.validator
    def _validate_add_tasks(self, request: AddTasksRequest) -> None:
        table_requests.refuse_if_closing(self._run, finished=self._finished)
        table_requests.refuse_to_add(self._table, request.tasks)

    @workflow.update(name=names.RETRY_TASKS)
    async def retry_tasks(self, request: RetryTasksRequest) -> BatchStatus:
        async with self._retrying:
            if request.inputs:
                # The next attempt's first turn reads the definition: the input goes first.
                await self._store.write_now(
                    table_requests.input_replacements(
                        self._batch_id, self._table, request, workflow.now()
                    )
                )
                if self._run.cancel_reason is not None:
                    raise ApplicationError(
                        f"the batch was cancelled ({self._run.cancel_reason}) while the new "
                        "inputs were written: the store has them, but nothing was retried",
                        non_retryable=True,
                    )
            for entry in table_requests.still_failed(self._table, request):
                self._store.note(self._table.retry(entry), EventType.RETRIED)
        self._wake.set()
        return self.status()

    @retry_tasks.validator
    def _validate_retry_tasks(self, request: RetryTasksRequest) -> None:
        table_requests.refuse_if_closing(self._run, finished=self._finished)
        table_requests.refuse_to_retry(self._table, request)

    @workflow.update(name=names.REVIEW_TASKS)
    def review_tasks(self, request: ReviewTasksRequest) -> BatchStatus:
        now = workflow.now()
        for entry in table_requests.in_review(self._table, request):
            if request.decision == "approve":
                note = f": {request.feedback}" if request.feedback else ""
                entry.status_reason = f"approved in review{note}"
                self._store.note(self._table.approve(entry, now))
                # The store's event keeps the note; the batch's state need not.
                entry.status_reason = None
            else:
                feedback = request.feedback or ""
                self._table.send_back(entry)
                entry.status_reason = f"sent back from review: {feedback}"
                # The result stays in the store for the next attempt to revise.
                self._store.note([entry], keep_result=True)
                entry.status_reason = "sent back from review"
                self._run.rework_feedback[entry.id] = feedback
        self._wake.set()
        return self.status()

    @review_tasks.validator
    def _validate_review_tasks(self, request: ReviewTasksRequest) -> None:
        table_requests.refuse_if_closing(self._run, finished=self._finished)
        table_requests.refuse_to_review(self._table, request)

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
                _cancel_waiting(self._table, self._store, entry, reason)
        self._wake.set()
        await self._fleet.cancel(running)
        return self.status()

    @cancel_tasks.validator
    def _validate_cancel_tasks(self, request: CancelTasksRequest) -> None:
        table_requests.refuse_if_closing(self._run, finished=self._finished)
        table_requests.refuse_to_cancel(self._table, request.task_ids)

    @workflow.update(name=names.SET_CONCURRENCY)
    def set_concurrency(self, request: SetConcurrencyRequest) -> BatchStatus:
        self._run.options.concurrency = request.concurrency
        self._wake.set()
        return self.status()

    @set_concurrency.validator
    def _validate_set_concurrency(self, request: SetConcurrencyRequest) -> None:
        table_requests.refuse_if_closing(self._run, finished=self._finished)

    @workflow.update(name=names.SET_PRIORITY)
    def set_priority(self, request: SetPriorityRequest) -> BatchStatus:
        # The update's id, unique in the run, keeps each change's store event apart.
        update = workflow.current_update_info()
        change_id = update.id if update is not None else ""
        now = workflow.now()
        for change in table_requests.set_priorities(
            self._batch_id, self._table, request, now, change_id
        ):
            self._store.add(change)
        self._wake.set()
        return self.status()

    @set_priority.validator
    def _validate_set_priority(self, request: SetPriorityRequest) -> None:
        table_requests.refuse_if_closing(self._run, finished=self._finished)
        table_requests.refuse_to_set_priority(self._table, request)

    # --- cancellation and continue-as-new ---------------------------------------------------------

    async def _cancel_everything(self) -> None:
        reason = self._run.cancel_reason or "cancelled"
        for entry in self._table.with_status(None):
            if not entry.status.is_terminal and entry.status not in (
                TaskStatus.ASSIGNED,
                TaskStatus.IN_PROGRESS,
            ):
                _cancel_waiting(self._table, self._store, entry, reason)
                if len(self._store) >= CANCEL_GROUP:
                    await self._store.flush()
        await self._store.flush()
        await self._fleet.cancel_all(reason)
        await self._store.flush()

    async def _continue_as_new(self) -> None:
        # Every child start must be accepted before the hand-over, or the new run could not
        # find it; handlers must finish so no signal or update is lost.
        await self._fleet.all_started()
        if self._fleet.local_turns:
            await self._fleet.let_finish(stop=lambda: self._run.cancel_reason is not None)
            if self._run.cancel_reason is not None:
                return  # the run loop cancels instead
        else:
            await self._fleet.hand_over()
        # Signals keep arriving while this run waits: a pause the children have not heard of,
        # or reports whose consequences are not in the store yet, would be lost with the run.
        while True:
            await self._fleet.tell_pause_state()
            await self._store.flush()
            await workflow.wait_condition(workflow.all_handlers_finished)
            if not self._store and self._fleet.pause_delivered:
                break
        self._run.tasks = pack(self._table.columns, limit_bytes=PACKED_STATE_LIMIT)
        self._run.usage = self._table.usage
        self._run.llm_calls = self._table.llm_calls
        self._run.recent_failures = list(self._table.recent_failures)
        self._run.webhooks_sent = self._announcer.sent
        self._run.review_announced = self._announcer.review_announced
        self._run.run_number += 1
        workflow.logger.info(
            "Batch continues as new (run %d) after %d reports",
            self._run.run_number,
            self._reports_this_run,
        )
        workflow.continue_as_new(self._run)


def _cancel_waiting(table: TaskTable, store: StoreQueue, entry: TaskRow, reason: str) -> None:
    """Cancel a task that is not running, and its dependents."""
    # A result cancelled in review was never approved, but it stays readable in the store.
    in_review = entry.status is TaskStatus.REVIEW
    store.note(table.cancel(entry, reason, workflow.now()), keep_result=in_review)

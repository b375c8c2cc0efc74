"""The batch workflow's collaborators, without a worker or a server: the store-write queue, the
child fleet, the announcer and what the UI shows. Each takes what it asks of Temporal as plain
callables or a small protocol, so these tests pass fakes and drive them on the test's own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)

from taskpool.domain import names
from taskpool.domain.batch import (
    AgentSettings,
    BatchState,
    BatchStatus,
    ChildControl,
    TaskOutcome,
    TaskRunInput,
    WebhookDelivery,
)
from taskpool.domain.published import STATUS_MEMO
from taskpool.domain.records import RecordTasksRequest, RegisterTasksRequest, TaskRecordUpdate
from taskpool.domain.scheduling import TaskTable
from taskpool.domain.task_columns import TaskEntry, TaskRow
from taskpool.domain.tasks import EventType, TaskEvent, TaskSpec, TaskStatus, TokenUsage
from workflows.announcements import Announcer
from workflows.child_fleet import ChildFleet
from workflows.store_queue import RunStoreWrite, StoreQueue, StoreWrite
from workflows.visibility import Visibility

NOW = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = "batch-1"
# How long a fake waits for a condition that should come true at once before it fails the test.
PATIENCE = 5.0


def table_of(*task_ids: str) -> TaskTable:
    table = TaskTable(TaskEntry.from_spec(TaskSpec(id=t, input="x")) for t in task_ids)
    table.settle_pending(NOW)
    return table


def row(table: TaskTable, task_id: str) -> TaskRow:
    entry = table.get(task_id)
    assert entry is not None
    return entry


def status(state: BatchState = BatchState.RUNNING, *, progress: float = 0.0) -> BatchStatus:
    return BatchStatus(
        batch_id=BATCH,
        state=state,
        total=4,
        counts={"completed": 1, "review": 1},
        concurrency=2,
        in_flight=0,
        progress_percent=progress,
        paused=False,
        usage=TokenUsage(prompt_tokens=10, completion_tokens=5),
        llm_calls=3,
        run_number=1,
    )


# --- the store-write queue ------------------------------------------------------------------------


def recording_writer() -> tuple[list[tuple[str, StoreWrite]], RunStoreWrite]:
    written: list[tuple[str, StoreWrite]] = []

    async def write(activity: str, request: StoreWrite) -> None:
        written.append((activity, request))

    return written, write


def record_updates(written: list[tuple[str, StoreWrite]]) -> list[list[TaskRecordUpdate]]:
    groups = []
    for activity, request in written:
        assert activity == names.RECORD_TASKS
        assert isinstance(request, RecordTasksRequest)
        groups.append(request.updates)
    return groups


async def test_store_queue_writes_notes_in_order_in_groups_of_its_chunk() -> None:
    table = table_of(*(f"t{i}" for i in range(7)))
    written, write = recording_writer()
    queue = StoreQueue(BATCH, now=lambda: NOW, write=write, chunk=3)

    queue.note([row(table, f"t{i}") for i in range(7)])
    assert len(queue) == 7
    assert written == []  # noting writes nothing: the flush does
    await queue.flush()

    groups = record_updates(written)
    assert [[u.task_id for u in group] for group in groups] == [
        ["t0", "t1", "t2"],
        ["t3", "t4", "t5"],
        ["t6"],
    ]
    assert len(queue) == 0
    first = groups[0][0]
    assert (first.batch_id, first.status, first.completed_at) == (BATCH, TaskStatus.QUEUED, None)
    assert first.events == [
        TaskEvent(key="batch:0:0:queued", type=EventType.QUEUED, at=NOW, message=None)
    ]
    await queue.flush()
    assert len(written) == 3  # nothing queued, nothing written


async def test_store_queue_writes_one_group_at_a_time_whoever_flushes() -> None:
    """The batch's background writer and a flush of its own (at continue-as-new, say) never
    write at once: a later group cannot land before an earlier one."""
    table = table_of("a", "b", "c")
    started: list[list[str]] = []
    finished: list[list[str]] = []
    release = asyncio.Event()

    async def slow_write(activity: str, request: StoreWrite) -> None:
        assert isinstance(request, RecordTasksRequest)
        ids = [u.task_id for u in request.updates]
        started.append(ids)
        await release.wait()
        finished.append(ids)

    queue = StoreQueue(BATCH, now=lambda: NOW, write=slow_write, chunk=1)

    async def wait_for(condition: Callable[[], bool]) -> None:
        # A stand-in for workflow.wait_condition, which checks its condition after every step.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)

    queue.note([row(table, "a")])
    writer = asyncio.create_task(queue.keep_flushing(wait_for))
    await wait_for(lambda: bool(started))
    queue.note([row(table, "b"), row(table, "c")])
    flushing = asyncio.create_task(queue.flush())
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == [["a"]]  # b waits for a's write, though the flush was asked for
    release.set()
    await flushing
    assert finished == [["a"], ["b"], ["c"]]
    assert len(queue) == 0
    writer.cancel()


async def test_store_queue_notes_a_change_as_it_was_when_noted() -> None:
    table = table_of("a")
    entry = row(table, "a")
    written, write = recording_writer()
    queue = StoreQueue(BATCH, now=lambda: NOW, write=write)

    cancelled = table.cancel(entry, "no longer needed", NOW)
    queue.note(cancelled, keep_result=True)
    entry.status_reason = "changed after the note"
    await queue.flush()

    (update,) = record_updates(written)[0]
    assert update.status is TaskStatus.CANCELLED
    assert update.completed_at == NOW  # a terminal status completes the task
    assert update.keep_result
    assert update.events[0].type is EventType.CANCELLED
    assert update.events[0].message == "no longer needed"


async def test_store_queue_writes_a_tasks_record_where_it_was_queued() -> None:
    # A task's own last write arrives with its outcome: it goes out in the next flush as it
    # came, after what was noted before it and before what follows from it (dependents).
    table = table_of("before", "after")
    written, write = recording_writer()
    queue = StoreQueue(BATCH, now=lambda: NOW, write=write, chunk=2)
    record = TaskRecordUpdate(
        batch_id=BATCH,
        task_id="done",
        status=TaskStatus.COMPLETED,
        attempt=1,
        result_turn=2,
        completed_at=NOW,
        events=[TaskEvent(key="a1:completed", type=EventType.COMPLETED, at=NOW)],
    )

    queue.note([row(table, "before")])
    queue.add(record)
    queue.note([row(table, "after")])
    await queue.flush()

    groups = record_updates(written)
    assert [[u.task_id for u in group] for group in groups] == [["before", "done"], ["after"]]
    assert groups[0][1] == record


async def test_store_queue_registers_added_tasks_in_groups_and_writes_inputs_at_once() -> None:
    written, write = recording_writer()
    queue = StoreQueue(BATCH, now=lambda: NOW, write=write, chunk=2)
    specs = [TaskSpec(id=f"n{i}", input="x") for i in range(3)]
    statuses = {s.id: TaskStatus.QUEUED for s in specs}

    await queue.register(specs, statuses)
    assert [activity for activity, _ in written] == [names.REGISTER_TASKS] * 2
    requests = [request for _, request in written]
    assert all(isinstance(r, RegisterTasksRequest) for r in requests)
    assert [[t.id for t in r.tasks] for r in requests if isinstance(r, RegisterTasksRequest)] == [
        ["n0", "n1"],
        ["n2"],
    ]

    # A retry's new inputs go out at once, ahead of what is queued.
    written.clear()
    table = table_of("n0")
    queue.note([row(table, "n0")])
    await queue.write_now([])
    assert written == []
    update = TaskRecordUpdate(batch_id=BATCH, task_id="n0", input="new")
    await queue.write_now([update])
    assert record_updates(written) == [[update]]
    assert len(queue) == 1


# --- the child fleet ------------------------------------------------------------------------------


class FakeChildren:
    """Children as the fleet sees them: starts, signals and cancellations are recorded, and a
    test ends a child by resolving its outcome."""

    def __init__(self) -> None:
        self.requests: dict[str, TaskRunInput] = {}
        self.outcomes: dict[str, asyncio.Future[TaskOutcome]] = {}
        self.refusals: dict[str, Exception] = {}
        self.signals: list[tuple[str, ChildControl]] = []
        self.cancelled: list[str] = []
        # Starts wait for this, so a test can see them under way.
        self.accept_starts = asyncio.Event()
        self.accept_starts.set()

    def now(self) -> datetime:
        return NOW

    async def start(self, child_id: str, request: TaskRunInput) -> Awaitable[TaskOutcome]:
        await self.accept_starts.wait()
        if child_id in self.refusals:
            raise self.refusals[child_id]
        self.requests[child_id] = request
        outcome: asyncio.Future[TaskOutcome] = asyncio.get_running_loop().create_future()
        self.outcomes[child_id] = outcome
        return outcome

    async def signal(self, child_id: str, control: ChildControl) -> None:
        self.signals.append((child_id, control))

    async def cancel(self, child_id: str) -> None:
        self.cancelled.append(child_id)

    async def wait_condition(
        self, done: Callable[[], bool], within: timedelta | None = None
    ) -> bool:
        # `within` passes on a virtual clock: after the loop has had its turns, not in real time.
        turns = 0
        deadline = asyncio.get_running_loop().time() + PATIENCE
        while not done():
            if within is not None and turns >= 50:
                return False
            assert asyncio.get_running_loop().time() < deadline, "the condition never came"
            turns += 1
            await asyncio.sleep(0)
        return True


class Fleet:
    """A ChildFleet over a real task table, taking outcomes as the batch does."""

    def __init__(self, *task_ids: str, agent: AgentSettings | None = None) -> None:
        self.table = table_of(*task_ids)
        self.children = FakeChildren()
        self.paused = False
        self.outcomes: list[TaskOutcome] = []
        self.starts_settled = 0
        self.fleet = ChildFleet(
            BATCH,
            agent or AgentSettings(),
            children=self.children,
            is_paused=lambda: self.paused,
            tasks=self.table,
            on_outcome=self.accept,
            on_started=self.settled,
        )

    def accept(self, outcome: TaskOutcome) -> None:
        self.outcomes.append(outcome)
        self.table.accept_outcome(outcome, NOW)

    def settled(self) -> None:
        self.starts_settled += 1

    def start_ready(self, feedback: str | None = None) -> list[TaskRow]:
        taken = self.table.take_ready(100)
        for entry in taken:
            self.fleet.start(entry, feedback)
        return taken

    async def until(self, done: Callable[[], bool]) -> None:
        assert await self.children.wait_condition(done)

    async def close(self) -> None:
        """End the children a test left running, so no task outlives it."""
        for outcome in self.children.outcomes.values():
            outcome.cancel()
        await self.until(lambda: not self.fleet.awaited)


def child_failure(cause: Exception) -> ChildWorkflowError:
    err = ChildWorkflowError(
        "child ended",
        namespace="default",
        workflow_id="w",
        run_id="r",
        workflow_type=names.TASK_WORKFLOW,
        initiated_event_id=1,
        started_event_id=2,
        retry_state=None,
    )
    err.__cause__ = cause
    return err


async def test_fleet_counts_starts_until_accepted_then_awaits_each_child() -> None:
    f = Fleet("a", "b")
    f.children.accept_starts.clear()
    f.start_ready(feedback="shorter, please")
    await asyncio.sleep(0)
    assert f.fleet.starting == 2
    assert f.fleet.awaited == frozenset()

    f.children.accept_starts.set()
    await f.until(lambda: f.fleet.starting == 0)
    assert f.starts_settled == 2
    assert f.fleet.awaited == {f"{BATCH}/a", f"{BATCH}/b"}
    request = f.children.requests[f"{BATCH}/a"]
    assert (request.batch_id, request.task_id, request.attempt) == (BATCH, "a", 1)
    assert request.rework_feedback == "shorter, please"

    done = TaskOutcome(task_id="a", attempt=1, status=TaskStatus.COMPLETED, completed_at=NOW)
    f.children.outcomes[f"{BATCH}/a"].set_result(done)
    await f.until(lambda: f.fleet.awaited == {f"{BATCH}/b"})
    assert f.outcomes == [done]
    assert row(f.table, "a").status is TaskStatus.COMPLETED
    await f.close()


async def test_fleet_names_a_retried_attempt_apart() -> None:
    f = Fleet("a")
    (entry,) = f.start_ready()
    failed = TaskOutcome(task_id="a", attempt=1, status=TaskStatus.FAILED, completed_at=NOW)
    await f.until(lambda: bool(f.fleet.awaited))
    f.children.outcomes[f"{BATCH}/a"].set_result(failed)
    await f.until(lambda: not f.fleet.awaited)
    f.table.retry(entry)
    f.start_ready()
    await f.until(lambda: f.fleet.awaited == {f"{BATCH}/a@2"})
    assert f.children.requests[f"{BATCH}/a@2"].attempt == 2
    await f.close()


async def test_a_child_that_does_not_start_fails_with_the_record_it_cannot_write() -> None:
    f = Fleet("mine", "other")
    f.children.refusals[f"{BATCH}/mine"] = WorkflowAlreadyStartedError(
        f"{BATCH}/mine", names.TASK_WORKFLOW
    )
    f.children.refusals[f"{BATCH}/other"] = ApplicationError("the server said no")
    f.start_ready()
    await f.until(lambda: len(f.outcomes) == 2)

    assert f.fleet.starting == 0
    assert f.fleet.awaited == frozenset()
    assert f.starts_settled == 2
    by_task = {o.task_id: o for o in f.outcomes}
    assert by_task["mine"].error is not None
    assert by_task["mine"].error.code == "already_running"
    assert by_task["other"].error is not None
    assert by_task["other"].error.code == "start_failed"
    record = by_task["mine"].record
    assert record is not None
    assert (record.task_id, record.status, record.completed_at) == (
        "mine",
        TaskStatus.FAILED,
        NOW,
    )
    assert record.error == by_task["mine"].error
    assert [e.key for e in record.events] == ["batch:0:1:failed"]
    assert row(f.table, "mine").status is TaskStatus.FAILED
    await f.close()


async def test_a_child_that_ends_without_an_outcome_fails_unless_it_was_cancelled() -> None:
    f = Fleet("stopped", "cancelled")
    f.start_ready()
    await f.until(lambda: len(f.fleet.awaited) == 2)
    f.children.outcomes[f"{BATCH}/stopped"].set_exception(child_failure(TerminatedError("op")))
    f.children.outcomes[f"{BATCH}/cancelled"].set_exception(child_failure(CancelledError()))
    await f.until(lambda: not f.fleet.awaited)

    # A cancelled child reports by signal (with its usage): nothing comes from its completion.
    (outcome,) = f.outcomes
    assert outcome.task_id == "stopped"
    assert outcome.status is TaskStatus.FAILED
    assert outcome.error is not None
    assert outcome.error.code == "terminated"
    assert outcome.record is not None
    assert outcome.record.status is TaskStatus.FAILED
    await f.close()


async def test_hand_over_waits_until_each_awaited_child_confirmed_or_finished() -> None:
    f = Fleet("a", "b", "c")
    f.paused = True
    f.start_ready()
    await f.until(lambda: len(f.fleet.awaited) == 3)

    handing_over = asyncio.create_task(f.fleet.hand_over())
    await f.until(lambda: len(f.children.signals) == 3)
    told = ChildControl(paused=True, report_by_signal=True)
    assert f.children.signals == [(f"{BATCH}/{t}", told) for t in ("a", "b", "c")]

    f.fleet.handed_over("a", 1)
    f.fleet.handed_over("b", 1)
    await asyncio.sleep(0)
    assert not handing_over.done()
    # "c" had finished before it could take the message: its completion reaches this run.
    done = TaskOutcome(task_id="c", attempt=1, status=TaskStatus.COMPLETED, completed_at=NOW)
    f.children.outcomes[f"{BATCH}/c"].set_result(done)
    await asyncio.wait_for(handing_over, PATIENCE)
    assert f.outcomes == [done]
    await f.close()


async def test_the_pause_state_reaches_running_children_once() -> None:
    f = Fleet("a", "b", "waiting")
    f.table.take_ready(2)  # children of an earlier run: running, not awaited by this one
    assert (f.paused, f.fleet.pause_delivered) == (False, True)

    f.paused = True
    assert (f.paused, f.fleet.pause_delivered) == (True, False)
    await f.fleet.tell_pause_state()
    assert f.children.signals == [
        (f"{BATCH}/a", ChildControl(paused=True)),
        (f"{BATCH}/b", ChildControl(paused=True)),
    ]
    assert f.fleet.pause_delivered
    await f.fleet.tell_pause_state()
    assert len(f.children.signals) == 2

    f.paused = False
    await f.fleet.tell_pause_state()
    assert f.children.signals[2:] == [
        (f"{BATCH}/a", ChildControl(paused=False)),
        (f"{BATCH}/b", ChildControl(paused=False)),
    ]
    await f.close()


async def test_children_with_local_turns_are_never_signalled_and_are_let_finish() -> None:
    f = Fleet("a", agent=AgentSettings(model_calls="local"))
    f.start_ready()
    await f.until(lambda: bool(f.fleet.awaited))
    f.paused = True
    await f.fleet.tell_pause_state()
    assert f.fleet.pause_delivered
    assert f.children.signals == []

    stop = False
    finishing = asyncio.create_task(f.fleet.let_finish(stop=lambda: stop))
    await asyncio.sleep(0)
    assert not finishing.done()
    done = TaskOutcome(task_id="a", attempt=1, status=TaskStatus.COMPLETED, completed_at=NOW)
    f.children.outcomes[f"{BATCH}/a"].set_result(done)
    await asyncio.wait_for(finishing, PATIENCE)
    assert f.outcomes == [done]

    f.table.add([TaskSpec(id="b", input="x")], NOW)
    f.start_ready()
    await f.until(lambda: bool(f.fleet.awaited))
    stop = True  # a cancellation ends the wait
    await asyncio.wait_for(f.fleet.let_finish(stop=lambda: stop), PATIENCE)
    await f.close()


async def test_cancel_all_takes_a_child_that_does_not_confirm_as_cancelled() -> None:
    f = Fleet("quiet", "prompt")
    f.start_ready()
    await f.until(lambda: len(f.fleet.awaited) == 2)

    cancelling = asyncio.create_task(f.fleet.cancel_all("too slow"))
    await f.until(lambda: len(f.children.cancelled) == 2)
    assert sorted(f.children.cancelled) == [f"{BATCH}/prompt", f"{BATCH}/quiet"]
    assert row(f.table, "quiet").status_reason == "too slow"
    # "prompt" confirms (a cancelled child reports by signal); "quiet" never does.
    f.accept(TaskOutcome(task_id="prompt", attempt=1, status=TaskStatus.CANCELLED))
    await asyncio.wait_for(cancelling, PATIENCE)

    assert f.table.in_flight == 0
    quiet = f.outcomes[-1]
    assert (quiet.task_id, quiet.status) == ("quiet", TaskStatus.CANCELLED)
    assert quiet.record is not None
    assert quiet.record.status is TaskStatus.CANCELLED
    assert quiet.record.events[0].message == "too slow (the task did not confirm in time)"
    assert row(f.table, "quiet").status is TaskStatus.CANCELLED
    await f.close()


# --- the announcer --------------------------------------------------------------------------------


def recording_announcer(
    *, sent: int = 0, review_announced: bool = False
) -> tuple[Announcer, list[WebhookDelivery]]:
    deliveries: list[WebhookDelivery] = []

    async def start_delivery(delivery: WebhookDelivery) -> None:
        deliveries.append(delivery)

    announcer = Announcer(
        BATCH,
        sent=sent,
        review_announced=review_announced,
        now=lambda: NOW,
        start_delivery=start_delivery,
    )
    return announcer, deliveries


async def test_delivery_ids_count_on_from_the_previous_run() -> None:
    announcer, deliveries = recording_announcer(sent=3)
    finished = status(BatchState.COMPLETED, progress=100.0)
    await announcer.announce("batch.finished", finished)

    (delivery,) = deliveries
    assert delivery.delivery_id == names.webhook_workflow_id(BATCH, 4) == f"{BATCH}#webhook-4"
    assert announcer.sent == 4
    assert delivery.event == "batch.finished"
    assert (delivery.batch_id, delivery.state, delivery.total) == (BATCH, finished.state, 4)
    assert (delivery.counts, delivery.usage, delivery.llm_calls) == (
        finished.counts,
        finished.usage,
        3,
    )
    assert delivery.at == NOW
    await announcer.announce("batch.finished", finished)
    assert [d.delivery_id for d in deliveries] == [f"{BATCH}#webhook-4", f"{BATCH}#webhook-5"]


async def test_review_is_announced_each_time_the_batch_comes_to_await_it() -> None:
    announcer, deliveries = recording_announcer()
    await announcer.review_when_due(status(BatchState.RUNNING))
    assert deliveries == []

    await announcer.review_when_due(status(BatchState.AWAITING_REVIEW))
    await announcer.review_when_due(status(BatchState.AWAITING_REVIEW))
    assert [d.event for d in deliveries] == ["batch.awaiting_review"]
    assert (announcer.sent, announcer.review_announced) == (1, True)

    # A result sent back runs again; when the batch awaits review anew, it says so again.
    await announcer.review_when_due(status(BatchState.RUNNING))
    assert (announcer.sent, announcer.review_announced) == (1, False)
    await announcer.review_when_due(status(BatchState.AWAITING_REVIEW))
    assert [d.delivery_id for d in deliveries] == [f"{BATCH}#webhook-1", f"{BATCH}#webhook-2"]


async def test_a_review_announced_before_continue_as_new_is_not_announced_again() -> None:
    announcer, deliveries = recording_announcer(sent=1, review_announced=True)
    await announcer.review_when_due(status(BatchState.AWAITING_REVIEW))
    assert deliveries == []
    assert announcer.sent == 1


# --- what the UI shows ----------------------------------------------------------------------------


def test_visibility_moves_search_attributes_only_in_steps() -> None:
    details: list[str] = []
    upserts: list[list[tuple[str, Any]]] = []

    def upsert(updates: Any) -> None:
        assert all(isinstance(u, SearchAttributeUpdate) for u in updates)
        upserts.append([(u.key.name, u.value) for u in updates])

    memos: list[Mapping[str, Any]] = []
    visibility = Visibility(set_details=details.append, upsert=upsert, upsert_memo=memos.append)
    visibility.refresh(status(progress=0.0), NOW)
    visibility.refresh(status(progress=4.9), NOW)
    visibility.refresh(status(progress=5.0), NOW)
    visibility.refresh(status(BatchState.PAUSED, progress=9.0), NOW)

    assert len(details) == 4  # the details carry the exact figure every time
    assert "4.9% done" in details[1]
    state, progress = names.BATCH_STATE_ATTRIBUTE.name, names.BATCH_PROGRESS_ATTRIBUTE.name
    assert upserts == [
        [(state, "running"), (progress, 0)],
        [(state, "running"), (progress, 5)],
        [(state, "paused"), (progress, 5)],
    ]
    # What status answers without a worker is published with each of those changes.
    assert [memo[STATUS_MEMO]["state"] for memo in memos] == ["running", "running", "paused"]

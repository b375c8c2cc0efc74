"""Priorities that change: a task that has not started takes a new priority, the next free slot
honours it, the store's events record it, and it survives continue-as-new; a task that has
started, or that the batch does not have, is refused with its name and state.

The table's rules first, without Temporal; then through the real dev server, with the model's
replies held so that what runs is a state the test waits for."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from taskpool.cli.commands.priority import PRIORITY
from taskpool.cli.parser import build_parser
from taskpool.client.steering import RunningBatch
from taskpool.domain import names
from taskpool.domain.batch import BatchOptions, BatchState, TaskOutcome, TaskPage, TaskView
from taskpool.domain.packing import pack, unpack
from taskpool.domain.requests import SetPriorityRequest, TaskQuery
from taskpool.domain.scheduling import TaskTable
from taskpool.domain.task_columns import TaskEntry
from taskpool.domain.tasks import EventType, Priority, TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import (
    SpawnWorker,
    batch_runs,
    eventually,
    result_in_time,
    start_test_batch,
    starter,
    temporal_cli,
    update,
    worker_environment,
)
from workflows import table_requests

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LETTERS = ("a", "b", "c", "d", "e")


def spec(task_id: str, **fields: object) -> TaskSpec:
    return TaskSpec.model_validate({"id": task_id, "input": f"input of {task_id}", **fields})


def table_of(*specs: TaskSpec) -> TaskTable:
    table = TaskTable(TaskEntry.from_spec(s) for s in specs)
    table.settle_pending(NOW)
    return table


def finish(table: TaskTable, task_id: str, status: TaskStatus) -> None:
    entry = table.get(task_id)
    assert entry is not None
    outcome = TaskOutcome(task_id=task_id, attempt=entry.attempts, status=status, completed_at=NOW)
    assert table.accept_outcome(outcome, NOW) is not None


def reprioritise(table: TaskTable, task_id: str, priority: str) -> Priority:
    entry = table.get(task_id)
    assert entry is not None
    return table.set_priority(entry, Priority(priority))


def taken(table: TaskTable) -> list[str]:
    return [e.id for e in table.take_ready(100)]


# --- the table's rules ----------------------------------------------------------------------------


def test_a_raised_task_runs_next_and_a_lowered_one_last() -> None:
    table = table_of(*(spec(t) for t in LETTERS))
    assert reprioritise(table, "e", "critical") is Priority.NORMAL
    assert reprioritise(table, "a", "low") is Priority.NORMAL
    assert table.get("e").priority is Priority.CRITICAL  # type: ignore[union-attr]
    assert taken(table) == ["e", "b", "c", "d", "a"]


def test_among_equals_a_raised_task_keeps_the_order_tasks_were_added() -> None:
    table = table_of(spec("h1", priority="high"), *(spec(t) for t in LETTERS))
    reprioritise(table, "d", "high")
    reprioritise(table, "b", "high")
    assert taken(table) == ["h1", "b", "d", "a", "c", "e"]


def test_a_task_raised_and_lowered_again_runs_once_in_its_old_place() -> None:
    table = table_of(*(spec(t) for t in LETTERS))
    reprioritise(table, "c", "critical")
    reprioritise(table, "c", "normal")
    reprioritise(table, "c", "critical")
    reprioritise(table, "c", "normal")
    assert taken(table) == list(LETTERS)
    assert table.counts[TaskStatus.ASSIGNED] == 5


def test_a_rebuilt_table_reranks_the_tasks_it_was_built_with() -> None:
    # Queued when the table was built: found through the per-priority masks, not the heaps.
    again = TaskTable(unpack(pack(table_of(*(spec(t) for t in LETTERS)).columns)))
    reprioritise(again, "d", "urgent")
    reprioritise(again, "a", "low")
    assert taken(again) == ["d", "b", "c", "e", "a"]


def test_blocked_and_scheduled_tasks_keep_their_state_and_run_by_the_new_priority() -> None:
    later = NOW + timedelta(hours=1)
    table = table_of(
        spec("parent"),
        spec("blocked", depends_on=["parent"]),
        spec("due", scheduled_for=later.isoformat()),
        spec("n1"),
        spec("n2"),
    )
    assert reprioritise(table, "blocked", "high") is Priority.NORMAL
    assert reprioritise(table, "due", "critical") is Priority.NORMAL
    assert table.get("blocked").status is TaskStatus.BLOCKED  # type: ignore[union-attr]
    assert table.get("due").status is TaskStatus.SCHEDULED  # type: ignore[union-attr]
    assert table.next_due() == later

    assert [e.id for e in table.take_ready(1)] == ["parent"]
    finish(table, "parent", TaskStatus.COMPLETED)
    table.release_due(later)
    assert taken(table) == ["due", "blocked", "n1", "n2"]


def test_the_new_priority_is_in_the_packed_state() -> None:
    table = table_of(spec("a"), spec("b"))
    reprioritise(table, "b", "urgent")
    again = TaskTable(unpack(pack(table.columns)))
    assert again.get("b").priority is Priority.URGENT  # type: ignore[union-attr]
    assert taken(again) == ["b", "a"]


@pytest.mark.parametrize("status", [TaskStatus.ASSIGNED, TaskStatus.COMPLETED])
def test_the_table_refuses_a_task_that_has_started(status: TaskStatus) -> None:
    table = table_of(spec("a"))
    table.take_ready(1)
    if status is TaskStatus.COMPLETED:
        finish(table, "a", status)
    with pytest.raises(ValueError, match=f"task 'a' is {status.value}"):
        reprioritise(table, "a", "high")
    assert table.get("a").priority is Priority.NORMAL  # type: ignore[union-attr]


def test_the_validator_names_each_task_it_refuses_with_its_state() -> None:
    table = table_of(spec("run"), spec("done"), spec("fail"), spec("wait"))
    table.take_ready(3)
    finish(table, "done", TaskStatus.COMPLETED)
    finish(table, "fail", TaskStatus.FAILED)
    request = SetPriorityRequest(task_ids=["wait", "run", "ghost", "done", "fail"], priority="high")
    with pytest.raises(ValueError, match="ghost") as refused:
        table_requests.refuse_to_set_priority(table, request)
    assert str(refused.value) == (
        "batch has no task 'ghost'; task 'run' is assigned, 'done' is completed, "
        "'fail' is failed: only a queued, blocked or scheduled task changes priority"
    )
    table_requests.refuse_to_set_priority(
        table, SetPriorityRequest(task_ids=["wait"], priority="high")
    )


def test_each_change_is_one_store_event_with_the_old_and_new_priority() -> None:
    table = table_of(spec("a"), spec("b", priority="high"), spec("c"))
    request = SetPriorityRequest(task_ids=["a", "b", "a"], priority="high")
    updates = table_requests.set_priorities("batch-1", table, request, NOW, "update-1")
    # b had that priority already: nothing to record.
    assert [u.task_id for u in updates] == ["a"]
    (event,) = updates[0].events
    assert (event.type, event.data, event.at) == (
        EventType.PRIORITY,
        {"from": "normal", "to": "high"},
        NOW,
    )
    assert event.message == "priority changed from normal to high"
    assert updates[0].status is None
    # Another change of the same task is another event.
    back = SetPriorityRequest(task_ids=["a"], priority="normal")
    (again,) = table_requests.set_priorities("batch-1", table, back, NOW, "update-2")
    assert again.events[0].key != event.key


def test_the_request_needs_tasks_and_one_of_the_five_priorities() -> None:
    with pytest.raises(ValueError, match="at least 1 item"):
        SetPriorityRequest.model_validate({"task_ids": [], "priority": "high"})
    with pytest.raises(ValueError, match="'low', 'normal', 'high', 'urgent' or 'critical'"):
        SetPriorityRequest.model_validate({"task_ids": ["a"], "priority": "asap"})


def test_the_command_reads_its_arguments_as_typed_values() -> None:
    argv = ["priority", "b", "--task", "x", "y", "--task", "z", "--priority", "CRITICAL"]
    args = PRIORITY.args.from_namespace(build_parser().parse_args(argv))
    assert args.model_dump() == {
        "batch": "b",
        "task_ids": ["x", "y", "z"],
        "priority": Priority.CRITICAL,
    }


# --- through the dev server -----------------------------------------------------------------------


def started_order(scripted: ScriptedModelServer) -> list[str]:
    """The tasks in the order their first model call arrived."""
    keys = (r.task_key for r in scripted.requests if r.task_key is not None)
    return list(dict.fromkeys(key.rsplit("/", 1)[-1] for key in keys))


async def only_held(scripted: ScriptedModelServer, task_id: str) -> None:
    """`task_id`'s model call is held, and no other task has called the model."""
    assert started_order(scripted) == [task_id]
    assert scripted.in_flight == 1


def letters() -> list[TaskSpec]:
    return [TaskSpec(id=t, input=f"Task {t} has a short text to summarise.") for t in LETTERS]


async def temporal_refusal(address: str, batch_id: str, name: str, payload: object) -> str:
    """What the `temporal` CLI says when the batch's validator refuses an update."""
    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        *("workflow", "update", "execute", "--workflow-id", batch_id, "--name", name),
        *("--input", json.dumps(payload), "--address", address, "--namespace", "default"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode != 0, out.decode()
    return err.decode()


async def test_a_task_raised_with_the_starter_runs_next_and_its_events_say_so(
    client: Client,
    spawn_worker: SpawnWorker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    temporal_address: str,
    batch_id: str,
) -> None:
    env = worker_environment(settings, temporal_address)
    spawn_worker()
    scripted.hold_replies()
    handle = await start_test_batch(
        client, settings, batch_id, letters(), BatchOptions(concurrency=1)
    )
    await eventually(lambda: only_held(scripted, "a"))

    raised = await starter(env, "priority", batch_id, "--task", "e", "--priority", "critical")
    assert raised.code == 0, raised.err
    assert f"1 task of batch {batch_id} now has priority critical: e" in raised.out
    view = await handle.query(names.TASK, TaskQuery(task_id="e"), result_type=TaskView)
    assert (view.priority, view.status) == (Priority.CRITICAL, TaskStatus.QUEUED)

    # The running task, and a task the batch does not have, are refused by name; nothing changes.
    running = await starter(env, "priority", batch_id, "--task", "a", "d", "--priority", "high")
    assert running.code == 2
    assert "task 'a' is assigned: only a queued, blocked or scheduled task" in running.err
    unknown = await starter(env, "priority", batch_id, "--task", "zz", "--priority", "low")
    assert unknown.code == 2
    assert f"batch {batch_id} refused the request: batch has no task 'zz'" in unknown.err
    d = await handle.query(names.TASK, TaskQuery(task_id="d"), result_type=TaskView)
    assert d.priority is Priority.NORMAL

    scripted.release_replies()
    result = await result_in_time(handle)
    assert result.state is BatchState.COMPLETED
    assert started_order(scripted) == ["a", "e", "b", "c", "d"]

    records = {r.task_id: r for r in await store.list_tasks(batch_id, with_events=True)}
    changes = [e for e in records["e"].events if e.type is EventType.PRIORITY]
    assert [(e.data, e.message) for e in changes] == [
        ({"from": "normal", "to": "critical"}, "priority changed from normal to critical")
    ]
    # Recorded while it waited: before its attempt was assigned.
    types = [e.type for e in records["e"].events]
    assert types.index(EventType.PRIORITY) < types.index(EventType.ASSIGNED)
    assert all(EventType.PRIORITY not in [e.type for e in records[t].events] for t in "abcd")
    # The record shows the priority the task ran with, not the one its file gave.
    assert records["e"].priority == "critical"
    assert {records[t].priority for t in "abcd"} == {"normal"}


async def test_set_priority_from_the_temporal_cli_and_its_refusals(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    temporal_address: str,
    batch_id: str,
) -> None:
    scripted.hold_replies()
    handle = await start_test_batch(
        client, settings, batch_id, letters(), BatchOptions(concurrency=1)
    )
    await eventually(lambda: only_held(scripted, "a"))

    status = await update(
        temporal_address, batch_id, "set_priority", {"task_ids": ["d", "c"], "priority": "high"}
    )
    assert status["batch_id"] == batch_id
    page = await handle.query(names.TASKS, result_type=TaskPage)
    assert {view.id: view.priority.value for view in page.items} == {
        "a": "normal",
        "b": "normal",
        "c": "high",
        "d": "high",
        "e": "normal",
    }

    said = await temporal_refusal(
        temporal_address, batch_id, "set_priority", {"task_ids": ["a"], "priority": "low"}
    )
    assert "task 'a' is assigned" in said
    said = await temporal_refusal(
        temporal_address, batch_id, "set_priority", {"task_ids": ["nope"], "priority": "low"}
    )
    assert "batch has no task 'nope'" in said
    said = await temporal_refusal(
        temporal_address, batch_id, "set_priority", {"task_ids": ["b"], "priority": "asap"}
    )
    assert "asap" in said

    # None of the refusals reached the batch's history.
    history = await handle.fetch_history()
    accepted = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert accepted == ["set_priority"]

    scripted.release_replies()
    await result_in_time(handle)
    assert started_order(scripted) == ["a", "c", "d", "b", "e"]


async def test_a_new_priority_holds_across_continue_as_new(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    scripted.hold_replies()
    specs = [*letters(), TaskSpec(id="f", input="Task f has a short text too.")]
    # A new run after every report: f, raised in the first run, starts in a later one.
    options = BatchOptions(concurrency=1, continue_as_new_after=1)
    handle = await start_test_batch(client, settings, batch_id, specs, options)
    await eventually(lambda: only_held(scripted, "a"))

    # Through the documented Python API.
    batch = await RunningBatch.find(client, batch_id)
    raised = await batch.set_priority(["e"], Priority.CRITICAL)
    assert raised.task_ids == ("e",)
    await batch.set_priority(["f", "f"], Priority.URGENT)

    scripted.release_replies()
    result = await result_in_time(handle)
    assert result.counts["completed"] == 6
    assert started_order(scripted) == ["a", "e", "f", "b", "c", "d"]
    runs = [run async for run in batch_runs(client, handle)]
    assert len(runs) >= 3
    view = await handle.query(names.TASK, TaskQuery(task_id="f"), result_type=TaskView)
    assert view.priority is Priority.URGENT

"""Steering a running batch through starter.py does what it says: a raised concurrency runs more
tasks at once, and `cancel --task` stops the running tasks it names and drops the queued ones.

Replies are held at the model while the test steers, so what runs at once is a state the test
waits for, not a race against a latency."""

from __future__ import annotations

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from taskpool.client.batches import batch_status
from taskpool.domain import names
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchState, TaskView
from taskpool.domain.requests import TaskQuery
from taskpool.domain.tasks import EventType, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import (
    documents,
    eventually,
    result_in_time,
    start_test_batch,
    starter,
    wait_until_child_cancelled,
    worker_environment,
)


@pytest.fixture
def env(settings: Settings, temporal_address: str) -> dict[str, str]:
    return worker_environment(settings, temporal_address)


def calls_held(scripted: ScriptedModelServer) -> set[str]:
    """The tasks whose model calls are in flight."""
    return {
        r.task_key.rsplit("/", 1)[-1]
        for r in scripted.requests
        if r.responded_at is None and r.task_key is not None
    }


async def test_raising_the_concurrency_runs_more_tasks_at_once(
    env: dict[str, str],
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    scripted.hold_replies()
    handle = await start_test_batch(
        client, settings, batch_id, documents(8), BatchOptions(concurrency=2)
    )

    async def running_at_once(count: int) -> None:
        assert scripted.in_flight == count
        assert (await batch_status(client, batch_id)).in_flight == count

    await eventually(lambda: running_at_once(2))
    assert scripted.peak_concurrency == 2

    raised = await starter(env, "concurrency", batch_id, "5")
    assert raised.code == 0, raised.err
    await eventually(lambda: running_at_once(5))
    assert calls_held(scripted) == {f"doc-{i}" for i in range(5)}

    scripted.release_replies()
    result = await result_in_time(handle)
    assert result.counts["completed"] == 8
    # Five at once once it was allowed, and never more.
    assert scripted.peak_concurrency == 5
    assert scripted.total_requests == 8


async def test_cancel_named_tasks_stops_the_running_and_drops_the_queued(
    env: dict[str, str],
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.hold_replies()
    # Short heartbeats: a cancelled task's model call hears of it within seconds.
    options = BatchOptions(concurrency=3, agent=AgentSettings(llm_heartbeat_seconds=1))
    handle = await start_test_batch(client, settings, batch_id, documents(6), options)

    async def held(task_ids: set[str]) -> None:
        assert calls_held(scripted) == task_ids

    await eventually(lambda: held({"doc-0", "doc-1", "doc-2"}))

    # doc-1 is running, doc-4 queued.
    cancelled = await starter(
        env, "cancel", batch_id, "--task", "doc-1", "doc-4", "--reason", "not needed"
    )
    assert cancelled.code == 0, cancelled.err
    await wait_until_child_cancelled(client, f"{batch_id}/doc-1")
    # The freed slot goes to the next task still queued: doc-3, and doc-5 after it, never doc-4.
    await eventually(lambda: held({"doc-0", "doc-2", "doc-3"}))

    scripted.release_replies()
    result = await result_in_time(handle)

    assert result.state is BatchState.COMPLETED
    assert (result.counts["completed"], result.counts["cancelled"]) == (4, 2)
    for task_id in ("doc-1", "doc-4"):
        view = await handle.query(names.TASK, TaskQuery(task_id=task_id), result_type=TaskView)
        assert (view.status, view.status_reason) == (TaskStatus.CANCELLED, "not needed")
    # The running task's call was cut off unanswered; the queued one never called the model.
    (cut_off,) = scripted.records_for("doc-1")
    assert cut_off.status is None
    assert scripted.records_for("doc-4") == []
    records = {r.task_id: r for r in await store.list_tasks(batch_id, with_events=True)}
    assert {task_id: r.status for task_id, r in records.items()} == {
        "doc-0": TaskStatus.COMPLETED,
        "doc-1": TaskStatus.CANCELLED,
        "doc-2": TaskStatus.COMPLETED,
        "doc-3": TaskStatus.COMPLETED,
        "doc-4": TaskStatus.CANCELLED,
        "doc-5": TaskStatus.COMPLETED,
    }
    for task_id in ("doc-1", "doc-4"):
        assert records[task_id].events[-1].type is EventType.CANCELLED
        assert records[task_id].result is None

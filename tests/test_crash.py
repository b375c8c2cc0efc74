"""A worker killed with SIGKILL mid-batch: a new worker finishes the batch with nothing lost, no
task completed twice, and no model call repeated whose result had been recorded."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client

from taskpool.client.batches import batch_status, pause_batch, resume_batch
from taskpool.domain import names
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchState, TaskPage
from taskpool.domain.requests import TasksQuery
from taskpool.domain.tasks import TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import ScriptedModelServer, numbered
from tests.support import (
    SpawnWorker,
    assert_each_completed_once,
    documents,
    eventually,
    kill_a_worker_mid_batch,
    start_test_batch,
)

# Short heartbeats, so the turns the dead worker held are retried within seconds.
FAST_RECOVERY = BatchOptions(concurrency=4, agent=AgentSettings(llm_heartbeat_seconds=2))


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedModelServer]:
    """A model whose every call completes with a result of its own: a task that kept an
    earlier call's result, or lost its last, shows in the store."""
    async with ScriptedModelServer(responder=numbered()) as server:
        yield server


async def chat_turn_attempts(client: Client, workflow_id: str) -> list[int]:
    """The attempt number of each chat_turn activity the task's history recorded as started."""
    attempts = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attempts.append(event.activity_task_started_event_attributes.attempt)
    return attempts


async def test_worker_killed_mid_batch_finishes_every_task_exactly_once(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    spawn_worker: SpawnWorker,
    batch_id: str,
) -> None:
    result = await kill_a_worker_mid_batch(
        client, settings, scripted, spawn_worker, batch_id, FAST_RECOVERY, tasks=20
    )

    assert result.counts["completed"] == 20
    sent = [result for results in scripted.completions.values() for result in results]
    assert len(set(sent)) == len(sent), "each call's result must differ from every other's"
    records = await assert_each_completed_once(store, scripted, batch_id, 20)
    requests_per_task = Counter(r.task_key for r in scripted.requests)
    retried = []
    for record in records:
        # One recorded turn per task, and every repeated call belongs to a retry of an attempt
        # whose result history never recorded (an attempt may die before it calls the model).
        attempts = await chat_turn_attempts(
            client, names.task_workflow_id(batch_id, record.task_id, 1)
        )
        assert len(attempts) == 1
        assert 1 <= requests_per_task[f"{batch_id}/{record.task_id}"] <= attempts[0]
        retried += [a for a in attempts if a > 1]
    assert retried, "the kill should have interrupted some calls"


async def test_pause_survives_a_worker_crash(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    spawn_worker: SpawnWorker,
    batch_id: str,
) -> None:
    scripted.latency = 0.3
    # The first four calls are held until the pause has reached their tasks: they finish, and
    # the other eight stay queued.
    scripted.hold_replies()
    first = spawn_worker()
    handle = await start_test_batch(client, settings, batch_id, documents(12), FAST_RECOVERY)

    async def four_calls_held() -> None:
        assert scripted.in_flight == 4

    await eventually(four_calls_held)
    await pause_batch(client, batch_id, reason="before crash")

    async def pause_delivered() -> None:
        status = await batch_status(client, batch_id)
        assert status.paused
        assert status.pause_delivered

    await eventually(pause_delivered)
    scripted.release_replies()

    async def paused_and_idle() -> None:
        status = await batch_status(client, batch_id)
        assert status.state is BatchState.PAUSED
        assert status.pause_delivered
        assert scripted.in_flight == 0

    await eventually(paused_and_idle)
    at_pause = await batch_status(client, batch_id)
    queued = await task_ids(client, batch_id, TaskStatus.QUEUED)
    running = await task_ids(client, batch_id, TaskStatus.ASSIGNED)
    before = scripted.total_requests
    first.kill()
    spawn_worker()
    await asyncio.sleep(3)  # observation window: the new worker must not start any task
    status = await batch_status(client, batch_id)
    assert status.state is BatchState.PAUSED
    assert status.pause_reason == "before crash"
    assert status.counts["queued"] == at_pause.counts["queued"] == len(queued) > 0
    # A turn a running task had already scheduled may still run; nothing else may.
    late = {r.task_key.rsplit("/", 1)[-1] for r in scripted.requests[before:] if r.task_key}
    assert late <= set(running)

    await resume_batch(client, batch_id)
    result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.counts["completed"] == 12


async def task_ids(client: Client, batch_id: str, status: TaskStatus) -> list[str]:
    page = await client.get_workflow_handle(batch_id).query(
        names.TASKS, TasksQuery(status=status, limit=1000), result_type=TaskPage
    )
    return [view.id for view in page.items]

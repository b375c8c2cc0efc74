"""Model turns run as local activities (`model_calls="local"`, `starter.py start --model-calls
local`): the same task lifecycle with fewer server round trips, and the limits that come with it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client
from temporalio.worker import Worker

from taskpool.client.batches import batch_status, cancel_batch, pause_batch, resume_batch
from taskpool.domain import names
from taskpool.domain.activity_options import task_workflow_task_timeout
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchRun, BatchState
from taskpool.domain.tasks import EventType, TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import Fault, ScriptedModelServer
from tests.support import (
    SpawnWorker,
    assert_each_completed_once,
    documents,
    eventually,
    kill_a_worker_mid_batch,
    marker_names,
    running_worker,
    start_test_batch,
    starter,
    wait_until_child_cancelled,
    worker_environment,
    write_jsonl,
)

LOCAL = AgentSettings(model_calls="local")


async def test_local_turns_run_a_batch_with_one_model_call_and_no_activity_task_per_task(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.latency = 0.2
    handle = await start_test_batch(
        client, settings, batch_id, documents(12), BatchOptions(concurrency=4, agent=LOCAL)
    )
    result = await handle.result()

    assert result.state is BatchState.COMPLETED
    assert result.counts["completed"] == 12
    assert scripted.total_requests == 12
    assert scripted.peak_concurrency == 4
    history = await client.get_workflow_handle(f"{batch_id}/doc-0").fetch_history()
    types = [e.event_type for e in history.events]
    assert HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in types
    # The turn is the child's one local activity, and the attempt's last store write went to the
    # batch with its outcome. One workflow task: started, its task scheduled, started, the turn,
    # completed, and the workflow completed.
    assert marker_names(history) == ["core_local_activity"]
    assert types == [
        HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        HistoryEventType.EVENT_TYPE_MARKER_RECORDED,
        HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    ]
    records = await store.list_tasks(batch_id, with_events=True)
    assert {r.status for r in records} == {TaskStatus.COMPLETED}
    for record in records:
        assert record.llm_calls == 1
        assert record.result == scripted.completions[f"{batch_id}/{record.task_id}"][-1]
        assert [e.key for e in record.events][-4:] == ["1:1", "1:2", "1:3", "1:4"]


async def test_local_turns_are_retried_and_fail_like_activities(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.script("busy", Fault.rate_limit(retry_after=2), Fault.server_error(500))
    scripted.script("too-long", Fault.status(400, error_code="context_length_exceeded"))
    scripted.script("down", *[Fault.server_error(503)] * 3)
    specs = [TaskSpec(id=t, input=f"Some text for {t}.") for t in ("busy", "too-long", "down")]
    agent = AgentSettings(model_calls="local", llm_max_attempts=3)
    handle = await start_test_batch(client, settings, batch_id, specs, BatchOptions(agent=agent))
    await handle.result()

    # Retried by the local activity's retry policy, honouring retry-after.
    calls = scripted.records_for(f"{batch_id}/busy")
    assert [c.status for c in calls] == [429, 500, 200]
    assert calls[1].received_at - calls[0].received_at >= 2.0
    busy = await store.get_task(batch_id, "busy")
    assert busy is not None
    assert busy.status is TaskStatus.COMPLETED
    assert busy.llm_calls == 1
    # A permanent error fails the task at once, with the provider's reason.
    assert len(scripted.records_for(f"{batch_id}/too-long")) == 1
    too_long = await store.get_task(batch_id, "too-long")
    assert too_long is not None
    assert too_long.error is not None
    assert too_long.error.code == "context_length_exceeded"
    assert "HTTP 400" in too_long.error.message
    # Out of attempts: the task fails with the last error.
    assert len(scripted.records_for(f"{batch_id}/down")) == 3
    down = await store.get_task(batch_id, "down")
    assert down is not None
    assert down.status is TaskStatus.FAILED
    assert down.error is not None
    assert "HTTP 503" in down.error.message


async def test_one_worker_runs_as_many_local_turns_at_once_as_it_runs_model_calls(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    # A local turn holds its workflow's workflow-task slot while it runs. With the SDK's default
    # of 100 slots, 100 turns would be the most one worker could run, whatever the batch allows.
    # Long enough that the first calls are still running when the last task starts.
    scripted.latency = 12.0
    async with running_worker(client, settings, max_concurrent_activities=120):
        handle = await start_test_batch(
            client, settings, batch_id, documents(120), BatchOptions(concurrency=120, agent=LOCAL)
        )
        result = await handle.result()

    assert result.counts["completed"] == 120
    assert scripted.peak_concurrency == 120


async def test_a_worker_with_a_requests_per_minute_limit_refuses_local_turns(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    limited = settings.model_copy(update={"requests_per_minute": 600})
    async with running_worker(client, limited):
        handle = await start_test_batch(
            client, settings, batch_id, documents(2), BatchOptions(agent=LOCAL)
        )
        result = await handle.result()

    assert result.counts["failed"] == 2
    # Refused before the model is asked, and not retried: the limit would not hold.
    assert scripted.total_requests == 0
    records = await store.list_tasks(batch_id, with_events=True)
    for record in records:
        assert record.status is TaskStatus.FAILED
        assert record.error is not None
        assert record.error.code == names.LOCAL_TURN_REFUSED
        assert "TASKPOOL_RPM" in record.error.message
        assert "--model-calls activity" in record.error.message


async def test_cancel_reaches_local_turns_in_flight(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.latency = 60  # every call hangs until cancelled
    options = BatchOptions(
        concurrency=2, agent=AgentSettings(model_calls="local", llm_heartbeat_seconds=2)
    )
    handle = await start_test_batch(client, settings, batch_id, documents(5), options)

    async def two_calls_running() -> None:
        assert scripted.in_flight == 2

    await eventually(two_calls_running)
    await cancel_batch(client, batch_id, reason="wrong prompt")
    # The cancellation reaches a child at its next workflow-task heartbeat (80 % of 2 s), long
    # before the calls would end by themselves.
    result = await asyncio.wait_for(handle.result(), timeout=30)

    assert result.state is BatchState.CANCELLED
    assert result.counts["cancelled"] == 5
    for task_id in ("doc-0", "doc-1"):
        await wait_until_child_cancelled(client, f"{batch_id}/{task_id}")
        child = client.get_workflow_handle(f"{batch_id}/{task_id}")
        # The heartbeat setting became the child's workflow-task timeout.
        first = (await child.fetch_history()).events[0]
        timeout = first.workflow_execution_started_event_attributes.workflow_task_timeout
        assert timeout.ToTimedelta() == timedelta(seconds=2)

    async def calls_abandoned() -> None:
        assert scripted.in_flight == 0

    await eventually(calls_abandoned)
    records = await store.list_tasks(batch_id, with_events=True)
    assert {r.status for r in records} == {TaskStatus.CANCELLED}
    assert all(r.events[-1].type is EventType.CANCELLED for r in records)
    assert scripted.total_requests == 2


async def test_continue_as_new_lets_local_turns_finish_and_repeats_no_call(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.latency = 0.3
    specs = documents(16)
    options = BatchOptions(concurrency=4, continue_as_new_after=3, agent=LOCAL)
    handle = await start_test_batch(client, settings, batch_id, specs, options)
    result = await handle.result()

    assert result.counts["completed"] == 16
    assert (await batch_status(client, batch_id)).run_number >= 3
    # No child was signalled mid-turn (a hand-over would have been), so no turn ran twice.
    assert Counter(r.task_key for r in scripted.requests) == {
        f"{batch_id}/{spec.id}": 1 for spec in specs
    }
    for spec in specs:
        history = await client.get_workflow_handle(f"{batch_id}/{spec.id}").fetch_history()
        types = [e.event_type for e in history.events]
        assert HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in types
        assert HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in types
    records = await store.list_tasks(batch_id, with_events=True)
    assert {r.status for r in records} == {TaskStatus.COMPLETED}


async def test_pause_lets_running_local_tasks_finish_and_starts_no_new_ones(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.latency = 1.0
    specs = documents(4)
    options = BatchOptions(concurrency=2, agent=LOCAL)
    handle = await start_test_batch(client, settings, batch_id, specs, options)

    async def two_calls_running() -> None:
        assert scripted.in_flight == 2

    await eventually(two_calls_running)
    await pause_batch(client, batch_id)

    # The running tasks are not told (a signal mid-turn would throw their calls away): they
    # finish, and the paused batch starts no other.
    async def running_ones_finished() -> None:
        status = await batch_status(client, batch_id)
        assert status.state is BatchState.PAUSED
        assert status.pause_delivered
        assert status.counts["completed"] == 2

    await eventually(running_ones_finished)
    await asyncio.sleep(2)  # observation window: nothing else may start while paused
    assert scripted.total_requests == 2
    await resume_batch(client, batch_id)
    result = await handle.result()

    assert result.counts["completed"] == 4
    # Nothing was thrown away: one call per task.
    assert Counter(r.task_key for r in scripted.requests) == {
        f"{batch_id}/{spec.id}": 1 for spec in specs
    }
    for spec in specs:
        history = await client.get_workflow_handle(f"{batch_id}/{spec.id}").fetch_history()
        types = [e.event_type for e in history.events]
        assert HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in types
        assert HistoryEventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in types
    records = await store.list_tasks(batch_id, with_events=True)
    assert {r.status for r in records} == {TaskStatus.COMPLETED}


async def test_worker_killed_mid_local_turns_finishes_every_task_exactly_once(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    spawn_worker: SpawnWorker,
    batch_id: str,
) -> None:
    options = BatchOptions(
        concurrency=4, agent=AgentSettings(model_calls="local", llm_heartbeat_seconds=2)
    )
    result = await kill_a_worker_mid_batch(
        client, settings, scripted, spawn_worker, batch_id, options, tasks=20
    )

    assert result.counts["completed"] == 20
    for record in await assert_each_completed_once(store, scripted, batch_id, 20):
        key = f"{batch_id}/{record.task_id}"
        history = await client.get_workflow_handle(key).fetch_history()
        assert marker_names(history) == ["core_local_activity"]
    requests_per_task = Counter(r.task_key for r in scripted.requests)
    # The turns the dead worker held were run again by the new one, from their workflow task.
    assert any(count > 1 for count in requests_per_task.values())


async def test_starter_starts_a_batch_with_local_turns(
    client: Client,
    worker: Worker,
    settings: Settings,
    temporal_address: str,
    batch_id: str,
    tmp_path: Path,
) -> None:
    source = write_jsonl(tmp_path / "tasks.jsonl", {"id": "a", "input": "Some text."})
    env = worker_environment(settings, temporal_address)
    run = await starter(
        env, "start", str(source), "--batch-id", batch_id, "--model-calls", "local", "--wait"
    )

    assert run.code == 0, run.err
    batch = client.get_workflow_handle(batch_id)
    first = (await batch.fetch_history()).events[0].workflow_execution_started_event_attributes
    [payload] = first.input.payloads
    assert BatchRun.model_validate_json(payload.data).options.agent.model_calls == "local"
    history = await client.get_workflow_handle(f"{batch_id}/a").fetch_history()
    assert marker_names(history) == ["core_local_activity"]
    assert (await batch_status(client, batch_id)).counts["completed"] == 1


def test_a_local_turns_workflow_task_timeout_follows_the_heartbeat_setting_within_bounds() -> None:
    def timeout(**settings: object) -> timedelta | None:
        return task_workflow_task_timeout(AgentSettings.model_validate(settings))

    assert timeout() is None  # activities: Temporal's default
    assert timeout(model_calls="local") == timedelta(seconds=10)
    assert timeout(model_calls="local", llm_heartbeat_seconds=4) == timedelta(seconds=4)
    assert timeout(model_calls="local", llm_heartbeat_seconds=0.1) == timedelta(seconds=2)
    assert timeout(model_calls="local", llm_heartbeat_seconds=600) == timedelta(seconds=60)

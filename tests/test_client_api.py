"""The client API as a program uses it: typed arguments in, typed models out, typed errors, and
nothing printed. Against the session dev server, with the test's worker and the scripted model."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from taskpool.client.batches import prepare_batch
from taskpool.client.connect import connect_client
from taskpool.client.errors import (
    BatchExistsError,
    BatchFinishedError,
    BatchNotFoundError,
    BatchNotStoredError,
    BatchRefusedError,
    InvalidRequestError,
    RequestError,
    StoreNotFoundError,
    TaskNotFoundError,
    TaskWaitTimeoutError,
    TemporalUnreachableError,
)
from taskpool.client.listing import list_batches
from taskpool.client.reading import find_batch, read_status, read_tasks, wait_for_result
from taskpool.client.records import OutcomeWait, add_comment, stored_results, task_record
from taskpool.client.starting import start_new_batch
from taskpool.client.steering import RunningBatch, check_feedback
from taskpool.domain.batch import BatchOptions, BatchState
from taskpool.domain.records import TaskRecord
from taskpool.domain.tasks import EventType, TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import Reply, ScriptedModelServer, ToolCallSpec
from tests.support import eventually, result_in_time, script_slow_task


async def test_a_batch_started_steered_and_read_through_the_client(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    script_slow_task(scripted, "hold", 3)
    scripted.script("bad", Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "garbled"})]))
    specs = [TaskSpec(id="hold", input="Hold."), TaskSpec(id="bad", input="Garbled.")]
    prepared = prepare_batch(specs, BatchOptions(concurrency=1))

    started = await start_new_batch(
        client, batch_id, prepared, task_queue=settings.task_queue, store_url=settings.store_url
    )

    assert (started.batch_id, started.total) == (batch_id, 2)
    # The definitions were in the store before the workflow could ask for them.
    stored = await stored_results(settings.store_url, batch_id)
    assert [(r.task_id, r.input) for r in stored] == [("hold", "Hold."), ("bad", "Garbled.")]
    with pytest.raises(BatchExistsError):
        await start_new_batch(
            client, batch_id, prepared, task_queue=settings.task_queue, store_url=settings.store_url
        )

    batch = await RunningBatch.find(client, batch_id)
    await batch.pause("lunch")

    async def paused() -> None:
        status = await read_status(client, batch.info)
        assert (status.state, status.pause_reason) == (BatchState.PAUSED, "lunch")

    await eventually(paused)
    await batch.resume()
    widened = await batch.set_concurrency(2)
    assert widened.concurrency == 2
    with pytest.raises(BatchRefusedError) as refused:
        await batch.retry(task_ids=["no-such-task"])
    assert isinstance(refused.value, RequestError)

    async def bad_failed() -> None:
        assert await batch.task_ids(TaskStatus.FAILED) == ["bad"]

    await eventually(bad_failed)
    retried = await batch.retry(all_failed=False, inputs={"bad": "Legible now."})
    assert retried.task_ids == ("bad",)
    assert retried.status.counts.get(TaskStatus.FAILED.value, 0) == 0

    result = await wait_for_result(client, batch.info)
    assert result.state is BatchState.COMPLETED
    assert (result.total, result.counts[TaskStatus.COMPLETED.value]) == (2, 2)
    views = await read_tasks(client, await find_batch(client, batch_id))
    assert {view.id: view.attempts for view in views} == {"hold": 1, "bad": 2}
    record = await task_record(settings.store_url, batch_id, "bad")
    assert (record.status, record.input) == (TaskStatus.COMPLETED, "Legible now.")
    with pytest.raises(BatchFinishedError):
        await RunningBatch.find(client, batch_id)
    listed = await list_batches(client, limit=1000)
    assert batch_id in {batch.batch_id for batch in listed}


async def test_an_outcome_is_waited_for_and_the_task_takes_a_comment(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    script_slow_task(scripted, "slow", 2)
    handle = (
        await start_new_batch(
            client,
            batch_id,
            prepare_batch([TaskSpec(id="slow", input="Slow.")]),
            task_queue=settings.task_queue,
            store_url=settings.store_url,
        )
    ).handle
    heard: list[TaskStatus] = []

    def waiting(record: TaskRecord) -> None:
        heard.append(record.status)

    with pytest.raises(TaskWaitTimeoutError):
        await task_record(settings.store_url, batch_id, "slow", wait=OutcomeWait(0.1, 0.2))
    record = await task_record(
        settings.store_url, batch_id, "slow", wait=OutcomeWait(0.1, None, waiting)
    )

    assert (record.status, record.result) == (TaskStatus.COMPLETED, "late")
    assert heard
    assert all(not status.ends_attempt for status in heard)
    event = await add_comment(settings.store_url, batch_id, "slow", "  Checked.  ")
    assert event.message == "Checked."
    commented = await task_record(settings.store_url, batch_id, "slow")
    assert (commented.events[-1].type, commented.events[-1].key) == (EventType.COMMENT, event.key)
    await result_in_time(handle)


async def test_wrong_requests_are_request_errors(
    client: Client,
    settings: Settings,
    store: TaskStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused before anything changes; only an unreachable server is not the request's fault."""
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreNotFoundError):
        await stored_results(str(missing), "b")
    assert not missing.exists()
    # A store that exists, without the batch.
    assert not await store.has_batch("b")
    with pytest.raises(BatchNotStoredError):
        await stored_results(settings.store_url, "b", TaskStatus.FAILED)
    with pytest.raises(TaskNotFoundError):
        await add_comment(settings.store_url, "b", "t", "Hello.")
    with pytest.raises(InvalidRequestError):
        await add_comment(settings.store_url, "b", "t", "  ")
    with pytest.raises(InvalidRequestError):
        check_feedback("reject", "  ")
    assert check_feedback("approve", "  ") is None
    with pytest.raises(BatchNotFoundError):
        await find_batch(client, "no-such-batch-here")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")
    with pytest.raises(TemporalUnreachableError) as unreachable:
        await connect_client()
    assert not isinstance(unreachable.value, RequestError)
    assert unreachable.value.address == "127.0.0.1:1"

"""A batch runs end to end through a real dev server, worker, store and scripted model."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from taskpool.client.batches import batch_status, pause_batch, resume_batch
from taskpool.domain.batch import BatchOptions, BatchState
from taskpool.domain.tasks import TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import Reply, ScriptedModelServer, ToolCallSpec
from tests.support import (
    documents,
    eventually,
    result_in_time,
    running_worker,
    start_test_batch,
)


async def test_batch_completes_within_the_concurrency_limit(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.latency = 0.3
    # Held replies end no call, so the calls in flight can only grow: to the limit, no further.
    scripted.hold_replies()
    specs = documents(30)
    handle = await start_test_batch(client, settings, batch_id, specs, BatchOptions(concurrency=5))

    async def limit_reached() -> None:
        assert scripted.in_flight == 5
        assert (await batch_status(client, batch_id)).in_flight == 5

    await eventually(limit_reached)
    scripted.release_replies()
    result = await handle.result()

    assert result.state is BatchState.COMPLETED
    assert result.counts["completed"] == 30
    # Reached above, and never more at once.
    assert scripted.peak_concurrency == 5
    # One LLM call per simple task: all tool calls of the reply were applied.
    assert scripted.total_requests == 30
    records = await store.list_tasks(batch_id)
    assert [r.task_id for r in records] == [s.id for s in specs]
    for record in records:
        assert record.status is TaskStatus.COMPLETED
        assert [record.result] == scripted.completions[f"{batch_id}/{record.task_id}"]
        assert record.usage.total_tokens > 0
        assert record.started_at is not None
        assert record.completed_at is not None
    status = await batch_status(client, batch_id)
    assert status.state is BatchState.COMPLETED
    assert status.usage.total_tokens == sum(r.usage.total_tokens for r in records)


async def test_a_batch_completes_when_every_workflow_task_replays_from_history(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    """No workflow cache: every workflow task rebuilds its state by replaying history, so any
    non-determinism in the workflows fails here."""
    async with running_worker(client, settings, max_cached_workflows=0):
        handle = await start_test_batch(
            client,
            settings,
            batch_id,
            documents(12),
            BatchOptions(concurrency=3, continue_as_new_after=4),
        )
        await pause_batch(client, batch_id, reason="replay check")
        await resume_batch(client, batch_id)
        result = await handle.result()
    assert result.counts["completed"] == 12
    assert scripted.total_requests == 12
    assert len(await store.list_tasks(batch_id, status=TaskStatus.COMPLETED)) == 12


async def test_a_chain_of_tasks_behind_a_failure_is_cancelled_and_the_batch_ends(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.script("source", Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "no data"})]))
    specs = [
        TaskSpec(id="source", input="Fetch."),
        TaskSpec(id="clean", input="Clean.", depends_on=["source"]),
        TaskSpec(id="report", input="Report.", depends_on=["clean"]),
        TaskSpec(id="aside", input="Unrelated."),
    ]
    handle = await start_test_batch(client, settings, batch_id, specs)

    result = await result_in_time(handle)

    assert result.state is BatchState.FAILED
    records = {r.task_id: r for r in await store.list_tasks(batch_id, with_events=True)}
    assert {task_id: r.status for task_id, r in records.items()} == {
        "source": TaskStatus.FAILED,
        "clean": TaskStatus.CANCELLED,
        "report": TaskStatus.CANCELLED,
        "aside": TaskStatus.COMPLETED,
    }
    assert records["report"].events[-1].message == "dependency clean was cancelled"

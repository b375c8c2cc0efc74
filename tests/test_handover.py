"""Outcomes across continue-as-new: children a run started report by completion; those still
running when the run continues as new are handed over and report by signal to the next run."""

from __future__ import annotations

from collections import Counter

from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client
from temporalio.worker import Worker

from taskpool.client.batches import batch_status
from taskpool.domain import names
from taskpool.domain.batch import BatchOptions
from taskpool.domain.tasks import TaskSpec, TaskStatus, TokenUsage
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import batch_runs, start_test_batch


async def test_children_running_at_continue_as_new_report_to_the_next_run(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    # Slow model, small hand-over threshold: every continue-as-new finds children running.
    scripted.latency = 0.6
    specs = [TaskSpec(id=f"doc-{i}", input=f"Document {i}.") for i in range(12)]
    handle = await start_test_batch(
        client, settings, batch_id, specs, BatchOptions(concurrency=4, continue_as_new_after=2)
    )

    result = await handle.result()

    assert result.counts["completed"] == 12
    signals: Counter[str] = Counter()
    completions = 0
    runs = 0
    async for run in batch_runs(client, handle):
        runs += 1
        async for event in run.fetch_history_events():
            if event.event_type == HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                signals[event.workflow_execution_signaled_event_attributes.signal_name] += 1
            elif event.event_type == HistoryEventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
                completions += 1
    assert runs >= 3
    # Some children were handed over, confirmed, and later reported by signal...
    assert signals[names.TASK_HANDED_OVER] >= 1
    assert signals[names.TASK_FINISHED] >= 1
    # ...and every task's outcome reached some run, by one channel or the other.
    assert completions + signals[names.TASK_FINISHED] >= 12
    # Each task ran once, and no token was lost in the hand-overs.
    assert Counter(r.task_key for r in scripted.requests) == {
        f"{batch_id}/{spec.id}": 1 for spec in specs
    }
    records = await store.list_tasks(batch_id)
    assert all(record.status is TaskStatus.COMPLETED for record in records)
    stored = sum((record.usage for record in records), TokenUsage())
    status = await batch_status(client, batch_id)
    assert status.usage == result.usage == stored
    assert status.llm_calls == 12

"""Worker options read from the environment that change how workflows run."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from taskpool.domain.batch import BatchOptions
from taskpool.domain.tasks import TaskSpec
from taskpool.infra.settings import Settings, SettingsError
from tests.sandbox_probe import ReadsTheClock
from tests.support import running_worker, start_test_batch

GUARD_WAIT = 15.0


def test_the_sandbox_is_on_unless_switched_off() -> None:
    assert Settings.from_env({}).workflow_sandbox is True
    assert Settings.from_env({"TASKPOOL_WORKFLOW_SANDBOX": "off"}).workflow_sandbox is False
    with pytest.raises(SettingsError, match="TASKPOOL_WORKFLOW_SANDBOX"):
        Settings.from_env({"TASKPOOL_WORKFLOW_SANDBOX": "sometimes"})


async def test_a_batch_runs_the_same_without_the_sandbox(
    client: Client, settings: Settings, batch_id: str
) -> None:
    specs = [TaskSpec(id=f"doc-{i}", input=f"Document {i}.") for i in range(4)]
    async with running_worker(client, settings, workflow_sandbox=False) as worker:
        assert isinstance(worker.config()["workflow_runner"], UnsandboxedWorkflowRunner)
        handle = await start_test_batch(
            client, settings, batch_id, specs, BatchOptions(concurrency=2)
        )
        result = await handle.result()
    assert result.counts["completed"] == 4


async def test_the_default_worker_keeps_the_sandbox(client: Client, settings: Settings) -> None:
    async with running_worker(client, settings) as worker:
        runner = worker.config()["workflow_runner"]
    assert isinstance(runner, SandboxedWorkflowRunner)
    # The guard itself: the default worker's runner refuses a workflow that reads the wall clock.
    # (Passing every module through, which would save the per-run imports, loses exactly this.)
    queue = f"sandbox-guard-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[ReadsTheClock], workflow_runner=runner):
        handle = await client.start_workflow(ReadsTheClock.run, id=queue, task_queue=queue)
        message = await _first_workflow_task_failure(client, queue)
        await handle.terminate(reason="test done")
    assert "datetime.datetime.now" in message


async def test_eager_activities_only_without_a_requests_per_minute_limit(
    client: Client, settings: Settings
) -> None:
    # Eager execution would hand the LLM activity to the worker past the task-queue rate limit.
    async with running_worker(client, settings) as free:
        assert free.config()["disable_eager_activity_execution"] is False
    async with running_worker(client, settings, requests_per_minute=60) as limited:
        assert limited.config()["disable_eager_activity_execution"] is True


async def _first_workflow_task_failure(client: Client, workflow_id: str) -> str:
    deadline = time.monotonic() + GUARD_WAIT
    while time.monotonic() < deadline:
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
            if event.HasField("workflow_task_failed_event_attributes"):
                return str(event.workflow_task_failed_event_attributes.failure.message)
            if event.HasField("workflow_execution_completed_event_attributes"):
                pytest.fail("the workflow read the wall clock and completed")
        await asyncio.sleep(0.2)
    pytest.fail(f"no workflow task failed within {GUARD_WAIT:.0f} s")

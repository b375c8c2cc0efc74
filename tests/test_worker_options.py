"""Worker options read from the environment that change how workflows run."""

from __future__ import annotations

import pytest
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from taskpool.models import BatchOptions, TaskSpec
from taskpool.settings import Settings, SettingsError
from tests.conftest import running_worker, start_test_batch


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
        assert isinstance(worker.config()["workflow_runner"], SandboxedWorkflowRunner)


async def test_eager_activities_only_without_a_requests_per_minute_limit(
    client: Client, settings: Settings
) -> None:
    # Eager execution would hand the LLM activity to the worker past the task-queue rate limit.
    async with running_worker(client, settings) as free:
        assert free.config()["disable_eager_activity_execution"] is False
    async with running_worker(client, settings, requests_per_minute=60) as limited:
        assert limited.config()["disable_eager_activity_execution"] is True

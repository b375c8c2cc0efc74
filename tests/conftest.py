"""Shared test fixtures: one real Temporal dev server per session, a task queue, store and scripted
model per test, one polling helper instead of scattered sleeps, and the calls that start a test's
batch, run its worker and wait for its tasks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore, opened_store
from taskpool.infra.temporal_connection import ensure_search_attributes
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import (
    SpawnWorker,
    WorkerProcess,
    running_worker,
    temporal_cli,
    worker_environment,
)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    await ensure_search_attributes(env.client)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def temporal_address(temporal_env: WorkflowEnvironment) -> str:
    return str(temporal_env.client.service_client.config.target_host)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer() as server:
        yield server


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return str(tmp_path / "tasks.db")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[TaskStore]:
    async with opened_store(store_url) as opened:
        yield opened


@pytest.fixture
def settings(scripted: ScriptedModelServer, store_url: str) -> Settings:
    return Settings(
        openai_base_url=scripted.base_url,
        model="scripted-model",
        task_queue=f"tq-{uuid.uuid4().hex[:12]}",
        store_url=store_url,
    )


@pytest.fixture
def batch_id(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def worker(client: Client, settings: Settings) -> AsyncIterator[Worker]:
    async with running_worker(client, settings) as running:
        yield running


@pytest.fixture
def spawn_worker(
    settings: Settings, temporal_address: str, tmp_path: Path
) -> Iterator[SpawnWorker]:
    started: list[WorkerProcess] = []

    def spawn() -> WorkerProcess:
        proc = WorkerProcess(
            worker_environment(settings, temporal_address), tmp_path / f"worker-{len(started)}.log"
        )
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.process.poll() is None:
            proc.stop()

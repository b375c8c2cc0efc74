"""The Temporal server killed with SIGKILL mid-batch and started again on the same SQLite file: the
worker process rides it out, and the batch finishes with every task completed once and its pause
kept."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskpool.client.batches import (
    batch_handle,
    batch_status,
    pause_batch,
    resume_batch,
    start_batch,
)
from taskpool.devtools.devserver import (
    DURABLE_SQLITE_PRAGMAS,
    THROUGHPUT_DYNAMIC_CONFIG,
    DevServer,
    DevServerOptions,
    free_port,
)
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchState, ModelCalls
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.infra.temporal_connection import connect, ensure_search_attributes
from taskpool.testing.scripted import ScriptedModelServer, numbered
from tests.support import (
    WorkerProcess,
    assert_each_completed_once,
    documents,
    eventually,
    worker_environment,
)

TASKS = 16


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedModelServer]:
    """A model whose every call completes with a result of its own: a task that kept an
    earlier call's result, or lost its last, shows in the store."""
    async with ScriptedModelServer(responder=numbered()) as server:
        yield server


def kill_server(server: DevServer) -> None:
    """SIGKILL the server's whole process group: no shutdown, no flush, as in a power cut of the
    process (the SQLite file keeps what was committed)."""
    os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.parametrize("model_calls", ["activity", "local"])
async def test_a_batch_survives_the_server_killed_and_restarted(
    model_calls: ModelCalls,
    scripted: ScriptedModelServer,
    store_url: str,
    store: TaskStore,
    tmp_path: Path,
) -> None:
    options = DevServerOptions(
        db_file=tmp_path / "temporal.db",
        port=free_port(),
        ui=False,
        sqlite_pragmas=DURABLE_SQLITE_PRAGMAS,
        dynamic_config=THROUGHPUT_DYNAMIC_CONFIG,
        log_file=tmp_path / "server.log",
    )
    settings = Settings(
        openai_base_url=scripted.base_url,
        model="scripted-model",
        task_queue=f"restart-{uuid.uuid4().hex[:8]}",
        store_url=store_url,
    )
    batch_id = f"restart-{model_calls}-{uuid.uuid4().hex[:6]}"
    scripted.latency = 0.5
    batch_options = BatchOptions(
        concurrency=4, agent=AgentSettings(model_calls=model_calls, llm_heartbeat_seconds=2)
    )

    first = DevServer(options)
    await first.start()
    worker: WorkerProcess | None = None
    try:
        worker = WorkerProcess(worker_environment(settings, first.address), tmp_path / "worker.log")
        client = await connect(target_host=first.address)
        await ensure_search_attributes(client)
        await start_batch(
            client,
            batch_id,
            documents(TASKS),
            task_queue=settings.task_queue,
            store=settings.store_url,
            options=batch_options,
        )

        async def some_done_and_calls_in_flight() -> None:
            status = await batch_status(client, batch_id)
            assert status.counts["completed"] >= 3
            assert scripted.in_flight >= 1

        await eventually(some_done_and_calls_in_flight, within=60)
        # Paused just before the kill: the pause must come back with the server.
        await pause_batch(client, batch_id, reason="before the outage")
        kill_server(first)
        await first.stop()

        second = DevServer(options)
        await second.start()
        try:
            client = await connect(target_host=second.address)

            async def paused_again() -> None:
                status = await batch_status(client, batch_id)
                assert status.state is BatchState.PAUSED
                assert status.pause_reason == "before the outage"

            await eventually(paused_again, within=60)
            await resume_batch(client, batch_id)
            result = await asyncio.wait_for(batch_handle(client, batch_id).result(), timeout=180)
        finally:
            await second.stop()
    finally:
        if worker is not None:
            worker.stop()
        await first.stop()

    assert result.state is BatchState.COMPLETED
    assert result.counts["completed"] == TASKS
    await assert_each_completed_once(store, scripted, batch_id, TASKS)

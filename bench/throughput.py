"""taskpool itself against the server's ceiling: throughput, utilisation, memory and history size.

Every taskpool run is the real thing: a private dev server on a fresh SQLite file, `python
worker.py` as its own process, the scripted model server in this process, and a batch of simple
summarise tasks started as starter.py starts one. Parts, each runnable alone:

    python bench/throughput.py ceiling-vs-taskpool [--tasks 500] [--window 50] [--pairs 3]
            [--ceiling-server untuned]
        the ceiling (bench/ceiling.py) and a taskpool batch with the same N and W, model latency 0,
        in one invocation so the ratio holds on a noisy machine (--pairs rounds of both, the
        verdict on the median ratio); plus LLM calls and tokens per
        task, events per workflow and where each task's time goes. With --ceiling-server other
        than --server the ceiling is measured on both, giving taskpool / ceiling on the same
        server and taskpool / the ceiling on the other (the issue: durable taskpool >= 1.5x the
        untuned ceiling)
    python bench/throughput.py utilisation [--windows 10 100] [--latency 1]
        measured tasks/s against the ideal W / L
    python bench/throughput.py rss [--window 100] [--latency 1]
        the worker process's peak resident memory
    python bench/throughput.py history [--history-tasks 10000]
        runs the batch to completion, then reads every batch run's and every task child's history:
        events per history and the largest payload and event against the targets; a 10,000-task
        batch takes a long while here (the run, then reading 10,000 histories)
    python bench/throughput.py all

Every part takes --server {untuned,durable}: the configuration of each dev server it starts
(bench/_common.py SERVER_CONFIGS; untuned is the CLI's defaults, durable what `taskpool demo`
runs). Results are printed and appended to bench/RESULTS.md with the command (--no-record skips
that); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# `_common` must come first: it puts the project root ahead of bench/ on the import path, so that
# `taskpool` below is the package and not this file.
from _common import (
    ROOT,
    SERVER_CONFIGS,
    ServerConfig,
    append_result,
    bench_server,
    command_line,
    compile_workflow_modules,
    machine_busy_seconds,
    parse_pairs,
    process_cpu_seconds,
    self_cpu_seconds,
    server_config,
)
from ceiling import measure as measure_ceiling
from ceiling import parse_args as ceiling_args
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from temporalio.api.enums.v1 import (
    EventType,
    TaskQueueType,
    TimeoutType,
    WorkflowTaskFailedCause,
)
from temporalio.api.history.v1 import HistoryEvent, WorkflowExecutionSignaledEventAttributes
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from taskpool.client.batches import BatchTooLargeError, batch_status, start_batch
from taskpool.domain import names
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchResult, BatchRun, ModelCalls
from taskpool.domain.packing import pack
from taskpool.domain.task_columns import TaskEntry
from taskpool.domain.tasks import TaskSpec
from taskpool.infra.temporal_connection import connect
from taskpool.testing.scripted import ScriptedModelServer

MODEL = "scripted-model"
MB = 1024 * 1024
# Targets from the issue.
TARGET_RATIO = 1.0
"""taskpool against the ceiling measured on the same dev server."""
TARGET_TUNED_RATIO = 1.5
"""taskpool on the durable (tuned) server against the ceiling on the untuned one."""
TARGET_UTILISATION = 0.95
LONE_TASKS = 30
"""Tasks of the one-at-a-time reference run in the utilisation part."""
TARGET_RSS_MB = 150.0
TARGET_EVENTS = 10_240
TARGET_PAYLOAD = 1 * MB
HISTORY_TARGET_TASKS = 10_000
# The server's limit.historyCount.suggestContinueAsNew default.
SUGGEST_CONTINUE_AS_NEW_EVENTS = 4 * 1024
# The dev server refuses a payload over this (limit.blobSize.error).
SERVER_PAYLOAD_LIMIT = 2 * MB
WORKER_READY_TIMEOUT = 60.0
RSS_SAMPLE_EVERY = 0.2
# The server starts children at a few per second here, so with a 1 s model only a handful of a
# window of 100 is ever in flight; a slow model lets the whole window fill.
RSS_LATENCY = 20.0
# A batch with no new model request for this long has stopped making progress.
STALL_SECONDS = 90.0
STALL_CHECK_EVERY = 5.0
# Reading 10,000 child histories one by one takes long; more at once would crowd the server.
HISTORY_FETCHES_AT_ONCE = 20
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


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- CPU and memory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSplit:
    wall_s: float
    server_s: float
    worker_s: float
    bench_s: float
    """This process: the scripted model server and the client waiting for the result."""
    other_s: float

    def per_task_ms(self, tasks: int) -> dict[str, float]:
        return {
            "server": 1000 * self.server_s / tasks,
            "worker": 1000 * self.worker_s / tasks,
            "bench": 1000 * self.bench_s / tasks,
        }

    def utilisation(self) -> dict[str, float]:
        """Share of one core each used, and of the whole machine all together."""
        cores = os.cpu_count() or 1
        busy = self.server_s + self.worker_s + self.bench_s + self.other_s
        return {
            "server": self.server_s / self.wall_s,
            "worker": self.worker_s / self.wall_s,
            "bench": self.bench_s / self.wall_s,
            "other": self.other_s / self.wall_s,
            "machine": busy / (self.wall_s * cores),
        }


class CpuMeter:
    """CPU of the dev server, the worker process, this process and everything else."""

    def __init__(self, server_pid: int, worker_pid: int) -> None:
        self._pids = (server_pid, worker_pid)
        self._start = (0.0, 0.0, 0.0, 0.0, 0.0)

    def _read(self) -> tuple[float, float, float, float, float]:
        server, worker = (process_cpu_seconds(pid) for pid in self._pids)
        return (time.perf_counter(), server, worker, self_cpu_seconds(), machine_busy_seconds())

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> CpuSplit:
        wall, server, worker, own, machine = (
            end - begin for end, begin in zip(self._read(), self._start, strict=True)
        )
        return CpuSplit(
            wall_s=wall,
            server_s=server,
            worker_s=worker,
            bench_s=own,
            other_s=max(0.0, machine - server - worker - own),
        )


def status_kb(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status, such as VmRSS (now) or VmHWM (peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(f"/proc/{pid}/status has no {key}")


class RssSampler:
    """Samples a process's resident memory until stopped; the kernel's own peak is read last."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples_kb: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.samples_kb.append(status_kb(self.pid, "VmRSS"))
            await asyncio.sleep(RSS_SAMPLE_EVERY)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> tuple[float, float, float]:
        """(RSS when sampling started, largest sampled RSS, kernel peak VmHWM), in MB."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        sampled_kb = max(self.samples_kb, default=0)
        # The kernel syncs its per-thread RSS counters lazily, so a sample can top VmHWM a little.
        peak_kb = max(status_kb(self.pid, "VmHWM"), sampled_kb)
        first = self.samples_kb[0] if self.samples_kb else 0
        return first / 1024, sampled_kb / 1024, peak_kb / 1024


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


# --- histories --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistorySize:
    label: str
    """"batch run <n>" or the task child's workflow id."""
    workflow_id: str
    run_id: str
    events: int
    largest_event_bytes: int
    largest_event_type: str
    largest_payload_bytes: int

    @property
    def within_targets(self) -> bool:
        return self.events < TARGET_EVENTS and self.largest_payload_bytes < TARGET_PAYLOAD


def size_summary(histories: Sequence[HistorySize]) -> dict[str, Any]:
    """The largest figures over some histories, each with the history it came from."""
    if not histories:
        return {"histories": 0, "within_targets": True}
    most = max(histories, key=lambda h: h.events)
    payload = max(histories, key=lambda h: h.largest_payload_bytes)
    event = max(histories, key=lambda h: h.largest_event_bytes)
    return {
        "histories": len(histories),
        "events_max": most.events,
        "events_max_in": most.label,
        "events_mean": sum(h.events for h in histories) / len(histories),
        "largest_payload_bytes": payload.largest_payload_bytes,
        "largest_payload_in": payload.label,
        "largest_event_bytes": event.largest_event_bytes,
        "largest_event_type": event.largest_event_type,
        "largest_event_in": event.label,
        "over_target": sum(not h.within_targets for h in histories),
        "within_targets": all(h.within_targets for h in histories),
    }


# How a task's outcome reached the batch (workflows/batch.py): the completion of the child the
# run awaits, or, for a child handed over before continue-as-new, its task_finished signal.
BY_COMPLETION = "child completion"
BY_SIGNAL = "task_finished signal"
NOT_REPORTED = "no report seen"


@dataclass
class HistoryReport:
    batch_runs: list[HistorySize]
    children: list[HistorySize]
    batch_event_types: dict[str, int]
    child_event_types: dict[str, int]
    workflow_task_problems: dict[str, int]
    """Failed and timed-out workflow tasks by workflow kind and cause: each one is a retry."""
    reports: dict[str, int]
    """Tasks by the way their outcome reached the batch."""
    handed_over: int
    """Children that confirmed a hand-over (reported to a later run by signal)."""
    reports_per_run: list[int]
    """Reports each batch run took, in the order of batch_runs."""
    phases_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def all(self) -> list[HistorySize]:
        return [*self.batch_runs, *self.children]

    def within_targets(self) -> bool:
        return all(h.within_targets for h in self.all)

    def summary(self) -> dict[str, Any]:
        tasks = len(self.children) or 1
        return {
            "batch_runs": size_summary(self.batch_runs),
            "children": size_summary(self.children),
            "batch_events_per_task": sum(h.events for h in self.batch_runs) / tasks,
            "reports": self.reports,
            "handed_over": self.handed_over,
            "within_targets": self.within_targets(),
        }


def event_name(event: HistoryEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").lower()


def event_seconds(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


def payload_sizes(message: Message) -> list[int]:
    """Serialized size of every Payload anywhere inside a protobuf message."""
    if message.DESCRIPTOR.full_name == "temporal.api.common.v1.Payload":
        return [message.ByteSize()]
    sizes: list[int] = []
    for descriptor, value in message.ListFields():
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        kind = descriptor.message_type
        if kind is not None and kind.GetOptions().map_entry:
            value_field = kind.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    sizes += payload_sizes(item)
        elif descriptor.is_repeated:
            for item in value:
                sizes += payload_sizes(item)
        else:
            sizes += payload_sizes(value)
    return sizes


def history_size(
    label: str, workflow_id: str, run_id: str, events: Sequence[HistoryEvent]
) -> HistorySize:
    largest = max(events, key=lambda e: e.ByteSize())
    return HistorySize(
        label=label,
        workflow_id=workflow_id,
        run_id=run_id,
        events=len(events),
        largest_event_bytes=largest.ByteSize(),
        largest_event_type=event_name(largest),
        largest_payload_bytes=max((s for e in events for s in payload_sizes(e)), default=0),
    )


def workflow_task_problems(kind: str, events: Sequence[HistoryEvent]) -> Counter[str]:
    problems: Counter[str] = Counter()
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            cause = event.workflow_task_failed_event_attributes.cause
            problems[f"{kind} failed: {WorkflowTaskFailedCause.Name(cause)}"] += 1
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            timeout = event.workflow_task_timed_out_event_attributes.timeout_type
            problems[f"{kind} timed out: {TimeoutType.Name(timeout)}"] += 1
    return problems


def child_times(events: Sequence[HistoryEvent]) -> dict[str, float]:
    """When each kind of event first happened in a child's history; a signal the child sends is
    told apart by its name ("signal_external_workflow_execution_initiated:task_finished")."""
    times: dict[str, float] = {}
    for event in events:
        name = event_name(event)
        if event.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            signal_name = event.signal_external_workflow_execution_initiated_event_attributes
            name = f"{name}:{signal_name.signal_name}"
        times.setdefault(f"child:{name}", event_seconds(event))
    return times


@dataclass
class BatchTimes:
    """When the batch did things for each task child, by child workflow id, over all its runs."""

    initiated: dict[str, float] = field(default_factory=dict)
    recorded_started: dict[str, float] = field(default_factory=dict)
    report_received: dict[str, float] = field(default_factory=dict)
    report_channel: dict[str, str] = field(default_factory=dict)
    handover_asked: dict[str, float] = field(default_factory=dict)
    handover_confirmed: dict[str, float] = field(default_factory=dict)
    refill_gaps: list[float] = field(default_factory=list)
    handovers_s: list[float] = field(default_factory=list)
    """For each run that continued as new: its first hand-over request -> the continue-as-new."""

    def report(self, child_id: str, at: float, channel: str) -> bool:
        """Note a task's report; False when the batch had it already."""
        if child_id in self.report_received:
            return False
        self.report_received[child_id] = at
        self.report_channel[child_id] = channel
        return True


def signalled_child_id(
    batch_id: str, signaled: WorkflowExecutionSignaledEventAttributes
) -> str | None:
    """The child a task_finished (TaskOutcome) or task_handed_over (TaskRef) signal came from."""
    if not signaled.input.payloads:
        return None
    ref = json.loads(signaled.input.payloads[0].data)
    return names.task_workflow_id(batch_id, ref["task_id"], ref["attempt"])


def read_batch_run(batch_id: str, events: Sequence[HistoryEvent], into: BatchTimes) -> int:
    """Notes what the batch did for each child in one run; returns how many reports it took."""
    reports = 0
    reports_waiting: list[float] = []
    first_handover: float | None = None
    for event in events:
        at = event_seconds(event)
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            attributes = event.start_child_workflow_execution_initiated_event_attributes
            into.initiated[attributes.workflow_id] = at
            into.refill_gaps += [at - received for received in reports_waiting]
            reports_waiting = []
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            child = event.child_workflow_execution_started_event_attributes.workflow_execution
            into.recorded_started[child.workflow_id] = at
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
            child = event.child_workflow_execution_completed_event_attributes.workflow_execution
            if into.report(child.workflow_id, at, BY_COMPLETION):
                reports += 1
                reports_waiting.append(at)
        elif kind == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            # The bench never pauses, so every `control` signal to a child is a hand-over.
            sent = event.signal_external_workflow_execution_initiated_event_attributes
            if sent.signal_name == names.CONTROL:
                into.handover_asked.setdefault(sent.workflow_execution.workflow_id, at)
                first_handover = at if first_handover is None else first_handover
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signaled = event.workflow_execution_signaled_event_attributes
            child_id = signalled_child_id(batch_id, signaled)
            if child_id is None:
                continue
            if signaled.signal_name == names.TASK_FINISHED:
                if into.report(child_id, at, BY_SIGNAL):
                    reports += 1
                    reports_waiting.append(at)
            elif signaled.signal_name == names.TASK_HANDED_OVER:
                into.handover_confirmed.setdefault(child_id, at)
        elif (
            kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            and first_handover is not None
        ):
            into.handovers_s.append(at - first_handover)
    return reports


@dataclass(frozen=True)
class Span:
    """A stretch of a task's life: from `begin` to `end`, each "child:<event>" (the first such
    event in the child's history) or "batch:<name>" (a BatchTimes field for that child). With a
    `channel`, only tasks whose outcome reached the batch that way count."""

    label: str
    begin: str
    end: str
    channel: str | None = None


_FINISHED_SENT = f"child:signal_external_workflow_execution_initiated:{names.TASK_FINISHED}"
TASK_SPANS = (
    Span(
        "batch asks for a child -> the child's run begins",
        "batch:initiated",
        "child:workflow_execution_started",
    ),
    Span(
        "child begins -> its first workflow task starts",
        "child:workflow_execution_started",
        "child:workflow_task_started",
    ),
    Span(
        "first workflow task -> LLM activity scheduled",
        "child:workflow_task_started",
        "child:activity_task_scheduled",
    ),
    Span(
        "LLM activity waits in the queue",
        "child:activity_task_scheduled",
        "child:activity_task_started",
    ),
    Span(
        "LLM activity runs (model call)",
        "child:activity_task_started",
        "child:activity_task_completed",
    ),
    Span(
        "LLM reply -> child completes (its last workflow task)",
        "child:activity_task_completed",
        "child:workflow_execution_completed",
        BY_COMPLETION,
    ),
    Span(
        "child completes -> the batch has it",
        "child:workflow_execution_completed",
        "batch:report_received",
        BY_COMPLETION,
    ),
    Span(
        "handed over: batch asks -> the child confirms",
        "batch:handover_asked",
        "batch:handover_confirmed",
    ),
    Span(
        "handed over: LLM reply -> task_finished signal sent (its last workflow task)",
        "child:activity_task_completed",
        _FINISHED_SENT,
        BY_SIGNAL,
    ),
    Span(
        "handed over: signal sent -> the batch has it",
        _FINISHED_SENT,
        "batch:report_received",
        BY_SIGNAL,
    ),
    Span(
        "child begins -> child closed",
        "child:workflow_execution_started",
        "child:workflow_execution_completed",
    ),
    Span(
        "batch asks for a child -> the batch records it started",
        "batch:initiated",
        "batch:recorded_started",
    ),
)
OWN_RUN_SPAN = "child begins -> child closed"
REFILL_SPAN = "batch has a report -> its next child start (slot refilled)"
HANDOVER_SPAN = "per run: first hand-over request -> continued as new"
_BATCH_FIELDS = (
    "initiated",
    "recorded_started",
    "report_received",
    "handover_asked",
    "handover_confirmed",
)


def child_spans(
    child_id: str, events: Sequence[HistoryEvent], batch: BatchTimes
) -> list[tuple[str, float]]:
    times = child_times(events)
    for name in _BATCH_FIELDS:
        by_child: dict[str, float] = getattr(batch, name)
        if child_id in by_child:
            times[f"batch:{name}"] = by_child[child_id]
    channel = batch.report_channel.get(child_id)
    return [
        (span.label, times[span.end] - times[span.begin])
        for span in TASK_SPANS
        if span.channel in (None, channel) and span.begin in times and span.end in times
    ]


async def analyse_histories(
    client: Client, batch_id: str, first_run_id: str | None, task_ids: Sequence[str]
) -> HistoryReport:
    """Every run of the batch (following continue-as-new) and every task child's history."""
    batch_runs: list[HistorySize] = []
    batch_types: Counter[str] = Counter()
    batch_times = BatchTimes()
    reports_per_run: list[int] = []
    problems: Counter[str] = Counter()
    run_id = first_run_id
    while run_id:
        history = await client.get_workflow_handle(batch_id, run_id=run_id).fetch_history()
        events = list(history.events)
        label = f"batch run {len(batch_runs) + 1}"
        batch_runs.append(history_size(label, batch_id, run_id, events))
        batch_types.update(event_name(e) for e in events)
        reports_per_run.append(read_batch_run(batch_id, events, batch_times))
        problems += workflow_task_problems("batch", events)
        last = events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            else None
        )
    progress(
        f"histories: {len(batch_runs)} batch run(s) read; reading {len(task_ids)} task "
        f"children, {HISTORY_FETCHES_AT_ONCE} at once"
    )

    child_types: Counter[str] = Counter()
    children: list[HistorySize] = []
    spans: dict[str, list[float]] = {span.label: [] for span in TASK_SPANS}
    waiting = iter(task_ids)
    began = last_note = time.monotonic()

    async def reader() -> None:
        nonlocal last_note
        # The readers share one iterator, so at most HISTORY_FETCHES_AT_ONCE reads are in flight.
        for task_id in waiting:
            workflow_id = names.task_workflow_id(batch_id, task_id, 1)
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            events = list(history.events)
            # Only figures are kept: 10,000 histories' events would take a lot of memory.
            children.append(history_size(workflow_id, workflow_id, history.run_id, events))
            child_types.update(event_name(e) for e in events)
            problems.update(workflow_task_problems("child", events))
            for label, seconds in child_spans(workflow_id, events, batch_times):
                spans[label].append(seconds)
            now = time.monotonic()
            if now - last_note >= STALL_CHECK_EVERY or len(children) == len(task_ids):
                last_note = now
                progress(
                    f"histories: {len(children)}/{len(task_ids)} task children read "
                    f"({now - began:.0f} s)"
                )

    await asyncio.gather(*(reader() for _ in range(min(HISTORY_FETCHES_AT_ONCE, len(task_ids)))))
    children.sort(key=lambda h: h.workflow_id)
    reports = Counter(batch_times.report_channel.values())
    missing = sum(h.workflow_id not in batch_times.report_received for h in children)
    if missing:
        reports[NOT_REPORTED] = missing
    spans[REFILL_SPAN] = batch_times.refill_gaps
    spans[HANDOVER_SPAN] = batch_times.handovers_s
    return HistoryReport(
        batch_runs=batch_runs,
        children=children,
        batch_event_types=dict(batch_types.most_common()),
        child_event_types=dict(child_types.most_common()),
        workflow_task_problems=dict(problems.most_common()),
        reports=dict(reports.most_common()),
        handed_over=len(batch_times.handover_confirmed),
        reports_per_run=reports_per_run,
        phases_s=spans,
    )


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


# --- reporting helpers ------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def mb(size: float) -> str:
    """A size in MB, or in kB while it is small enough that MB would show as 0.00."""
    return f"{size / MB:.2f} MB" if size >= MB / 10 else f"{size / 1024:.1f} kB"


def cpu_row(name: str, run: TaskpoolRun) -> str:
    per_task = run.cpu.per_task_ms(run.plan.tasks)
    util = run.cpu.utilisation()
    return (
        f"| {name} | {run.server} | {run.plan.tasks} | {run.plan.window} | "
        f"{run.plan.latency:g} | {run.cpu.wall_s:.1f} | {run.tasks_per_s:.2f} | "
        f"{per_task['server']:.1f} | {util['server']:.0%} | {per_task['worker']:.1f} | "
        f"{util['worker']:.0%} | {util['bench']:.0%} | {util['other']:.0%} | "
        f"{util['machine']:.0%} |"
    )


CPU_HEADER = (
    "| run | dev server | tasks | W | L s | wall s | tasks/s | server ms CPU/task | server util | "
    "worker ms CPU/task | worker util | bench util | others | machine busy |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def server_line(common: Common, *names: str) -> str:
    shown = dict.fromkeys(names or (common.server_name,))
    line = "Dev server: " + "; ".join(common.server(name).describe() for name in shown) + "."
    if common.model_calls != "activity":
        line += f" taskpool's model calls: {common.model_calls} activities."
    if common.worker_env:
        line += " Worker environment: " + " ".join(f"{k}={v}" for k, v in common.worker_env.items())
        line += "."
    return line


def usage_lines(run: TaskpoolRun) -> list[str]:
    per = run.per_task()
    return [
        f"LLM calls per task: {per['model_requests']:.2f} at the model "
        f"({run.model_requests} requests for {run.plan.tasks} tasks), {per['llm_calls']:.2f} "
        f"by the batch's status; tokens per task (the scripted model's estimate, chars/4): "
        f"{per['prompt_tokens']:.0f} prompt + {per['completion_tokens']:.0f} completion = "
        f"{per['prompt_tokens'] + per['completion_tokens']:.0f}; task input {run.plan.tasks} x "
        f"summarise. Start input (the packed per-task state; definitions are in the task store) "
        f"{run.start_payload_bytes} bytes, {run.start_payload_bytes / run.plan.tasks:.1f} per "
        "task.",
    ]


def slot_line(run: TaskpoolRun) -> str:
    """A slot's turnaround against a task's own run: the difference is spent starting children
    and hearing back from them."""
    slot = run.plan.window * run.cpu.wall_s / run.plan.tasks
    own = run.history.phases_s.get(OWN_RUN_SPAN) if run.history else None
    own_text = f"; a task's own run took {statistics.median(own):.2f} s (median)" if own else ""
    return (
        f"Each of the {run.plan.window} slots turned over once every {slot:.2f} s on average "
        f"(W x wall / N){own_text}; model latency {run.plan.latency:g} s."
    )


def size_row(kind: str, s: dict[str, Any]) -> str:
    if not s["histories"]:
        return f"| {kind} | 0 | - | - | - | - | - | - |"
    return (
        f"| {kind} | {s['histories']} | {s['events_max']} ({s['events_max_in']}) | "
        f"{s['events_mean']:.1f} | {mb(s['largest_payload_bytes'])} ({s['largest_payload_in']}) | "
        f"{mb(s['largest_event_bytes'])} {s['largest_event_type']} ({s['largest_event_in']}) | "
        f"{s['over_target']} | {verdict(s['within_targets'])} |"
    )


def history_lines(report: HistoryReport, tasks: int) -> list[str]:
    s = report.summary()
    reports = ", ".join(f"{count} by {how}" for how, count in report.reports.items())
    lines = [
        f"Every history under {TARGET_EVENTS} events and every payload under "
        f"{mb(TARGET_PAYLOAD)}: {verdict(s['within_targets'])} ({len(report.all)} histories "
        f"read: {len(report.batch_runs)} batch run(s) and {len(report.children)} task children).",
        "",
        "| workflows | histories | events, most (in) | events, mean | largest payload (in) | "
        "largest event (in) | over a target | verdict |",
        "|---|---:|---:|---:|---:|---|---:|---|",
        size_row("batch runs", s["batch_runs"]),
        size_row("task children", s["children"]),
        "",
        "| batch run | reports taken | events | largest payload | largest event | verdict |",
        "|---:|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {n} | {reports} | {h.events} | {mb(h.largest_payload_bytes)} | "
        f"{mb(h.largest_event_bytes)} {h.largest_event_type} | {verdict(h.within_targets)} |"
        for n, (h, reports) in enumerate(
            zip(report.batch_runs, report.reports_per_run, strict=True), 1
        )
    ]
    per_task = ", ".join(
        f"{name} {count / tasks:.2f}" for name, count in report.batch_event_types.items()
    )
    child = ", ".join(
        f"{name} {count / tasks:.2f}" for name, count in report.child_event_types.items()
    )
    lines += [
        "",
        f"How outcomes reached the batch: {reports or 'none seen'}; {report.handed_over} "
        f"children confirmed a hand-over before continue-as-new. "
        f"{s['batch_events_per_task']:.1f} batch events per task.",
        f"Batch events per task by type: {per_task}.",
        f"Child events per task by type: {child}.",
    ]
    problems = ", ".join(
        f"{name} x{count}" for name, count in report.workflow_task_problems.items()
    )
    lines.append(f"Workflow tasks that failed or timed out (each retried): {problems or 'none'}.")
    return lines + phase_lines(report)


def phase_lines(report: HistoryReport) -> list[str]:
    """Median and p90 of each span of a task's life, read from the histories."""
    if not any(report.phases_s.values()):
        return []
    lines = [
        "",
        "| where a task's time goes | median ms | p90 ms | n |",
        "|---|---:|---:|---:|",
    ]
    for label, values in report.phases_s.items():
        if values:
            p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
            lines.append(
                f"| {label} | {1000 * statistics.median(values):.0f} | {1000 * p90:.0f} | "
                f"{len(values)} |"
            )
    return lines


def run_json(run: TaskpoolRun) -> dict[str, Any]:
    data = asdict(run)
    data["tasks_per_s"] = run.tasks_per_s
    data["cpu_ms_per_task"] = run.cpu.per_task_ms(run.plan.tasks)
    data["cpu_utilisation"] = run.cpu.utilisation()
    data["per_task"] = run.per_task()
    if run.history is not None:
        data["history"] = {
            "summary": run.history.summary(),
            "batch_runs": [asdict(h) for h in run.history.batch_runs],
            "batch_event_types": run.history.batch_event_types,
            "child_event_types": run.history.child_event_types,
            "workflow_task_problems": run.history.workflow_task_problems,
            "phases_median_s": {
                k: statistics.median(v) for k, v in run.history.phases_s.items() if v
            },
        }
    return data


@dataclass(frozen=True)
class Section:
    title: str
    body: str
    data: dict[str, Any]


# --- the parts --------------------------------------------------------------------------------


async def ceiling_vs_taskpool(
    tasks: int,
    window: int,
    common: Common,
    ceiling_server: str | None = None,
    pairs: int = 1,
) -> Section:
    """`pairs` rounds of the ceiling then taskpool on the same server configuration, each on a
    fresh server; the verdict is the median ratio, since neighbours on a shared machine move
    single runs by 20 % or more. Also the ceiling on `ceiling_server` when that differs: the
    issue compares taskpool on the durable server with the ceiling on the untuned one."""
    other = ceiling_server if ceiling_server not in (None, common.server_name) else None
    other_ceiling = await run_ceiling(tasks, window, common, other) if other else None
    rounds: list[tuple[dict[str, Any], TaskpoolRun]] = []
    for number in range(1, pairs + 1):
        ceiling = await run_ceiling(tasks, window, common, common.server_name)
        plan = BatchPlan(tasks=tasks, window=window, latency=0.0, histories=number == pairs)
        rounds.append((ceiling, await run_taskpool(plan, common)))
    ratios = [run.tasks_per_s / ceiling["tasks_per_s"] for ceiling, run in rounds]
    server_ratios = [
        (run.cpu.server_s / tasks) / ceiling["server_cpu_s_per_task"] for ceiling, run in rounds
    ]
    ratio = statistics.median(ratios)
    server_ratio = statistics.median(server_ratios)
    lines = [
        f"Same N = {tasks} and W = {window}, scripted model at zero latency, a fresh dev server "
        f"(SQLite file) for each run; {pairs} pair(s) of runs, ceiling first, the verdict on the "
        "median ratio.",
        server_line(common, *([other] if other else []), common.server_name),
        "",
        "| run | dev server | tasks/s | server ms CPU/task | server util | worker ms CPU/task | "
        "worker util |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    named: list[tuple[str, dict[str, Any] | TaskpoolRun]] = (
        [("ceiling", other_ceiling)] if other_ceiling is not None else []
    )
    for number, (ceiling, run) in enumerate(rounds, 1):
        named.append((f"ceiling, pair {number}", ceiling))
        named.append((f"taskpool, pair {number}", run))
    for label, entry in named:
        if isinstance(entry, TaskpoolRun):
            lines.append(
                f"| {label} (worker.py process) | {entry.server} | {entry.tasks_per_s:.2f} | "
                f"{1000 * entry.cpu.server_s / tasks:.1f} | "
                f"{entry.cpu.utilisation()['server']:.0%} | "
                f"{1000 * entry.cpu.worker_s / tasks:.1f} | "
                f"{entry.cpu.utilisation()['worker']:.0%} |"
            )
        else:
            server = other if label == "ceiling" else common.server_name
            lines.append(
                f"| {label} (1 no-op activity per child, in-process worker) | {server} | "
                f"{entry['tasks_per_s']:.2f} | {1000 * entry['server_cpu_s_per_task']:.1f} | "
                f"{entry['server_cpu_util']:.0%} | {1000 * entry['worker_cpu_s_per_task']:.1f} | "
                f"{entry['worker_cpu_util']:.0%} |"
            )
    run = rounds[-1][1]
    each = ", ".join(f"{r:.2f}x" for r in ratios)
    lines += [
        "",
        f"taskpool / ceiling, both on {run.server}: {ratio:.2f}x tasks/s, median of {each} "
        f"(target >= {TARGET_RATIO:.1f}x: {verdict(ratio >= TARGET_RATIO)}); {server_ratio:.2f}x "
        "the server's CPU per task.",
    ]
    data: dict[str, Any] = {
        "pairs": [{"ceiling": c, "taskpool": run_json(r)} for c, r in rounds],
        "ratios": ratios,
        "ratio": ratio,
        "server_cpu_ratio": server_ratio,
    }
    if other_ceiling is not None:
        rate = statistics.median(r.tasks_per_s for _, r in rounds)
        cross = rate / other_ceiling["tasks_per_s"]
        target = (
            f" (target >= {TARGET_TUNED_RATIO:.1f}x: {verdict(cross >= TARGET_TUNED_RATIO)})"
            if (run.server, other) == ("durable", "untuned")
            else ""
        )
        lines.append(
            f"taskpool on {run.server} (median rate) / ceiling on {other}: {cross:.2f}x "
            f"tasks/s{target}."
        )
        data.update(ceiling_other=other_ceiling, ratio_other=cross)
    lines += [
        "",
        CPU_HEADER,
        *(cpu_row(f"taskpool, pair {n}", r) for n, (_, r) in enumerate(rounds, 1)),
    ]
    lines += ["", *usage_lines(run)]
    if run.history is not None:
        lines += ["", slot_line(run), "", *history_lines(run.history, tasks)]
    return Section(
        title=f"taskpool vs ceiling: {tasks} tasks, window {window}, taskpool on {run.server}"
        + (f", ceiling also on {other}" if other else ""),
        body="\n".join(lines),
        data=data,
    )


async def utilisation(
    windows: Sequence[int],
    latency: float,
    rounds: int,
    max_tasks: int,
    ceiling_rate: float | None,
    common: Common,
) -> Section:
    ceiling_note = "given on the command line"
    if ceiling_rate is None:
        ceiling = await run_ceiling(300, 50, common)
        ceiling_rate = float(ceiling["tasks_per_s"])
        ceiling_note = "measured in this invocation: 300 tasks, window 50"
    runs = []
    references: list[float] = []
    for window in windows:
        tasks = min(rounds * window, max_tasks)
        runs.append(
            await run_taskpool(
                BatchPlan(tasks=tasks, window=window, latency=latency, histories=True), common
            )
        )
        reference = await run_ceiling(tasks, window, common, activity_seconds=latency)
        references.append(float(reference["tasks_per_s"]))
    # One child at a time meets no contention at all: its rate is the most that any number of
    # children in flight can get out of each slot, so it bounds utilisation for every W.
    lone = await run_ceiling(LONE_TASKS, 1, common, activity_seconds=latency)
    lone_rate = float(lone["tasks_per_s"])
    lone_overhead_ms = 1000 * (1 / lone_rate - latency)
    lines = [
        f"Model latency L = {latency:g} s; ideal rate W / L. Ceiling {ceiling_rate:.1f} tasks/s "
        f"({ceiling_note}). End to end: all tasks over the batch's wall time; steady: how busy "
        "the W slots were with model calls between the first and last tenth of the requests "
        "(no start-up or drain), as tasks/s. "
        "Reference: the ceiling's pattern (parent, child, one activity) with an activity of "
        "L seconds, same N and W, on the same server configuration: what a child per task can "
        "reach at all here, since every task pays the server's round trips (child start, workflow "
        "tasks, activity) on top of L.",
        server_line(common),
        "",
        "| W | tasks | ideal tasks/s | end-to-end tasks/s | steady tasks/s | utilisation "
        "(end to end) | utilisation (steady) | of min(W / L, ceiling) | slot turnaround s "
        "(W x wall / N) | most model calls at once | reference tasks/s (utilisation) | "
        "taskpool / reference | W / L under the ceiling? | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    data = []
    for run, reference_rate in zip(runs, references, strict=True):
        ideal = run.plan.window / latency
        used = run.tasks_per_s / ideal
        steady = run.steady_tasks_per_s
        steady_used = steady / ideal if steady else None
        under = ideal < ceiling_rate
        target = f">= {TARGET_UTILISATION:.0%}: {verdict(used >= TARGET_UTILISATION)}"
        if not under:
            target += " (not reachable: W / L is at or above the ceiling)"
        elif lone_rate * latency < TARGET_UTILISATION:
            target += f" (not reachable here: one task at a time reaches {lone_rate * latency:.1%})"
        lines.append(
            f"| {run.plan.window} | {run.plan.tasks} | {ideal:.1f} | {run.tasks_per_s:.2f} | "
            f"{steady or 0:.2f} | {used:.1%} | "
            f"{f'{steady_used:.1%}' if steady_used else '-'} | "
            f"{run.tasks_per_s / min(ideal, ceiling_rate):.1%} | "
            f"{run.plan.window * run.cpu.wall_s / run.plan.tasks:.2f} | "
            f"{run.model_peak_concurrency} | {reference_rate:.2f} ({reference_rate / ideal:.1%}) | "
            f"{run.tasks_per_s / reference_rate:.2f}x | {'yes' if under else 'no'} | {target} |"
        )
        data.append(
            {
                **run_json(run),
                "ideal": ideal,
                "utilisation": used,
                "reference_tasks_per_s": reference_rate,
            }
        )
    lines += [
        "",
        f"One task at a time (the reference pattern, W = 1, {LONE_TASKS} tasks): "
        f"{lone_rate:.2f} tasks/s, {lone_rate * latency:.1%} of 1 / L. Each task pays "
        f"{lone_overhead_ms:.0f} ms of round trips on top of L even with nothing else running, "
        "so no window and no child-per-task design gets a slot busier than that here.",
    ]
    lines += ["", CPU_HEADER, *(cpu_row(f"W={r.plan.window}", r) for r in runs)]
    for run in runs:
        if run.history is not None:
            lines += ["", f"W = {run.plan.window}:", *phase_lines(run.history)]
    return Section(
        title=f"taskpool utilisation at L = {latency:g} s",
        body="\n".join(lines),
        data={
            "ceiling_tasks_per_s": ceiling_rate,
            "runs": data,
            "lone_reference_tasks_per_s": lone_rate,
        },
    )


async def worker_rss(tasks: int, window: int, latency: float, common: Common) -> Section:
    run = await run_taskpool(BatchPlan(tasks=tasks, window=window, latency=latency), common)
    ok = run.rss_peak_mb <= TARGET_RSS_MB
    lines = [
        f"`python worker.py` as its own process, W = {window}, L = {latency:g} s, {tasks} tasks "
        f"(at most {run.model_peak_concurrency} model calls in flight at once). "
        f"/proc/<pid>/status sampled every {RSS_SAMPLE_EVERY:g} s.",
        server_line(common),
        "",
        f"RSS when the batch started {run.rss_start_mb:.1f} MB; largest sample "
        f"{run.rss_sampled_peak_mb:.1f} MB; peak (VmHWM) {run.rss_peak_mb:.1f} MB; "
        f"target <= {TARGET_RSS_MB:.0f} MB: {verdict(ok)}.",
        "",
        CPU_HEADER,
        cpu_row(f"W={window}", run),
    ]
    return Section(
        title=f"taskpool worker RSS at W = {window}",
        body="\n".join(lines),
        data=run_json(run),
    )


async def probe_start(tasks: int, common: Common) -> str:
    """Whether the server accepts the start of a `tasks`-task batch (no worker: it never runs)."""
    specs = documents(tasks, common.input_chars)
    size = start_payload_bytes(specs)
    with tempfile.TemporaryDirectory(prefix="taskpool-probe-") as tmp:
        async with bench_server(config=common.server()) as server:
            client = await connect({"TEMPORAL_ADDRESS": server.address})
            try:
                handle = await start_batch(
                    client,
                    f"probe-{uuid.uuid4().hex[:8]}",
                    specs,
                    task_queue="no-worker",
                    store=str(Path(tmp) / "tasks.db"),
                )
            except BatchTooLargeError as err:
                return f"start input {mb(size)}: start_batch refused it: {err}"
            except RPCError as err:
                return f"start input {mb(size)}: the server rejected the start: {err.message[:200]}"
            await handle.terminate(reason="probe only")
    return f"start input {mb(size)}: the server accepted the start (terminated at once)"


async def history(
    tasks: int,
    window: int,
    probe_tasks: int,
    common: Common,
    continue_as_new_after: int | None = None,
) -> Section:
    lines = [
        f"A {tasks}-task batch, W = {window}, model latency 0, run to completion; then the "
        "history of every batch run (following continue-as-new) and of every task child.",
        server_line(common),
    ]
    if tasks < HISTORY_TARGET_TASKS:
        lines.append(
            f"NOTE: {tasks} tasks, not the target's {HISTORY_TARGET_TASKS}: children's histories "
            "do not depend on the batch's size, batch runs do (see the projection below)."
        )
    probe = None
    if probe_tasks:
        probe = await probe_start(probe_tasks, common)
        lines.append(f"Starting a {probe_tasks}-task batch without a worker: {probe}.")
    try:
        plan = BatchPlan(
            tasks=tasks,
            window=window,
            latency=0.0,
            histories=True,
            continue_as_new_after=continue_as_new_after,
        )
        run = await run_taskpool(plan, common)
    except RPCError as err:
        lines.append(f"The {tasks}-task batch did not start: {err.message[:300]}")
        return Section(title=f"taskpool history: {tasks} tasks", body="\n".join(lines), data={})
    assert run.history is not None
    lines += [
        f"Ran at {run.tasks_per_s:.2f} tasks/s in {run.cpu.wall_s:.0f} s; start input (packed "
        f"per-task state) {mb(run.start_payload_bytes)}, of the {mb(SERVER_PAYLOAD_LIMIT)} the "
        "server takes.",
        slot_line(run),
        "",
        *history_lines(run.history, tasks),
    ]
    if tasks < HISTORY_TARGET_TASKS:
        lines += ["", projection(run.history, continue_as_new_after)]
    return Section(
        title=f"taskpool history: {tasks} tasks",
        body="\n".join(lines),
        data={"probe": probe, **run_json(run)},
    )


def projection(report: HistoryReport, continue_as_new_after: int | None) -> str:
    """Batch events at the target's size, from the run here that took the most reports."""
    per_run = continue_as_new_after or BatchOptions().continue_as_new_after
    events_per_task = report.summary()["batch_events_per_task"]
    reports, fullest = max(
        zip(report.reports_per_run, report.batch_runs, strict=True), key=lambda run: run[0]
    )
    per_report = fullest.events / max(reports, 1)
    return (
        f"Projection to {HISTORY_TARGET_TASKS} tasks: about "
        f"{events_per_task * HISTORY_TARGET_TASKS:.0f} batch events in all. A run continues as "
        f"new after {per_run} reports (or when the server suggests it); at the "
        f"{per_report:.1f} events per report of the fullest run here ({fullest.label}: "
        f"{fullest.events} events for {reports} reports, the window's starts included) that is "
        f"about {per_report * per_run:.0f} events, but the server suggests continuing once a "
        f"run has {SUGGEST_CONTINUE_AS_NEW_EVENTS} events, so a run would end near "
        f"{min(per_report * per_run, SUGGEST_CONTINUE_AS_NEW_EVENTS):.0f} plus its hand-over "
        f"(target < {TARGET_EVENTS}). Only the full run measures it."
    )


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        choices=sorted(SERVER_CONFIGS),
        default="untuned",
        help="dev server configuration for every server started (untuned: the CLI's defaults; "
        "durable: what `taskpool demo` runs)",
    )
    common.add_argument(
        "--pragma",
        action="append",
        default=[],
        metavar="K=V",
        help="SQLite pragma on top of --server's (all servers)",
    )
    common.add_argument(
        "--input-chars", type=int, default=300, help="characters of input per task (300)"
    )
    common.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra environment for worker.py, e.g. TASKPOOL_WORKFLOW_SANDBOX=off",
    )
    common.add_argument(
        "--model-calls",
        choices=("activity", "local"),
        default="activity",
        help="how taskpool's batches run model turns (BatchOptions' agent.model_calls)",
    )
    common.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    common.add_argument("--json", action="store_true", help="print the raw numbers as JSON too")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parts = parser.add_subparsers(dest="part", required=True)

    compare = parts.add_parser("ceiling-vs-taskpool", parents=[common])
    compare.add_argument("--tasks", type=int, default=500, help="tasks (500)")
    compare.add_argument("--window", type=int, default=50, help="in flight (50)")
    compare.add_argument(
        "--ceiling-server",
        choices=sorted(SERVER_CONFIGS),
        help="also measure the ceiling on this configuration (default: --server's only)",
    )
    compare.add_argument(
        "--pairs", type=int, default=3, help="rounds of ceiling then taskpool; median ratio (3)"
    )

    util = parts.add_parser("utilisation", parents=[common])
    util.add_argument("--windows", type=int, nargs="+", default=[10, 100], help="W (10 100)")
    util.add_argument("--latency", type=float, default=1.0, help="model latency, s (1)")
    util.add_argument("--rounds", type=int, default=20, help="tasks = rounds x W ... (20)")
    util.add_argument("--max-tasks", type=int, default=500, help="... at most this (500)")
    util.add_argument("--ceiling-rate", type=float, help="known ceiling, tasks/s (else measured)")

    rss = parts.add_parser("rss", parents=[common])
    rss.add_argument("--tasks", type=int, default=300, help="tasks (300)")
    rss.add_argument("--window", type=int, default=100, help="in flight (100)")
    rss.add_argument(
        "--latency",
        type=float,
        default=RSS_LATENCY,
        help=f"model latency, s ({RSS_LATENCY:g}: long enough for W calls at once)",
    )

    hist = parts.add_parser("history", parents=[common])
    hist.add_argument(
        "--history-tasks", type=int, default=HISTORY_TARGET_TASKS, help="tasks (10000)"
    )
    hist.add_argument("--window", type=int, default=50, help="in flight (50)")
    hist.add_argument(
        "--probe-tasks",
        type=int,
        default=HISTORY_TARGET_TASKS,
        help="also try to start this many tasks without running them; 0 skips (10000)",
    )
    hist.add_argument(
        "--continue-as-new-after",
        type=int,
        help="reports per batch run (default: BatchOptions'); low values exercise the hand-over",
    )

    every = parts.add_parser("all", parents=[common])
    every.add_argument("--tasks", type=int, default=500, help="ceiling-vs-taskpool tasks (500)")
    every.add_argument("--window", type=int, default=50, help="ceiling-vs-taskpool W (50)")
    every.add_argument(
        "--ceiling-server",
        choices=sorted(SERVER_CONFIGS),
        help="ceiling-vs-taskpool: also measure the ceiling on this configuration",
    )
    every.add_argument(
        "--pairs", type=int, default=3, help="ceiling-vs-taskpool rounds; median ratio (3)"
    )
    every.add_argument(
        "--history-tasks", type=int, default=HISTORY_TARGET_TASKS, help="history tasks (10000)"
    )
    args = parser.parse_args(argv)
    for name in ("tasks", "history_tasks", "input_chars", "pairs"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if (getattr(args, "continue_as_new_after", None) or 1) < 1:
        parser.error("--continue-as-new-after must be >= 1")
    # The batch workflow's own bound (BatchOptions.concurrency).
    for window in [getattr(args, "window", 1), *getattr(args, "windows", [])]:
        if not 1 <= window <= 1000:
            parser.error("windows must be within 1..1000")
    return args


async def run_parts(args: argparse.Namespace, common: Common) -> list[Section]:
    if args.part == "ceiling-vs-taskpool":
        return [
            await ceiling_vs_taskpool(
                args.tasks, args.window, common, args.ceiling_server, args.pairs
            )
        ]
    if args.part == "utilisation":
        return [
            await utilisation(
                args.windows, args.latency, args.rounds, args.max_tasks, args.ceiling_rate, common
            )
        ]
    if args.part == "rss":
        return [await worker_rss(args.tasks, args.window, args.latency, common)]
    if args.part == "history":
        return [
            await history(
                args.history_tasks,
                args.window,
                args.probe_tasks,
                common,
                args.continue_as_new_after,
            )
        ]
    compared = await ceiling_vs_taskpool(
        args.tasks, args.window, common, args.ceiling_server, args.pairs
    )
    ceiling_rate = statistics.median(
        float(pair["ceiling"]["tasks_per_s"]) for pair in compared.data["pairs"]
    )
    return [
        compared,
        await utilisation([10, 100], 1.0, 20, 500, ceiling_rate, common),
        await worker_rss(300, 100, RSS_LATENCY, common),
        await history(args.history_tasks, 50, HISTORY_TARGET_TASKS, common),
    ]


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    compile_workflow_modules()
    pragmas = parse_pairs(args.pragma, "--pragma")
    common = Common(
        server_name=args.server,
        pragmas=pragmas,
        input_chars=args.input_chars,
        worker_env=parse_pairs(args.worker_env, "--worker-env"),
        model_calls=args.model_calls,
    )
    command = command_line()
    for section in asyncio.run(run_parts(args, common)):
        print(f"## {section.title}\n\n{section.body}\n")
        if args.json:
            print(json.dumps(section.data, indent=2, sort_keys=True, default=str))
        if not args.no_record:
            append_result(section.title, section.body, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

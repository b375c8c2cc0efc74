"""One batch of a million tasks on a real dev server: what it costs to start, run and cancel.

    python bench/scale.py [--tasks 1000000] [--window 50] [--reports 2500] [--server durable]
            [--continue-as-new-after N]

The batch is started as `starter.py start` starts one (checked and packed, definitions written to
the task store, then the workflow), runs on `python worker.py` against the scripted model at zero
latency until `--reports` tasks have completed (the batch continues as new every ~800 tasks, each
new run rebuilding the table of every task inside its first workflow task), and is then cancelled,
which marks every other task cancelled in the batch and in the store. Measured:

- preparing, writing the definitions and starting: seconds each;
- the first model call after the start; tasks per second while it runs;
- per batch run, its events and its first workflow task (the table is rebuilt in it, the first
  children start and their store write runs as a local activity, so it is more than the rebuild);
  workflow tasks that failed or timed out (none may: a workflow task whose code runs 2 s without
  a yield fails as a deadlock);
- rebuilding the table from the last run's own start input (unpack and index) and packing it
  again, timed in this process: the work a continue-as-new does on the clock;
- `status` and `tasks` query round trips on the running batch;
- the cancellation: until the batch closed, and the counts it ended with;
- the worker's peak RSS.

Printed, and appended to bench/RESULTS.md with the command (--no-record skips that); progress goes
to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _common import append_result, bench_server, command_line, progress, server_config
from batch_run import MODEL, document, finish_or_stall, worker_environment, worker_process
from histories import workflow_task_problems
from meters import RssSampler
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from taskpool.client.batches import batch_status, prepare_batch, register_definitions, task_page
from taskpool.domain import names
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchResult, BatchRun, BatchStatus
from taskpool.domain.packing import pack, unpack
from taskpool.domain.scheduling import MAX_TASKS_PER_BATCH, TaskTable
from taskpool.domain.tasks import TaskSpec
from taskpool.infra.store import opened_store
from taskpool.infra.temporal_connection import connect
from taskpool.testing.scripted import ScriptedModelServer

DEADLOCK_LIMIT_S = 2.0
TIMED_REBUILDS = 5
INPUT_CHARS = 120
STATUS_EVERY_S = 2.0


@dataclass
class RunTimes:
    run: int
    events: int
    first_task_s: float
    problems: Counter[str]


@dataclass
class ScaleReport:
    tasks: int
    window: int
    prepare_s: float = 0.0
    register_s: float = 0.0
    start_s: float = 0.0
    first_call_s: float = 0.0
    reports: int = 0
    run_s: float = 0.0
    status_query_ms: list[float] = field(default_factory=list)
    tasks_query_ms: list[float] = field(default_factory=list)
    cancel_s: float = 0.0
    final_counts: dict[str, int] = field(default_factory=dict)
    runs: list[RunTimes] = field(default_factory=list)
    rss_peak_mb: float = 0.0
    rebuild_s: list[float] = field(default_factory=list)
    pack_s: list[float] = field(default_factory=list)
    packed_kb: float = 0.0


def first_workflow_task_s(events: Sequence[HistoryEvent]) -> float:
    """Seconds from the first workflow task's start to its completion."""
    started = None
    for event in events:
        at = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and started is None:
            started = at
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and started:
            return at - started
    return 0.0


async def batch_runs(client: Client, batch_id: str) -> list[RunTimes]:
    runs: list[RunTimes] = []
    executions = [e async for e in client.list_workflows(f'WorkflowId = "{batch_id}"')]
    for number, execution in enumerate(sorted(executions, key=lambda e: e.start_time), start=1):
        history = await client.get_workflow_handle(
            batch_id, run_id=execution.run_id
        ).fetch_history()
        problems = workflow_task_problems(f"run {number}", history.events)
        runs.append(
            RunTimes(
                run=number,
                events=len(history.events),
                first_task_s=first_workflow_task_s(history.events),
                problems=problems,
            )
        )
    return runs


async def last_run_input(client: Client, batch_id: str) -> BatchRun:
    history = await client.get_workflow_handle(batch_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    (run,) = pydantic_data_converter.payload_converter.from_payloads(
        started.input.payloads, [BatchRun]
    )
    assert isinstance(run, BatchRun)
    return run


def time_rebuilds(run: BatchRun, report: ScaleReport) -> None:
    report.packed_kb = len(run.tasks.data) / 1024
    for _ in range(TIMED_REBUILDS):
        began = time.perf_counter()
        table = TaskTable(unpack(run.tasks))
        report.rebuild_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        pack(table.columns)
        report.pack_s.append(time.perf_counter() - began)


async def timed_ms(call: Awaitable[object]) -> float:
    began = time.perf_counter()
    await call
    return (time.perf_counter() - began) * 1000


async def measure(
    tasks: int, window: int, reports: int, server_name: str, continue_as_new_after: int | None
) -> ScaleReport:
    report = ScaleReport(tasks=tasks, window=window)
    progress(f"scale: building {tasks} task definitions")
    specs: list[TaskSpec] = [
        document(i, INPUT_CHARS).model_copy(update={"id": f"doc-{i:07d}"}) for i in range(tasks)
    ]
    options = BatchOptions(concurrency=window, agent=AgentSettings(model=MODEL))
    if continue_as_new_after is not None:
        options.continue_as_new_after = continue_as_new_after
    queue = f"scale-{uuid.uuid4().hex[:8]}"
    batch_id = f"scale-batch-{uuid.uuid4().hex[:8]}"
    types = {key.name: key.indexed_value_type.name.title() for key in names.SEARCH_ATTRIBUTES}
    with tempfile.TemporaryDirectory(prefix="taskpool-scale-") as tmp:
        log_path = Path(tmp) / "worker.log"
        async with (
            bench_server(config=server_config(server_name), search_attributes=types) as server,
            ScriptedModelServer(latency=0.0) as model,
        ):
            client = await connect({"TEMPORAL_ADDRESS": server.address})
            env = worker_environment(server.address, queue, model.base_url, Path(tmp) / "tasks.db")
            async with worker_process(client, env, log_path) as worker:
                rss = RssSampler(worker.pid)
                rss.start()
                began = time.monotonic()
                prepared = prepare_batch(specs, options)
                report.prepare_s = time.monotonic() - began
                progress(f"scale: prepared in {report.prepare_s:.1f} s; writing definitions")
                began = time.monotonic()
                async with opened_store(env["TASKPOOL_STORE"]) as store:
                    await register_definitions(
                        store, batch_id, prepared.tasks, prepared.first_status, prepared.at
                    )
                report.register_s = time.monotonic() - began
                progress(f"scale: definitions written in {report.register_s:.1f} s; starting")
                began = time.monotonic()
                handle = await client.start_workflow(
                    names.BATCH_WORKFLOW,
                    prepared.run,
                    id=batch_id,
                    task_queue=queue,
                    result_type=BatchResult,
                )
                report.start_s = time.monotonic() - began
                started = time.monotonic()
                while model.total_requests == 0:  # noqa: ASYNC110 (a plain counter; no event to await)
                    await asyncio.sleep(0.05)
                report.first_call_s = time.monotonic() - started
                status = await until_reports(client, batch_id, reports, started, rss)
                report.reports = status.counts.get("completed", 0)
                report.run_s = time.monotonic() - started
                for _ in range(5):
                    report.status_query_ms.append(await timed_ms(batch_status(client, batch_id)))
                    report.tasks_query_ms.append(
                        await timed_ms(task_page(client, batch_id, offset=tasks // 2, limit=50))
                    )
                progress(f"scale: {report.reports} completed; cancelling the batch")
                began = time.monotonic()
                await handle.signal(names.CANCEL)
                result = await finish_or_stall(handle.result(), model, worker, log_path, 0.0)
                report.cancel_s = time.monotonic() - began
                report.final_counts = result.counts
                _, _, report.rss_peak_mb = await rss.stop()
            report.runs = await batch_runs(client, batch_id)
            time_rebuilds(await last_run_input(client, batch_id), report)
    return report


async def until_reports(
    client: Client, batch_id: str, reports: int, started: float, rss: RssSampler
) -> BatchStatus:
    while True:
        status = await batch_status(client, batch_id)
        completed = status.counts.get("completed", 0)
        if completed >= reports:
            return status
        worker_mb = rss.samples_kb[-1] / 1024 if rss.samples_kb else 0.0
        progress(
            f"scale: {completed} completed, run {status.run_number}, "
            f"{time.monotonic() - started:.0f} s, worker RSS {worker_mb:.0f} MB"
        )
        await asyncio.sleep(STATUS_EVERY_S)


def summary(report: ScaleReport) -> str:
    runs = report.runs
    firsts = [r.first_task_s for r in runs]
    rebuild = max(report.rebuild_s, default=0.0)
    problems = sum((r.problems for r in runs), Counter[str]())
    # A report that arrives as the batch completes a workflow task makes the server refuse that
    # completion (UNHANDLED_COMMAND); the SDK retries it at once. Anything else is a fault.
    faults = {k: n for k, n in problems.items() if not k.endswith("UNHANDLED_COMMAND")}
    cancelled = report.final_counts.get("cancelled", 0)
    completed = report.final_counts.get("completed", 0)
    ok = rebuild < DEADLOCK_LIMIT_S / 2 and not faults and completed + cancelled == report.tasks
    lines = [
        f"{report.tasks:,} tasks, W {report.window}, scripted model at zero latency",
        "",
        "| measure | value |",
        "|---|---|",
        f"| prepare (check, settle, pack) | {report.prepare_s:.1f} s |",
        f"| write the definitions to the store | {report.register_s:.1f} s |",
        f"| start the workflow | {report.start_s:.2f} s |",
        f"| first model call after the start | {report.first_call_s:.2f} s |",
        f"| completed while running | {report.reports:,} in {report.run_s:.0f} s "
        f"({report.reports / report.run_s:.1f} tasks/s) |",
        f"| batch runs (continue-as-new) | {len(runs)} |",
        f"| first workflow task of a run (rebuilds the table) | median "
        f"{statistics.median(firsts) if firsts else 0:.2f} s, max {max(firsts, default=0):.2f} s |",
        f"| rebuild the last run's table (unpack, index, queues), {TIMED_REBUILDS} times | "
        f"median {statistics.median(report.rebuild_s):.2f} s, max {rebuild:.2f} s "
        "(deadlock limit 2 s) |",
        f"| pack it for continue-as-new | median {statistics.median(report.pack_s):.2f} s, "
        f"max {max(report.pack_s):.2f} s; {report.packed_kb:.0f} kB |",
        f"| workflow tasks failed or timed out | {dict(problems) or 'none'} |",
        f"| `status` query | median {statistics.median(report.status_query_ms):.0f} ms |",
        f"| `tasks` query (50 from the middle) | median "
        f"{statistics.median(report.tasks_query_ms):.0f} ms |",
        f"| cancel until the batch closed | {report.cancel_s:.0f} s |",
        f"| final counts | {report.final_counts} |",
        f"| worker peak RSS | {report.rss_peak_mb:.0f} MB |",
        "",
        "| run | events | first workflow task s | failed/timed out |",
        "|---:|---:|---:|---:|",
        *(
            f"| {r.run} | {r.events} | {r.first_task_s:.2f} | {sum(r.problems.values())} |"
            for r in runs
        ),
        "",
        f"verdict: {'PASS' if ok else 'FAIL'} (no workflow task failed or timed out but for "
        "UNHANDLED_COMMAND retries, the rebuild takes under half the deadlock limit, every task "
        "completed or cancelled)",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=MAX_TASKS_PER_BATCH)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--reports", type=int, default=2_500, help="tasks to complete first")
    parser.add_argument("--server", choices=("untuned", "durable"), default="durable")
    parser.add_argument(
        "--continue-as-new-after",
        type=int,
        help="reports per batch run (default: the batch's own, so Temporal's suggestion rules)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if not 0 < args.reports < args.tasks:
        parser.error("--reports must be above 0 and below --tasks")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    report = asyncio.run(
        measure(args.tasks, args.window, args.reports, args.server, args.continue_as_new_after)
    )
    body = summary(report)
    print(body)
    if not args.no_record:
        append_result("One batch of a million tasks", body, command=command_line())
    return 0 if "verdict: PASS" in body else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The parts of bench/throughput.py, each a measurement that comes back as a Section to print and
record: taskpool against the ceiling, utilisation against W / L, the worker's memory, and the
history sizes of a large batch."""

from __future__ import annotations

import statistics
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import MB, bench_server
from batch_run import (
    BatchPlan,
    Common,
    TaskpoolRun,
    documents,
    run_ceiling,
    run_taskpool,
    start_payload_bytes,
)
from histories import TARGET_EVENTS, HistoryReport
from meters import RSS_SAMPLE_EVERY
from report import (
    CPU_HEADER,
    Section,
    cpu_row,
    history_lines,
    mb,
    phase_lines,
    run_json,
    server_line,
    slot_line,
    usage_lines,
    verdict,
)
from temporalio.service import RPCError

from taskpool.client.batches import BatchTooLargeError, start_batch
from taskpool.domain.batch import BatchOptions
from taskpool.infra.temporal_connection import connect

# Targets from the issue.
TARGET_RATIO = 1.0
"""taskpool against the ceiling measured on the same dev server."""
TARGET_TUNED_RATIO = 1.5
"""taskpool on the durable (tuned) server against the ceiling on the untuned one."""
TARGET_UTILISATION = 0.95
LONE_TASKS = 30
"""Tasks of the one-at-a-time reference run in the utilisation part."""
TARGET_RSS_MB = 150.0
HISTORY_TARGET_TASKS = 10_000
# The server's limit.historyCount.suggestContinueAsNew default.
SUGGEST_CONTINUE_AS_NEW_EVENTS = 4 * 1024
# The dev server refuses a payload over this (limit.blobSize.error).
SERVER_PAYLOAD_LIMIT = 2 * MB


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

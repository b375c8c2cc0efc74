"""The tables and lines a throughput part prints and records, and its raw numbers as JSON."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from _common import MB
from batch_run import Common, TaskpoolRun
from histories import OWN_RUN_SPAN, TARGET_EVENTS, TARGET_PAYLOAD, HistoryReport


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

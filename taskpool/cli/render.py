"""How the command line shows batches, tasks and results to people: plain text and rich tables.

Pure functions of the data they are given (and the time, passed in), so the wording is testable
without a server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from taskpool.client.listing import BatchListing
from taskpool.client.published import StatusAnswer
from taskpool.client.snapshot import Snapshot, finished_count
from taskpool.domain.batch import BatchResult, BatchState, BatchStatus, TaskView
from taskpool.domain.records import TaskRecord
from taskpool.domain.tasks import TaskEvent, TaskStatus, TokenUsage

# Lifecycle order: where tasks are going first, where they ended last.
STATE_ORDER: tuple[TaskStatus, ...] = (
    TaskStatus.PENDING,
    TaskStatus.SCHEDULED,
    TaskStatus.BLOCKED,
    TaskStatus.QUEUED,
    TaskStatus.ASSIGNED,
    TaskStatus.IN_PROGRESS,
    TaskStatus.REVIEW,
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
)
STATE_STYLES: Mapping[TaskStatus, str] = {
    TaskStatus.COMPLETED: "green",
    TaskStatus.FAILED: "red",
    TaskStatus.CANCELLED: "yellow",
    TaskStatus.ASSIGNED: "cyan",
    TaskStatus.IN_PROGRESS: "cyan",
}
RESULT_WIDTH = 60
ERROR_WIDTH = 80
INPUT_SHOWN = 300


def command(*parts: str) -> str:
    """A starter.py command line to suggest, quoting what a shell would split."""
    return " ".join(["python starter.py", *(_shell_word(part) for part in parts)])


def _shell_word(word: str) -> str:
    safe = word and all(ch.isalnum() or ch in "-_.:/@=+," for ch in word)
    return word if safe else "'" + word.replace("'", "'\\''") + "'"


def tasks(count: int) -> str:
    """`count` followed by "task" or "tasks"."""
    return f"{count} task" if count == 1 else f"{count} tasks"


def counts_line(counts: Mapping[str, int]) -> str:
    """`completed 8 · failed 2`: the states that have tasks, in lifecycle order."""
    shown = [f"{s.value} {counts[s.value]}" for s in STATE_ORDER if counts.get(s.value)]
    return " · ".join(shown) or "no tasks"


def tokens_line(usage: TokenUsage, llm_calls: int | None = None) -> str:
    line = (
        f"{usage.total_tokens:,} tokens ({usage.prompt_tokens:,} in, "
        f"{usage.completion_tokens:,} out)"
    )
    if llm_calls is None:
        return line
    return f"{line} · {llm_calls:,} LLM call{'' if llm_calls == 1 else 's'}"


def duration(seconds: float | None) -> str:
    """`0.4s`, `42s`, `3m05s`, `2h07m`; an empty string when unknown."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def task_problem(view: TaskView) -> str:
    """Why a task failed or was cancelled, in one line."""
    if view.error is not None:
        return f"{view.error.code}: {view.error.message}"
    return view.status_reason or ""


def headline(status: BatchStatus) -> str:
    if status.state is BatchState.PAUSED:
        return "paused" + (f": {status.pause_reason}" if status.pause_reason else "")
    if status.state is BatchState.CANCELLED:
        return f"cancelled: {status.cancel_reason or 'by request'}"
    if status.state is BatchState.AWAITING_REVIEW:
        waiting = status.counts.get(TaskStatus.REVIEW.value, 0)
        return f"awaiting review: {tasks(waiting)} to approve or send back"
    return status.state.value


def progress_line(status: BatchStatus) -> str:
    done = finished_count(status.counts)
    return (
        f"{done}/{status.total} tasks finished ({status.progress_percent:.1f}%), "
        f"{status.in_flight} running of at most {status.concurrency}"
    )


def status_lines(status: BatchStatus, now: datetime) -> list[str]:
    """The readable summary `status` prints."""
    lines = [
        f"batch {status.batch_id}: {headline(status)}",
        f"  progress  {progress_line(status)}",
        f"  tasks     {counts_line(status.counts)}",
        f"  usage     {tokens_line(status.usage, status.llm_calls)}",
    ]
    if status.started_at is not None:
        elapsed = (now - status.started_at).total_seconds()
        started = status.started_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
        lines.append(f"  started   {started} ({duration(elapsed)} ago)")
    if status.run_number > 1:
        lines.append(f"  history   run {status.run_number} (continued as new)")
    if status.recent_errors:
        lines.append("  recent failures:")
        lines += [
            f"    {view.id}: {one_line(task_problem(view), ERROR_WIDTH)}"
            for view in status.recent_errors
        ]
    if status.counts.get(TaskStatus.REVIEW.value):
        lines += review_steps(status.batch_id)
    return lines


def answer_lines(answer: StatusAnswer, now: datetime) -> list[str]:
    """What `status` prints: the status and, when no worker gave it, how old it is and why."""
    lines = status_lines(answer.status, now)
    if not answer.live:
        lines.insert(1, f"  {not_live_note(answer, now)}")
        lines += [
            f"  {name:<9} {text}"
            for name, text in (("worker", answer.why), ("store", answer.store_problem))
            if text
        ]
    return lines


def not_live_note(answer: StatusAnswer, now: datetime) -> str:
    """`(no worker answered: as of 12s ago; counts from the task store)`"""
    if answer.as_of is None:
        when, counts = "the batch has published nothing yet", "no counts"
    else:
        when = f"as of {duration(max((now - answer.as_of).total_seconds(), 0.0))} ago"
        counts = "counts as published"
    if answer.counts_from_store:
        counts = "counts from the task store"
    return f"(no worker answered: {when}; {counts})"


def review_steps(batch_id: str) -> list[str]:
    """How to see and decide the results that wait for review."""
    return [
        f"  see them:   {command('results', batch_id, '--status', 'review')}",
        f"  approve:    {command('approve', batch_id, '--task', 'ID', '...')}  (or --all)",
        f"  send back:  {command('reject', batch_id, '--task', 'ID', '--feedback', 'TEXT')}",
    ]


def outcome_lines(result: BatchResult, failures: Sequence[TaskView]) -> list[str]:
    """The summary after a batch has ended."""
    lines = [
        f"batch {result.batch_id} {result.state.value}: {result.total} tasks, "
        f"{counts_line(result.counts)}",
        f"  {tokens_line(result.usage)}",
    ]
    if failures:
        lines.append("  failed tasks:")
        lines += [f"    {v.id}: {one_line(task_problem(v), ERROR_WIDTH)}" for v in failures]
        more = result.counts.get(TaskStatus.FAILED.value, 0) - len(failures)
        if more > 0:
            lines.append(
                f"    and {more} more: {command('tasks', result.batch_id)} --status failed"
            )
    lines.append(f"  results: {command('results', result.batch_id)}")
    return lines


def status_text(status: TaskStatus) -> Text:
    return Text(status.value, style=STATE_STYLES.get(status, ""))


def tasks_table(views: Iterable[TaskView]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("id", "status", "kind", "attempts", "tokens", "duration"):
        table.add_column(name, no_wrap=True)
    table.add_column("error / reason", overflow="fold")
    for view in views:
        elapsed = (
            (view.completed_at - view.started_at).total_seconds()
            if view.started_at and view.completed_at
            else None
        )
        table.add_row(
            view.id,
            status_text(view.status),
            view.kind,
            str(view.attempts),
            f"{view.usage.total_tokens:,}",
            duration(elapsed),
            one_line(task_problem(view), ERROR_WIDTH),
        )
    return table


def results_table(records: Iterable[TaskRecord]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("id", "status"):
        table.add_column(name, no_wrap=True)
    table.add_column("result", overflow="fold")
    table.add_column("error", overflow="fold")
    for name in ("attempts", "tokens", "duration"):
        table.add_column(name, no_wrap=True, justify="right")
    for record in records:
        error = f"{record.error.code}: {record.error.message}" if record.error else ""
        table.add_row(
            record.task_id,
            status_text(record.status),
            one_line(result_text(record.result), RESULT_WIDTH),
            one_line(error, ERROR_WIDTH),
            str(record.attempt),
            f"{record.usage.total_tokens:,}",
            duration(record.duration_seconds),
        )
    return table


def listing_row(batch: BatchListing) -> dict[str, Any]:
    return {
        "batch_id": batch.batch_id,
        "state": batch.state,
        "progress": batch.progress,
        "run_started_at": batch.run_started_at.isoformat(),
        "closed_at": batch.closed_at.isoformat() if batch.closed_at else None,
    }


def batches_table(listed: Iterable[BatchListing]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("batch", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("progress", no_wrap=True, justify="right")
    table.add_column("run started (UTC)", no_wrap=True)
    table.add_column("ended (UTC)", no_wrap=True)
    for batch in listed:
        table.add_row(
            batch.batch_id,
            batch.state,
            "" if batch.progress is None else f"{batch.progress}%",
            _clock(batch.run_started_at),
            _clock(batch.closed_at) if batch.closed_at else "",
        )
    return table


def task_lines(record: TaskRecord) -> list[str]:
    """One task's record, for people: what it is, how it ended, what it cost."""
    named = f" ({record.label})" if record.label != record.task_id else ""
    lines = [
        f"{record.task_id}{named} · {record.status.value} · {record.kind} · "
        f"priority {record.priority.value}",
        f"  attempt {record.attempt} · retries {record.retry_count} · "
        f"{tokens_line(record.usage, record.llm_calls)}",
    ]
    times = [
        f"{name} {_clock(at)}"
        for name, at in (
            ("created", record.created_at),
            ("started", record.started_at),
            ("completed", record.completed_at),
        )
        if at is not None
    ]
    took = duration(record.duration_seconds)
    lines.append("  " + " · ".join(times + ([f"took {took}"] if took else [])))
    if record.progress.percent and not record.status.is_terminal:
        step = f" ({record.progress.step})" if record.progress.step else ""
        lines.append(f"  progress {record.progress.percent:g}%{step}")
    if record.error is not None:
        lines.append(f"  error: {record.error.code}: {record.error.message}")
    if record.result is not None:
        lines.append(f"  result: {result_text(record.result)}")
    lines.append(f"  input: {one_line(result_text(record.input), INPUT_SHOWN)}")
    return lines


def events_table(events: Iterable[TaskEvent]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("at (UTC)", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("message", overflow="fold")
    for event in events:
        table.add_row(_clock(event.at), event.type.value, event.message or "")
    return table


def _clock(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def result_text(result: object) -> str:
    if result is None:
        return ""
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False)


# --- following a batch ----------------------------------------------------------------------------


def pace_text(snapshot: Snapshot) -> str:
    parts = []
    if snapshot.rate is not None:
        parts.append(f"{snapshot.rate:.2f} tasks/s")
    if snapshot.eta_seconds is not None and snapshot.eta_seconds > 0:
        parts.append(f"ETA {duration(snapshot.eta_seconds)}")
    return " · ".join(parts)


def plain_line(snapshot: Snapshot) -> str:
    """One line per change, for logs: time, state, progress, counts, load and pace."""
    status = snapshot.status
    if status is None:
        return f"{snapshot.at:%H:%M:%S} {snapshot.batch_id}: {snapshot.problem}"
    done = finished_count(status.counts)
    parts = [
        f"{snapshot.at:%H:%M:%S} {status.batch_id} {headline(status)}",
        f"{done}/{status.total} ({status.progress_percent:.1f}%)",
        counts_line(status.counts),
        f"{status.in_flight}/{status.concurrency} running",
    ]
    if snapshot.answer is not None and not snapshot.answer.live:
        parts.append(not_live_note(snapshot.answer, snapshot.at))
    pace = pace_text(snapshot)
    return " · ".join([*parts, pace] if pace else parts)


def _banner(status: BatchStatus) -> Text:
    if status.state is BatchState.PAUSED:
        return Text(f" PAUSED {status.pause_reason or ''} ", style="bold black on yellow")
    if status.state is BatchState.CANCELLED:
        reason = status.cancel_reason or "by request"
        return Text(f" CANCELLED: {reason} ", style="bold white on red")
    if status.state is BatchState.AWAITING_REVIEW:
        return Text(f" {headline(status).upper()} ", style="bold black on cyan")
    style = {BatchState.COMPLETED: "bold green", BatchState.FAILED: "bold red"}
    return Text(status.state.value.upper(), style=style.get(status.state, "bold cyan"))


def live_frame(snapshot: Snapshot) -> RenderableType:
    """The panel `watch` redraws on a terminal."""
    status = snapshot.status
    title = Text.assemble(("batch ", "dim"), (snapshot.batch_id, "bold"))
    if status is None:
        body = Text(f"waiting for an answer: {snapshot.problem}", style="yellow")
        return Panel(body, title=title, title_align="left")
    done = finished_count(status.counts)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(status.total, 1), completed=done, width=40),
        Text(f"{done}/{status.total}", style="bold"),
        f"{status.progress_percent:.0f}%",
        Text(pace_text(snapshot), style="dim"),
    )
    counts = Text()
    for state in STATE_ORDER:
        count = status.counts.get(state.value, 0)
        if count:
            if counts:
                counts.append(" · ")
            counts.append(f"{state.value} {count}", style=STATE_STYLES.get(state, ""))
    parts: list[RenderableType] = [_banner(status)]
    if snapshot.answer is not None and not snapshot.answer.live:
        parts.append(Text(not_live_note(snapshot.answer, snapshot.at), style="yellow"))
    parts += [
        bar,
        counts or Text("no tasks"),
        Text(
            f"{status.in_flight} running of at most {status.concurrency} · "
            f"{tokens_line(status.usage, status.llm_calls)}",
            style="dim",
        ),
    ]
    if snapshot.running:
        parts.append(_running_table(snapshot))
    if status.recent_errors:
        failures = Table(box=None, show_header=False, pad_edge=False, title_justify="left")
        failures.add_column(style="red", no_wrap=True)
        failures.add_column(overflow="fold")
        for view in status.recent_errors:
            failures.add_row(view.id, one_line(task_problem(view), ERROR_WIDTH))
        parts += [Text("recent failures", style="bold"), failures]
    if snapshot.problem:
        parts.append(Text(snapshot.problem, style="yellow"))
    parts.append(Text("Ctrl-C stops watching; the batch keeps running.", style="dim"))
    return Panel(Group(*parts), title=title, title_align="left")


def _running_table(snapshot: Snapshot) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
    table.add_column("running", no_wrap=True)
    table.add_column("step", overflow="ellipsis")
    table.add_column("%", justify="right", no_wrap=True)
    table.add_column("for", justify="right", no_wrap=True)
    for task in snapshot.running:
        progress = task.progress
        elapsed = (
            (snapshot.at - task.started_at).total_seconds() if task.started_at is not None else None
        )
        table.add_row(
            task.id if task.label == task.id else f"{task.id} ({one_line(task.label, 30)})",
            progress.step or "" if progress else "",
            f"{progress.percent:.0f}" if progress else "",
            duration(elapsed),
        )
    return table

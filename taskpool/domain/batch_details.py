"""The Markdown a batch shows as its current details in the Temporal UI."""

from __future__ import annotations

from datetime import datetime

from taskpool.domain.batch import BatchState, BatchStatus
from taskpool.domain.tasks import TaskStatus

_SHOWN = (
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
    TaskStatus.ASSIGNED,
    TaskStatus.IN_PROGRESS,
    TaskStatus.QUEUED,
    TaskStatus.BLOCKED,
    TaskStatus.SCHEDULED,
)


def batch_details(status: BatchStatus, now: datetime) -> str:
    lines = [f"**{_headline(status)}**", ""]
    done = sum(status.counts.get(s.value, 0) for s in (TaskStatus.COMPLETED, TaskStatus.FAILED))
    lines.append(
        f"{status.progress_percent:.1f}% done · {done}/{status.total} tasks · "
        f"{status.in_flight}/{status.concurrency} running"
    )
    if status.started_at is not None:
        elapsed = max((now - status.started_at).total_seconds(), 1e-9)
        lines.append(f"throughput {done / elapsed:.2f} tasks/s over {_duration(elapsed)}")
    lines.append(
        f"tokens {status.usage.total_tokens:,} ({status.usage.prompt_tokens:,} in, "
        f"{status.usage.completion_tokens:,} out) · {status.llm_calls:,} LLM calls"
    )
    lines += ["", "| state | tasks |", "|---|---|"]
    lines += [f"| {s.value} | {status.counts.get(s.value, 0)} |" for s in _SHOWN]
    if in_review := status.counts.get(TaskStatus.REVIEW.value, 0):
        lines.append(f"| review | {in_review} |")
    for error in status.recent_errors:
        message = error.error.message if error.error else (error.status_reason or "")
        lines.append(f"- failed **{error.id}**: {message[:200]}")
    return "\n".join(lines)


def _headline(status: BatchStatus) -> str:
    if status.state is BatchState.PAUSED:
        reason = f": {status.pause_reason}" if status.pause_reason else ""
        return f"PAUSED{reason}"
    if status.state is BatchState.CANCELLED:
        return f"CANCELLED: {status.cancel_reason or 'by request'}"
    if status.state is BatchState.AWAITING_REVIEW:
        return "AWAITING REVIEW: results to approve or send back"
    return status.state.value.upper()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"

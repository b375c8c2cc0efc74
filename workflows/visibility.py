"""What people see of a batch: its status (the `status` query, and the state it is in), and, without
querying it, the Markdown of its current details, its search attributes in the Temporal UI and the
status it publishes in its memo (what `status` shows when no worker answers).

Deterministic: the workflow passes Temporal's calls (the defaults), tests pass fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate

with workflow.unsafe.imports_passed_through():
    from taskpool.domain import names
    from taskpool.domain.batch import BatchRun, BatchState, BatchStatus
    from taskpool.domain.batch_details import batch_details
    from taskpool.domain.published import PublishedStatus
    from taskpool.domain.scheduling import TaskTable
    from taskpool.domain.tasks import TaskStatus

# The TaskpoolProgress search attribute moves in steps of this many percent.
PROGRESS_STEP = 5


def batch_status(
    batch_id: str, run: BatchRun, table: TaskTable, *, starting: int, pause_delivered: bool
) -> BatchStatus:
    """The batch's `status` query: its run's controls, its table's figures, and what its child
    fleet reports (child starts under way, whether the children have heard the pause state)."""
    total = len(table)
    return BatchStatus(
        batch_id=batch_id,
        state=batch_state(
            table, cancelling=run.cancel_reason is not None, paused=run.paused, starting=starting
        ),
        total=total,
        counts=table.counts.as_map(),
        concurrency=run.options.concurrency,
        in_flight=table.in_flight,
        progress_percent=round(100.0 * table.counts.finished / total, 2) if total else 100.0,
        paused=run.paused,
        pause_reason=run.pause_reason,
        pause_delivered=pause_delivered,
        cancel_reason=run.cancel_reason,
        usage=table.usage,
        llm_calls=table.llm_calls,
        started_at=run.started_at,
        run_number=run.run_number,
        recent_errors=table.recent_failure_views(),
    )


def batch_state(table: TaskTable, *, cancelling: bool, paused: bool, starting: int) -> BatchState:
    """Where the batch stands, given its table, its controls and the child starts under way."""
    if cancelling:
        return BatchState.CANCELLED
    if paused:
        return BatchState.PAUSED
    if starting or table.counts.can_progress():
        return BatchState.RUNNING
    if table.counts[TaskStatus.REVIEW]:
        return BatchState.AWAITING_REVIEW
    return BatchState.FAILED if table.counts[TaskStatus.FAILED] else BatchState.COMPLETED


class Visibility:
    def __init__(
        self,
        *,
        set_details: Callable[[str], None] = workflow.set_current_details,
        upsert: Callable[[Sequence[SearchAttributeUpdate[Any]]], None] = (
            workflow.upsert_search_attributes
        ),
        upsert_memo: Callable[[Mapping[str, Any]], None] = workflow.upsert_memo,
    ) -> None:
        self._set_details = set_details
        self._upsert = upsert
        self._upsert_memo = upsert_memo
        self._shown: tuple[str, int] | None = None
        self._published: tuple[object, ...] | None = None

    def refresh(self, status: BatchStatus, now: datetime) -> None:
        self._set_details(batch_details(status, now))
        # Each change is an event and a visibility write on the server; the list view needs no
        # finer steps (the details carry the exact figure).
        progress = int(status.progress_percent) // PROGRESS_STEP * PROGRESS_STEP
        shown = (status.state.value, progress)
        if shown != self._shown:
            self._shown = shown
            self._upsert(
                [
                    names.BATCH_STATE_ATTRIBUTE.value_set(shown[0]),
                    names.BATCH_PROGRESS_ATTRIBUTE.value_set(shown[1]),
                ]
            )
        # The memo moves with the search attributes, and with the controls people set (a new
        # pause reason or concurrency changes neither attribute): its counts may lag a step,
        # which readers fill in from the task store.
        published = (*shown, status.pause_reason, status.cancel_reason, status.concurrency)
        if published != self._published:
            self._published = published
            self._upsert_memo(PublishedStatus.of(status, now).memo())

"""Listing batches from Temporal's visibility store, which follows a batch's changes a moment
late."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from taskpool.client.errors import TemporalError
from taskpool.domain import names
from taskpool.domain.batch import BatchState
from taskpool.infra.temporal_connection import status_text


@dataclass(frozen=True)
class BatchListing:
    """A batch as Temporal's visibility store lists it."""

    batch_id: str
    # The batch's own state while it runs or once it ended; how its workflow closed when the
    # batch could not say (terminated, timed out).
    state: str
    progress: int | None
    # The current run's start: a batch that continued as new started earlier.
    run_started_at: datetime
    closed_at: datetime | None


async def list_batches(
    client: Client, *, state: BatchState | None = None, limit: int = 50
) -> list[BatchListing]:
    """Batches, newest run first. A batch that continued as new is listed once, by its current
    or last run. TemporalError when Temporal cannot list them."""
    query = f"WorkflowType = '{names.BATCH_WORKFLOW}' AND ExecutionStatus != 'ContinuedAsNew'"
    if state is not None:
        query += f" AND {names.BATCH_STATE_ATTRIBUTE.name} = '{state.value}'"
        if state in (BatchState.RUNNING, BatchState.PAUSED):
            query += " AND ExecutionStatus = 'Running'"
    listed: list[BatchListing] = []
    try:
        async for execution in client.list_workflows(query, limit=limit):
            attributes = execution.typed_search_attributes
            # The batch keeps the attribute current while it runs and sets it as it ends; a run
            # ended from outside (terminated, timed out) leaves it as it was.
            own_state = attributes.get(names.BATCH_STATE_ATTRIBUTE)
            batch_said = execution.status in (
                WorkflowExecutionStatus.RUNNING,
                WorkflowExecutionStatus.COMPLETED,
                WorkflowExecutionStatus.CANCELED,
            )
            listed.append(
                BatchListing(
                    batch_id=execution.id,
                    state=own_state if own_state and batch_said else status_text(execution.status),
                    progress=attributes.get(names.BATCH_PROGRESS_ATTRIBUTE),
                    run_started_at=execution.start_time,
                    closed_at=execution.close_time,
                )
            )
    except RPCError as err:
        raise TemporalError(f"Temporal could not list batches: {err.message}") from None
    return listed

"""A batch as Temporal describes it, which every client operation on one batch starts from."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import WorkflowExecutionStatus

from taskpool.infra.temporal_connection import status_text


@dataclass(frozen=True)
class BatchInfo:
    """Enough to word errors (the task queue its workers poll) and to know if it still runs."""

    batch_id: str
    task_queue: str
    status: WorkflowExecutionStatus | None

    @property
    def closed(self) -> bool:
        return self.status is not WorkflowExecutionStatus.RUNNING

    @property
    def ended_as(self) -> str:
        return status_text(self.status)

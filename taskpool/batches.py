"""Client-side operations on batches, shared by starter.py, the demo, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.client import Client, WorkflowHandle

from taskpool import names
from taskpool.models import (
    BatchOptions,
    BatchResult,
    BatchRun,
    BatchStatus,
    CancelRequest,
    PauseRequest,
    ResumeRequest,
    TaskEntry,
    TaskSpec,
)


async def start_batch(
    client: Client,
    batch_id: str,
    tasks: Sequence[TaskSpec],
    *,
    task_queue: str,
    options: BatchOptions | None = None,
) -> WorkflowHandle[object, BatchResult]:
    run = BatchRun(tasks=[TaskEntry(spec=spec) for spec in tasks], options=options or BatchOptions())
    return await client.start_workflow(
        names.BATCH_WORKFLOW,
        run,
        id=batch_id,
        task_queue=task_queue,
        result_type=BatchResult,
        static_summary=f"taskpool batch of {len(tasks)} tasks",
    )


def batch_handle(client: Client, batch_id: str) -> WorkflowHandle[object, BatchResult]:
    return client.get_workflow_handle(batch_id, result_type=BatchResult)


async def batch_status(client: Client, batch_id: str) -> BatchStatus:
    return await batch_handle(client, batch_id).query(names.STATUS, result_type=BatchStatus)


async def pause_batch(client: Client, batch_id: str, reason: str | None = None) -> None:
    await batch_handle(client, batch_id).signal(names.PAUSE, PauseRequest(reason=reason))


async def resume_batch(client: Client, batch_id: str) -> None:
    await batch_handle(client, batch_id).signal(names.RESUME, ResumeRequest())


async def cancel_batch(client: Client, batch_id: str, reason: str | None = None) -> None:
    await batch_handle(client, batch_id).signal(names.CANCEL, CancelRequest(reason=reason))

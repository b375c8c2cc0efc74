"""Starting a batch from loaded tasks: checked and packed first, definitions written to the task
store, then the batch workflow started under an id no batch has used."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from taskpool.client import batches
from taskpool.client.errors import BatchExistsError, InvalidRequestError, TemporalError
from taskpool.client.info import BatchInfo
from taskpool.client.records import store_at
from taskpool.domain.batch import BatchResult
from taskpool.domain.tasks import Priority, TaskSpec

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_BATCH_ID_CHARS = 200


def default_batch_id(source: Path) -> str:
    """`<file or directory name>-<6 hex digits>`, readable in the UI and unlikely to collide."""
    stem = _UNSAFE_ID_CHARS.sub("-", source.resolve().stem).strip("-.")[:60] or "batch"
    return f"{stem}-{secrets.token_hex(3)}"


def with_default_priority(specs: Sequence[TaskSpec], priority: Priority) -> list[TaskSpec]:
    """Tasks whose file line set no priority get `priority`; the others keep their own."""
    return [
        spec
        if "priority" in spec.model_fields_set
        else spec.model_copy(update={"priority": priority})
        for spec in specs
    ]


def check_batch_id(batch_id: str) -> None:
    """InvalidRequestError unless `batch_id` can name a batch."""
    if not batch_id or batch_id != batch_id.strip() or any(ch.isspace() for ch in batch_id):
        raise InvalidRequestError(
            f"bad batch id {batch_id!r}: it must be non-empty, without spaces"
        )
    if len(batch_id) > MAX_BATCH_ID_CHARS:
        raise InvalidRequestError(f"bad batch id: at most {MAX_BATCH_ID_CHARS} characters")


@dataclass(frozen=True)
class StartedBatch:
    batch_id: str
    total: int
    task_queue: str
    handle: WorkflowHandle[object, BatchResult]

    @property
    def info(self) -> BatchInfo:
        return BatchInfo(self.batch_id, self.task_queue, WorkflowExecutionStatus.RUNNING)


async def start_new_batch(
    client: Client,
    batch_id: str,
    batch: batches.PreparedBatch,
    *,
    task_queue: str,
    store_url: str,
    on_progress: Callable[[int], None] | None = None,
) -> StartedBatch:
    """Write the prepared batch's definitions to the task store at `store_url` (the workers'),
    then start its workflow on `task_queue`. `on_progress` hears how many definitions are in the
    store as they are written.

    BatchExistsError when a batch, running or finished, already has the id: a reused id would
    share child workflow ids and store records with the old batch. StoreUnavailableError when
    the store cannot be written, TemporalError when Temporal does not start the batch.
    """
    check_batch_id(batch_id)
    await _refuse_existing_batch(client, batch_id)
    async with store_at(store_url, "write to") as store:
        try:
            handle = await batches.start_prepared(
                client,
                batch_id,
                batch,
                task_queue=task_queue,
                store=store,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                on_progress=on_progress,
            )
        except WorkflowAlreadyStartedError:
            raise BatchExistsError(batch_id) from None
        except RPCError as err:
            raise TemporalError(f"Temporal did not start batch {batch_id}: {err.message}") from None
    return StartedBatch(batch_id, len(batch.tasks), task_queue, handle)


async def _refuse_existing_batch(client: Client, batch_id: str) -> None:
    """Checked before the definitions go to the store, so a clash cannot mix them into the
    existing batch's records. (Starting still refuses a duplicate id should one appear
    meanwhile.)"""
    try:
        await client.get_workflow_handle(batch_id).describe()
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            return
        raise TemporalError(
            f"Temporal did not answer about batch {batch_id}: {err.message}"
        ) from None
    raise BatchExistsError(batch_id)

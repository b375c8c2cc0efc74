"""Starting a batch from loaded tasks: checked and packed first, definitions written to the task
store, then the batch workflow started.

A start is idempotent under its batch id. The store keeps a record of each batch a start wrote
(taskpool.client.fingerprint: the fingerprint of its tasks and options), claimed before any
definition is written. A second start of the same batch finds it and changes nothing, or starts
it when the first start wrote the definitions and died before the workflow started; a start with
other tasks or options is refused with the first difference, and never touches the definitions
of a batch that was started.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import JsonValue
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from taskpool.client import batches
from taskpool.client.errors import (
    BatchExistsError,
    InvalidRequestError,
    NotABatchError,
    RequestError,
    TemporalError,
)
from taskpool.client.fingerprint import (
    BatchIdentity,
    identify,
    options_difference,
    tasks_difference,
)
from taskpool.client.info import BatchInfo
from taskpool.client.records import store_at
from taskpool.domain import names
from taskpool.domain.batch import BatchResult
from taskpool.domain.tasks import Priority, TaskSpec
from taskpool.infra.store import TaskStore
from taskpool.infra.store.batch_records import BatchRecord

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


class BatchDiffersError(BatchExistsError):
    """A batch of that id exists with other tasks or options."""

    def __init__(self, batch_id: str, difference: str) -> None:
        RequestError.__init__(self, f"batch {batch_id} exists with other {difference}")
        self.batch_id = batch_id
        self.difference = difference


class BatchIdTakenError(BatchExistsError):
    """The id belongs to something a start cannot take over: a batch no start recorded, tasks
    without a record, a batch Temporal no longer keeps, a claim another start took."""

    def __init__(self, batch_id: str, why: str) -> None:
        RequestError.__init__(self, f"batch {batch_id} {why}")
        self.batch_id = batch_id


# How a start went: a new batch; definitions an earlier start wrote and never started, started
# now; such definitions of other tasks or options, replaced and started; the same batch, there
# already (running or finished), left as it was.
StartKind = Literal["new", "unstarted", "replaced", "existing"]


@dataclass(frozen=True)
class StartedBatch:
    batch_id: str
    total: int
    task_queue: str
    handle: WorkflowHandle[object, BatchResult]
    how: StartKind = "new"
    status: WorkflowExecutionStatus | None = WorkflowExecutionStatus.RUNNING
    # What the replaced definitions differed in.
    replaced: str | None = None

    @property
    def info(self) -> BatchInfo:
        return BatchInfo(self.batch_id, self.task_queue, self.status)


async def start_new_batch(
    client: Client,
    batch_id: str,
    batch: batches.PreparedBatch,
    *,
    task_queue: str,
    store_url: str,
    on_progress: Callable[[int], None] | None = None,
) -> StartedBatch:
    """start_batch_once for a batch that must be new: BatchExistsError when a batch, running or
    finished, already has the id (BatchDiffersError when it has other tasks or options)."""
    started = await start_batch_once(
        client,
        batch_id,
        batch,
        task_queue=task_queue,
        store_url=store_url,
        on_progress=on_progress,
    )
    if started.how == "existing":
        raise BatchExistsError(batch_id)
    return started


async def start_batch_once(
    client: Client,
    batch_id: str,
    batch: batches.PreparedBatch,
    *,
    task_queue: str,
    store_url: str,
    defaults: Mapping[str, JsonValue] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> StartedBatch:
    """Start the prepared batch under `batch_id` unless it is there already: its definitions go
    to the task store at `store_url` (the workers'), then its workflow starts on `task_queue`.
    `defaults` are options a starter applied to the tasks (see fingerprint.identify);
    `on_progress` hears how many definitions are in the store as they are written.

    Idempotent: the same tasks and options under an id that has them come back as `existing`
    (with the workflow's status), and definitions an earlier start wrote without starting the
    batch are started. BatchDiffersError when the id has other tasks or options;
    BatchIdTakenError when the id is taken otherwise (a batch no start
    recorded, one Temporal no longer keeps). StoreUnavailableError when
    the store cannot be written, TemporalError when Temporal does not answer or start it.
    """
    check_batch_id(batch_id)
    ours = identify(batch.tasks, batch.run.options, task_queue=task_queue, defaults=defaults)
    status = await _workflow_status(client, batch_id)
    async with store_at(store_url, "write to") as store:
        if status is not None:
            await _same_as_existing(store, batch_id, ours, batch.tasks)
            return _existing(client, batch_id, batch, task_queue, status)
        how, replaced = await _claim(store, batch_id, ours, batch.tasks)
        await batches.register_definitions(
            store, batch_id, batch.tasks, batch.first_status, batch.at, on_progress=on_progress
        )
        # Another start may have replaced this claim meanwhile: its definitions are the ones.
        await _still_ours(store, batch_id, ours)
        try:
            handle = await _start_workflow(client, batch_id, batch, task_queue)
        except WorkflowAlreadyStartedError:
            # The same batch, started by a start running at the same time.
            await store.mark_batch_started(batch_id, datetime.now(UTC))
            status = await _workflow_status(client, batch_id)
            return _existing(client, batch_id, batch, task_queue, status)
        await store.mark_batch_started(batch_id, datetime.now(UTC))
    return StartedBatch(batch_id, len(batch.tasks), task_queue, handle, how, replaced=replaced)


async def write_definitions(
    store: TaskStore,
    batch_id: str,
    batch: batches.PreparedBatch,
    *,
    task_queue: str,
    defaults: Mapping[str, JsonValue] | None = None,
) -> None:
    """The first half of a start, without the workflow: the batch's record, then its
    definitions; a start that dies after it leaves this. start_batch_once with the same
    arguments finds them and starts the batch."""
    ours = identify(batch.tasks, batch.run.options, task_queue=task_queue, defaults=defaults)
    await store.claim_batch(ours.record(batch_id))
    await batches.register_definitions(store, batch_id, batch.tasks, batch.first_status, batch.at)


async def _workflow_status(client: Client, batch_id: str) -> WorkflowExecutionStatus | None:
    """The status of the batch's workflow; None when there is none. Checked before anything goes
    to the store, so an existing batch's definitions are never touched."""
    try:
        description = await client.get_workflow_handle(batch_id).describe()
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            return None
        raise TemporalError(
            f"Temporal did not answer about batch {batch_id}: {err.message}"
        ) from None
    if description.workflow_type != names.BATCH_WORKFLOW:
        raise NotABatchError(batch_id, description.workflow_type)
    return description.status


async def _same_as_existing(
    store: TaskStore, batch_id: str, ours: BatchIdentity, tasks: Sequence[TaskSpec]
) -> None:
    stored = await store.batch_record(batch_id)
    if stored is None:
        raise BatchIdTakenError(
            batch_id,
            "exists and the task store has no record of what it was started with, so it "
            "cannot be compared (was it started by another program, or with another store?)",
        )
    await _refuse_other(store, stored, ours, tasks)
    if stored.started_at is None:
        # The earlier start died between starting the workflow and noting it.
        await store.mark_batch_started(batch_id, datetime.now(UTC))


async def _claim(
    store: TaskStore, batch_id: str, ours: BatchIdentity, tasks: Sequence[TaskSpec]
) -> tuple[StartKind, str | None]:
    """Claim the batch's record in the store before any definition is written."""
    if await store.batch_record(batch_id) is None and await store.has_batch(batch_id):
        raise BatchIdTakenError(
            batch_id,
            "has tasks in the task store that no start recorded, and no workflow: they are "
            "left as they are",
        )
    mine = ours.record(batch_id)
    stored = await store.claim_batch(mine)
    if stored.started_at is not None:
        raise BatchIdTakenError(
            batch_id,
            f"was started at {stored.started_at:%Y-%m-%d %H:%M:%S} UTC and Temporal no longer "
            "keeps it (its retention has passed); its records stay in the task store",
        )
    if stored.fingerprint == ours.fingerprint:
        return ("new" if stored.created_at == mine.created_at else "unstarted"), None
    # Definitions that an earlier start wrote and never started: nothing ran them.
    replaced = await _difference(store, stored, ours, tasks)
    claimed = await store.claim_batch(ours.record(batch_id), replacing=stored.fingerprint)
    if claimed.fingerprint != ours.fingerprint:
        await _refuse_other(store, claimed, ours, tasks)
    return "replaced", replaced


async def _still_ours(store: TaskStore, batch_id: str, ours: BatchIdentity) -> None:
    stored = await store.batch_record(batch_id)
    if stored is None or stored.fingerprint != ours.fingerprint:
        raise BatchIdTakenError(
            batch_id,
            "was claimed by another start with other tasks or options while this one wrote "
            "its definitions",
        )


async def _refuse_other(
    store: TaskStore, stored: BatchRecord, ours: BatchIdentity, tasks: Sequence[TaskSpec]
) -> None:
    difference = await _difference(store, stored, ours, tasks)
    if difference is not None:
        raise BatchDiffersError(stored.batch_id, difference)


async def _difference(
    store: TaskStore, stored: BatchRecord, ours: BatchIdentity, tasks: Sequence[TaskSpec]
) -> str | None:
    if stored.fingerprint == ours.fingerprint:
        return None
    options = options_difference(stored.options, ours.options)
    if options is not None:
        return f"options: {options}"
    return f"tasks: {await tasks_difference(store, stored, ours, tasks)}"


def _existing(
    client: Client,
    batch_id: str,
    batch: batches.PreparedBatch,
    task_queue: str,
    status: WorkflowExecutionStatus | None,
) -> StartedBatch:
    handle = batches.batch_handle(client, batch_id)
    return StartedBatch(batch_id, len(batch.tasks), task_queue, handle, "existing", status)


async def _start_workflow(
    client: Client, batch_id: str, batch: batches.PreparedBatch, task_queue: str
) -> WorkflowHandle[object, BatchResult]:
    try:
        return await client.start_workflow(
            names.BATCH_WORKFLOW,
            batch.run,
            id=batch_id,
            task_queue=task_queue,
            result_type=BatchResult,
            # A finished batch's id is never reused: its children's ids and store records would
            # be shared.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=f"taskpool batch of {len(batch.tasks)} tasks",
        )
    except RPCError as err:
        raise TemporalError(f"Temporal did not start batch {batch_id}: {err.message}") from None

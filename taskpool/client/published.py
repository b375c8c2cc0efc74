"""A batch's status when no worker answers its query (right after a worker died, or before any
worker ran): built from what the batch last published where no worker is needed (its memo, else
its search attributes) and the task store's current counts, saying how old it is.

`reading.status_answer` asks the batch first and comes here only when no worker answers in time.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio.client import Client, WorkflowExecutionDescription, WorkflowHandle
from temporalio.service import RPCError

from taskpool.client.errors import StoreUnavailableError, rpc_error
from taskpool.client.info import BatchInfo
from taskpool.client.records import store_at, store_exists
from taskpool.domain import names
from taskpool.domain.batch import BatchRun, BatchState, BatchStatus
from taskpool.domain.published import STATUS_MEMO, PublishedStatus
from taskpool.domain.tasks import TaskStatus, TokenUsage
from taskpool.infra.store import display_url

# A status read must answer in about 2 s; a task store that takes longer is left out.
STORE_TIMEOUT_SECONDS = 1.0
_RUNNING = (TaskStatus.ASSIGNED.value, TaskStatus.IN_PROGRESS.value)


@dataclass(frozen=True)
class StatusAnswer:
    """A batch's status and where it comes from: the batch itself (`live`), or, when no worker
    answered (`why`), what the batch published at `as_of` (None: nothing yet) with the counts
    from the task store when it could be read (`store_problem` says why not)."""

    status: BatchStatus
    at: datetime
    live: bool = True
    why: str | None = None
    as_of: datetime | None = None
    counts_from_store: bool = False
    store_problem: str | None = None

    @property
    def counts_from(self) -> str:
        if self.live:
            return "batch"
        return "store" if self.counts_from_store else "published"

    def json_object(self) -> dict[str, Any]:
        """The status as `status --json` prints it: the BatchStatus fields, then `live`, `as_of`
        (when what it shows was true) and `counts_from` (batch, store or published)."""
        fields: dict[str, Any] = self.status.model_dump(mode="json")
        as_of = self.at if self.live else self.as_of
        fields.update(
            live=self.live,
            as_of=None if as_of is None else as_of.isoformat(),
            counts_from=self.counts_from,
        )
        return fields

    def json_line(self) -> str:
        return json.dumps(self.json_object(), ensure_ascii=False, separators=(",", ":"))


async def published_status(
    client: Client, info: BatchInfo, store_url: str | None, *, why: str, at: datetime
) -> StatusAnswer:
    """The batch's status from what it published and from the task store at `store_url` (None:
    the published counts only); `why` says why the batch itself did not answer."""
    handle = client.get_workflow_handle(info.batch_id)
    try:
        description = await handle.describe()
    except RPCError as err:
        raise rpc_error(err, info.batch_id, client) from None
    published = await _published(description)
    counts, store_problem = await _store_counts(store_url, info.batch_id)
    if published is not None and published.concurrency is not None:
        concurrency = published.concurrency
    else:
        # Nothing published yet: no worker has run the batch, whose options are in its input.
        concurrency = await _started_concurrency(client, handle)
    status = _status(info.batch_id, description, published, counts, concurrency)
    return StatusAnswer(
        status,
        at,
        live=False,
        why=why,
        as_of=None if published is None else published.at,
        counts_from_store=counts is not None,
        store_problem=store_problem,
    )


def _status(
    batch_id: str,
    description: WorkflowExecutionDescription,
    published: PublishedStatus | None,
    store_counts: dict[str, int] | None,
    concurrency: int,
) -> BatchStatus:
    counts = {status.value: 0 for status in TaskStatus}
    if store_counts is not None:
        counts.update(store_counts)
        in_flight = sum(store_counts.get(status, 0) for status in _RUNNING)
    elif published is not None:
        counts.update(published.counts)
        in_flight = published.in_flight
    else:
        in_flight = 0
    total = sum(counts.values())
    finished = sum(counts[status.value] for status in TaskStatus if status.is_terminal)
    return BatchStatus(
        batch_id=batch_id,
        state=_state(description, published),
        total=total,
        counts=counts,
        concurrency=concurrency,
        in_flight=in_flight,
        progress_percent=round(100.0 * finished / total, 2) if total else 100.0,
        paused=published.paused if published else False,
        pause_reason=published.pause_reason if published else None,
        cancel_reason=published.cancel_reason if published else None,
        usage=published.usage if published else TokenUsage(),
        llm_calls=published.llm_calls if published else 0,
        started_at=(published.started_at if published else None) or description.start_time,
        run_number=published.run_number if published else 1,
    )


def _state(
    description: WorkflowExecutionDescription, published: PublishedStatus | None
) -> BatchState:
    if published is not None:
        return published.state
    shown = description.typed_search_attributes.get(names.BATCH_STATE_ATTRIBUTE)
    if shown in set(BatchState):
        return BatchState(shown)
    # Nothing published: the batch has waited for a worker since it started.
    return BatchState.RUNNING


async def _published(description: WorkflowExecutionDescription) -> PublishedStatus | None:
    try:
        memo = await description.memo()
        return PublishedStatus.model_validate(memo[STATUS_MEMO]) if STATUS_MEMO in memo else None
    except Exception:  # a memo this version cannot read is as good as none
        return None


async def _store_counts(url: str | None, batch_id: str) -> tuple[dict[str, int] | None, str | None]:
    """The batch's counts per status in the store at `url`, or None and why not."""
    if url is None:
        return None, None
    shown = display_url(url)
    if not store_exists(url):
        return None, f"no task store at {shown}"
    try:
        async with asyncio.timeout(STORE_TIMEOUT_SECONDS), store_at(url, "read") as store:
            counts = await store.count_by_status(batch_id)
    except TimeoutError:
        return None, f"the task store at {shown} did not answer within {STORE_TIMEOUT_SECONDS:g} s"
    except StoreUnavailableError as err:
        return None, str(err)
    if not counts:
        return None, f"the task store at {shown} has no tasks of batch {batch_id}"
    return counts, None


async def _started_concurrency(client: Client, handle: WorkflowHandle[Any, Any]) -> int:
    """The concurrency the batch's current run started with (0 when it cannot be read)."""
    try:
        async for event in handle.fetch_history_events(page_size=1):
            started = event.workflow_execution_started_event_attributes
            runs = await client.data_converter.decode(started.input.payloads, [BatchRun])
            run = runs[0]
            return run.options.concurrency if isinstance(run, BatchRun) else 0
    except Exception:  # a figure to show, not worth failing the answer for
        return 0
    return 0

"""Rate limits hold across workers: two worker.py processes on one queue, one TASKPOOL_RPM and one
TASKPOOL_TPM between them, and no 60 s window at the model over either (docs/rate-limits.md).

Each test gives the batch more work than one limit lets through in a minute, and watches the model
for OBSERVE seconds: a rate can only be seen over time. Within that window, a limit kept per
process, or not at all, lets through about twice the limit or the whole batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from taskpool.domain import names
from taskpool.domain.batch import AgentSettings, BatchOptions
from taskpool.infra.ratelimit import WINDOW_SECONDS
from taskpool.infra.settings import Settings
from taskpool.testing.scripted import RequestRecord, ScriptedModelServer
from tests.support import (
    WorkerProcess,
    documents,
    eventually,
    start_test_batch,
    worker_environment,
)

OBSERVE = 25.0
WORKERS = 2


@dataclass(frozen=True)
class Busiest:
    requests: int
    tokens: int


def busiest_window(records: Sequence[RequestRecord]) -> Busiest:
    """The most requests, and the most tokens the model reported, arriving in any 60 s."""
    arrivals = sorted((r.received_at, sum(r.usage) if r.usage else 0) for r in records)
    requests = tokens = 0
    for start, _ in arrivals:
        inside = [used for at, used in arrivals if start <= at < start + WINDOW_SECONDS]
        requests = max(requests, len(inside))
        tokens = max(tokens, sum(inside))
    return Busiest(requests, tokens)


async def activity_pollers(client: Client, task_queue: str) -> set[str]:
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
    )
    return {poller.identity for poller in answer.pollers}


async def model_call_workers(client: Client, batch_id: str, task_ids: set[str]) -> set[str]:
    """The identities of the workers that ran the tasks' model calls, from the tasks' histories."""
    identities = set()
    for task_id in task_ids:
        handle = client.get_workflow_handle(names.task_workflow_id(batch_id, task_id, 1))
        async for event in handle.fetch_history_events():
            if event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                identities.add(event.activity_task_started_event_attributes.identity)
    return identities


async def run_two_workers(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    temporal_address: str,
    tmp_path: Path,
    batch_id: str,
    *,
    tasks: int,
    rpm: int,
    tpm: int,
) -> list[RequestRecord]:
    """Run a batch of `tasks` on two worker processes sharing the limits; the model's records."""
    env = worker_environment(settings, temporal_address) | {
        "TASKPOOL_RPM": str(rpm),
        "TASKPOOL_TPM": str(tpm),
        "TASKPOOL_TOKEN_BUDGET_DB": str(tmp_path / "token-budget.db"),
    }
    workers = [WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in range(WORKERS)]
    try:

        async def both_polling() -> None:
            assert len(await activity_pollers(client, settings.task_queue)) == WORKERS

        await eventually(both_polling, within=60)
        options = BatchOptions(concurrency=20, agent=AgentSettings(llm_heartbeat_seconds=2))
        handle = await start_test_batch(client, settings, batch_id, documents(tasks), options)

        async def first_call() -> float:
            assert scripted.requests
            return scripted.requests[0].received_at

        first = await eventually(first_call)
        await asyncio.sleep(first + OBSERVE - time.monotonic())
        try:
            await handle.terminate(reason="observed long enough")
        except RPCError as err:
            # A batch that ran out of work within the window broke a limit, which the checks
            # report; there is nothing left to stop.
            if err.status is not RPCStatusCode.NOT_FOUND:
                raise
    finally:
        for worker in workers:
            worker.stop()
    return list(scripted.requests)


async def assert_within_limits(
    client: Client,
    batch_id: str,
    records: list[RequestRecord],
    *,
    tasks: int,
    rpm: int,
    tpm: int,
) -> None:
    busiest = busiest_window(records)
    assert busiest.requests <= rpm, busiest
    assert busiest.tokens <= tpm, busiest
    # The limit held calls back (the whole batch would have run in seconds), but let some pass.
    assert 5 <= len(records) < tasks
    assert all(r.status == 200 for r in records if r.status is not None)
    called = {r.task_key.rsplit("/", 1)[-1] for r in records if r.task_key is not None}
    assert len(await model_call_workers(client, batch_id, called)) == WORKERS


async def test_two_workers_share_one_requests_per_minute_limit(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    temporal_address: str,
    tmp_path: Path,
    batch_id: str,
) -> None:
    # 60 RPM with room for every token: the request limit binds, about one call a second.
    limits = {"tasks": 80, "rpm": 60, "tpm": 100_000}
    records = await run_two_workers(
        client, settings, scripted, temporal_address, tmp_path, batch_id, **limits
    )
    await assert_within_limits(client, batch_id, records, **limits)


async def test_two_workers_share_one_tokens_per_minute_limit(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    temporal_address: str,
    tmp_path: Path,
    batch_id: str,
) -> None:
    # About 160 tokens a call (650 reserved until it settles) against 3,000 a minute: the token
    # budget binds after some 15 calls; the request limit would allow hundreds.
    limits = {"tasks": 40, "rpm": 600, "tpm": 3_000}
    records = await run_two_workers(
        client, settings, scripted, temporal_address, tmp_path, batch_id, **limits
    )
    await assert_within_limits(client, batch_id, records, **limits)

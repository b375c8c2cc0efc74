"""The batch's handlers are usable from the `temporal` CLI with plain JSON."""

from __future__ import annotations

import json
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from taskpool.client.batches import batch_status
from taskpool.domain.batch import BatchOptions, BatchState
from taskpool.infra.settings import Settings
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import (
    batch_with_a_failed_task,
    documents,
    eventually,
    start_test_batch,
    temporal,
    update,
)


async def query(address: str, batch_id: str, name: str, *args: str) -> Any:
    """The answer to one of the batch's queries, asked through the CLI with JSON output."""
    out = await temporal(
        address,
        "workflow",
        "query",
        "--workflow-id",
        batch_id,
        "--type",
        name,
        *args,
        "--output",
        "json",
    )
    return json.loads(out)["queryResult"][0]


async def test_cli_queries_status_and_pauses_and_resumes(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    temporal_address: str,
    batch_id: str,
) -> None:
    # The first two tasks' calls are held until the end: the other ten stay queued.
    scripted.hold_replies()
    handle = await start_test_batch(
        client, settings, batch_id, documents(12), BatchOptions(concurrency=2)
    )
    status = await query(temporal_address, batch_id, "status")
    assert status["batch_id"] == batch_id
    assert status["total"] == 12
    assert status["concurrency"] == 2
    assert set(status["counts"]) >= {"queued", "completed", "failed", "cancelled"}

    async def two_calls_held() -> None:
        assert scripted.in_flight == 2

    await eventually(two_calls_held)
    await temporal(
        temporal_address,
        "workflow",
        "signal",
        "--workflow-id",
        batch_id,
        "--name",
        "pause",
        "--input",
        json.dumps({"reason": "from the CLI"}),
    )

    async def paused() -> None:
        current = await batch_status(client, batch_id)
        assert current.state is BatchState.PAUSED
        assert current.pause_reason == "from the CLI"

    await eventually(paused)
    page = await query(
        temporal_address, batch_id, "tasks", "--input", json.dumps({"status": "queued", "limit": 3})
    )
    assert len(page["items"]) <= 3
    assert all(item["status"] == "queued" for item in page["items"])
    # The first three of the ten queued, in the batch's order.
    assert page["total"] == 10
    assert [item["id"] for item in page["items"]] == ["doc-2", "doc-3", "doc-4"]
    assert all(item["attempts"] == 0 for item in page["items"])
    scripted.release_replies()

    # resume takes no argument at all
    await temporal(
        temporal_address, "workflow", "signal", "--workflow-id", batch_id, "--name", "resume"
    )
    result = await handle.result()
    assert result.counts["completed"] == 12


async def test_cli_retries_a_failed_task_with_a_new_input(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    temporal_address: str,
    batch_id: str,
) -> None:
    handle = await batch_with_a_failed_task(client, settings, scripted, batch_id, hold_seconds=60)
    request = {"task_ids": ["bad"], "inputs": {"bad": "The corrected text."}}
    answer = await update(temporal_address, batch_id, "retry_tasks", request)
    # The answer is the batch's status, with the task queued again.
    assert (answer["batch_id"], answer["counts"]["failed"]) == (batch_id, 0)

    async def completed() -> None:
        assert (await batch_status(client, batch_id)).counts["completed"] == 1

    await eventually(completed)
    first, again = scripted.records_for("bad")
    assert "Garbled." in json.dumps(first.body)
    assert "The corrected text." in json.dumps(again.body)
    await handle.cancel()

"""Webhooks: a batch tells the workers' configured endpoint when its results wait for review and
when it has finished, in signed JSON, retried until the endpoint takes it, never in the way of the
batch itself."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookActivities,
    signature,
    verify_signature,
)
from taskpool.client import batches
from taskpool.client.batches import batch_status
from taskpool.domain import names
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchState, WebhookDelivery
from taskpool.domain.tasks import TaskSpec
from taskpool.infra.settings import Settings, SettingsError
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import (
    documents,
    eventually,
    result_in_time,
    running_worker,
    script_slow_task,
    start_test_batch,
)

SECRET = "a shared secret"  # noqa: S105 (the test's own)


# An answer in `Receiver.answers` that is no answer: the connection is closed without a response.
DROP = 0


@dataclass
class Receiver:
    """A webhook endpoint: answers with the statuses queued in `answers` (then 204), and keeps
    every request it was sent. It takes any path under its URL."""

    url: str = ""
    answers: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        answer = self.answers.pop(0) if self.answers else 204
        if answer == DROP and request.transport is not None:
            request.transport.close()
        # Not written after a DROP: the transport is closed, so aiohttp drops the response.
        return web.Response(status=answer or 204)

    def deliveries(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", endpoint.handle)
    app.router.add_post("/hooks/{token}", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    endpoint.url = f"http://127.0.0.1:{port}/hooks"
    try:
        yield endpoint
    finally:
        await runner.cleanup()


def delivery(event: str = "batch.finished") -> WebhookDelivery:
    return WebhookDelivery.model_validate(
        {
            "event": event,
            "delivery_id": "b#webhook-1",
            "batch_id": "b",
            "state": "completed",
            "total": 1,
            "counts": {"completed": 1},
            "at": "2026-11-23T12:00:00Z",
        }
    )


def test_a_signature_holds_only_for_its_body_and_a_recent_time() -> None:
    body = b'{"event": "batch.finished"}'
    now = time.time()
    stamp = str(int(now))
    header = signature(SECRET, stamp, body)
    assert header.startswith("sha256=")
    assert verify_signature(SECRET, stamp, body, header, now=now)
    assert not verify_signature(SECRET, stamp, body + b" ", header, now=now)
    assert not verify_signature("another secret", stamp, body, header, now=now)
    assert not verify_signature(SECRET, stamp, body, header, now=now + 301)
    assert not verify_signature(SECRET, "yesterday", body, header, now=now)


async def test_an_endpoints_answer_decides_whether_temporal_retries(receiver: Receiver) -> None:
    deliver = WebhookActivities(receiver.url, SECRET).deliver
    receiver.answers = [503, 400]
    with pytest.raises(ApplicationError) as unavailable:
        await ActivityEnvironment().run(deliver, delivery())
    assert not unavailable.value.non_retryable
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(deliver, delivery())
    assert refused.value.non_retryable
    assert "answered 400" in str(refused.value)
    assert await ActivityEnvironment().run(deliver, delivery()) is True

    headers, body = receiver.received[-1]
    assert headers[EVENT_HEADER] == "batch.finished"
    assert headers[DELIVERY_HEADER] == "b#webhook-1"
    assert verify_signature(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    # Without an endpoint there is nothing to do, and that is not an error.
    assert (
        await ActivityEnvironment().run(WebhookActivities(None, None).deliver, delivery()) is False
    )
    unsigned = WebhookActivities(receiver.url, None).deliver
    assert await ActivityEnvironment().run(unsigned, delivery()) is True
    assert SIGNATURE_HEADER not in receiver.received[-1][0]


async def test_a_batch_announces_its_review_and_its_end_and_a_failed_delivery_is_retried(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    receiver: Receiver,
    batch_id: str,
) -> None:
    configured = settings.model_copy(
        update={"webhook_url": SecretStr(receiver.url), "webhook_secret": SecretStr(SECRET)}
    )
    # The endpoint is down for the first attempt of the first delivery.
    receiver.answers = [502]
    options = BatchOptions(concurrency=2, agent=AgentSettings(review=True))
    async with running_worker(client, configured):
        handle = await start_test_batch(client, settings, batch_id, documents(3), options)

        async def announced(count: int) -> None:
            assert len(receiver.received) == count

        await eventually(lambda: announced(2))
        assert (await batch_status(client, batch_id)).state is BatchState.AWAITING_REVIEW
        await batches.review_tasks(client, batch_id, "approve", all_in_review=True)
        result = await result_in_time(handle)
        await eventually(lambda: announced(3))

    assert result.state is BatchState.COMPLETED
    for headers, body in receiver.received:
        assert verify_signature(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    review, review_again, finished = receiver.deliveries()
    # The retry is the same delivery: a receiver keys on its id to take it once.
    assert review == review_again
    assert review["event"] == "batch.awaiting_review"
    assert review["batch_id"] == batch_id
    assert review["state"] == "awaiting_review"
    assert review["counts"]["review"] == 3
    assert finished["event"] == "batch.finished"
    assert finished["state"] == "completed"
    assert finished["counts"]["completed"] == 3
    assert finished["usage"]["completion_tokens"] > 0
    assert finished["delivery_id"] != review["delivery_id"]


def test_the_endpoint_and_secret_come_from_the_environment_and_stay_out_of_sight() -> None:
    url = "https://hooks.example.com/T0/secret-token"
    settings = Settings.from_env({"TASKPOOL_WEBHOOK_URL": url, "TASKPOOL_WEBHOOK_SECRET": "s3"})
    assert settings.webhook_url is not None
    assert settings.webhook_url.get_secret_value() == url
    assert "secret-token" not in repr(settings)
    assert "s3" not in repr(settings)
    with pytest.raises(SettingsError) as bad:
        Settings.from_env({"TASKPOOL_WEBHOOK_URL": "hooks.example.com"})
    assert "TASKPOOL_WEBHOOK_URL: Value error, must be an http:// or https:// URL" in str(bad.value)


async def test_a_batch_cancelled_from_temporal_still_announces_its_end(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    receiver: Receiver,
    batch_id: str,
) -> None:
    script_slow_task(scripted, "hold", seconds=30)
    configured = settings.model_copy(update={"webhook_url": SecretStr(receiver.url)})
    async with running_worker(client, configured):
        handle = await start_test_batch(
            client, settings, batch_id, [TaskSpec(id="hold", input="Hold.")]
        )

        async def running() -> None:
            assert (await batch_status(client, batch_id)).in_flight == 1

        await eventually(running)
        # The UI's Request Cancellation: the batch ends as a cancelled workflow.
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await result_in_time(handle)

        async def announced() -> None:
            assert len(receiver.received) == 1

        await eventually(announced)

    (finished,) = receiver.deliveries()
    assert (finished["event"], finished["state"]) == ("batch.finished", "cancelled")
    assert finished["counts"]["cancelled"] == 1
    # Without a secret the delivery goes unsigned.
    assert SIGNATURE_HEADER not in receiver.received[0][0]


async def test_a_delivery_is_retried_after_408_429_and_no_answer_and_lands_once(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    receiver: Receiver,
    batch_id: str,
) -> None:
    configured = settings.model_copy(
        update={"webhook_url": SecretStr(receiver.url), "webhook_secret": SecretStr(SECRET)}
    )
    receiver.answers = [408, 429, DROP, 200]
    async with running_worker(client, configured):
        handle = await start_test_batch(client, settings, batch_id, documents(1))
        assert (await result_in_time(handle)).state is BatchState.COMPLETED
        deliveries = client.get_workflow_handle(
            names.webhook_workflow_id(batch_id, 1), result_type=bool
        )
        # Retried after 2, 4 and 8 s.
        delivered = await asyncio.wait_for(deliveries.result(), timeout=60)

    assert delivered is True
    # Every try carried the same delivery, so a receiver keying on its id takes it once.
    assert len(receiver.received) == 4
    assert {headers[DELIVERY_HEADER] for headers, _ in receiver.received} == {
        names.webhook_workflow_id(batch_id, 1)
    }
    assert len({body for _, body in receiver.received}) == 1
    for headers, body in receiver.received:
        assert verify_signature(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    (finished, *_) = receiver.deliveries()
    assert (finished["event"], finished["state"]) == ("batch.finished", "completed")


async def test_the_endpoint_and_secret_stay_out_of_every_history_of_a_batch(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    receiver: Receiver,
    batch_id: str,
) -> None:
    token = f"token-{uuid.uuid4().hex}"
    secret = f"secret-{uuid.uuid4().hex}"
    configured = settings.model_copy(
        update={
            "webhook_url": SecretStr(f"{receiver.url}/{token}"),
            "webhook_secret": SecretStr(secret),
        }
    )
    # Several batch runs, so that the state carried across continue-as-new is looked at too.
    options = BatchOptions(concurrency=1, continue_as_new_after=1)
    async with running_worker(client, configured):
        handle = await start_test_batch(client, settings, batch_id, documents(3), options)
        assert (await result_in_time(handle)).state is BatchState.COMPLETED

        async def announced() -> None:
            assert len(receiver.received) == 1

        await eventually(announced)
    headers, body = receiver.received[0]
    assert verify_signature(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])

    expected = {
        batch_id,
        names.webhook_workflow_id(batch_id, 1),
        *(names.task_workflow_id(batch_id, f"doc-{i}", 1) for i in range(3)),
    }

    async def every_run_listed() -> list[tuple[str, str]]:
        runs = [
            (execution.id, execution.run_id)
            async for execution in client.list_workflows(f"WorkflowId STARTS_WITH '{batch_id}'")
        ]
        assert {workflow_id for workflow_id, _ in runs} == expected
        assert sum(1 for workflow_id, _ in runs if workflow_id == batch_id) >= 2
        return runs

    for workflow_id, run_id in await eventually(every_run_listed):
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        # Payloads as stored: the raw bytes of every event, not a rendering that might encode them.
        stored = b"".join(event.SerializeToString() for event in history.events)
        if workflow_id == names.webhook_workflow_id(batch_id, 1):
            # The delivery's payload is there to be seen: the search reads payloads.
            assert b'"event":"batch.finished"' in stored
        for hidden in (token, secret, receiver.url):
            assert hidden.encode() not in stored, f"{hidden!r} is in {workflow_id}'s history"

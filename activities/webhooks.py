"""Webhook deliveries: a batch's news (it finished, or its results wait for review) POSTed as JSON
to the endpoint the workers are configured with, signed with a shared secret.

The endpoint and the secret are worker configuration (TASKPOOL_WEBHOOK_URL and
TASKPOOL_WEBHOOK_SECRET): an endpoint's URL often carries a credential of its own, so neither
enters a workflow's input or history. A receiver checks the signature with `verify_signature`
(or the same few lines in its own language) and uses the delivery id to ignore a delivery it has
already taken: Temporal retries a delivery that did not get a 2xx answer, so one may arrive twice.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import aiohttp
from temporalio import activity
from temporalio.exceptions import ApplicationError

from taskpool.domain import names
from taskpool.domain.batch import WebhookDelivery

EVENT_HEADER = "X-Taskpool-Event"
DELIVERY_HEADER = "X-Taskpool-Delivery"
TIMESTAMP_HEADER = "X-Taskpool-Timestamp"
SIGNATURE_HEADER = "X-Taskpool-Signature"
# How old a signed timestamp a receiver should accept: longer than any clock skew, short enough
# that a captured request cannot be replayed later.
SIGNATURE_TOLERANCE_SECONDS = 300
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `<timestamp>.<body>` with the shared secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: str, timestamp: str, body: bytes, header: str, *, now: float | None = None
) -> bool:
    """Whether a delivery is genuine and recent: what a receiver checks before trusting it."""
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return False
    if abs(age) > SIGNATURE_TOLERANCE_SECONDS:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)


class WebhookActivities:
    def __init__(self, url: str | None, secret: str | None) -> None:
        self._url = url
        self._secret = secret

    @activity.defn(name=names.DELIVER_WEBHOOK)
    async def deliver(self, delivery: WebhookDelivery) -> bool:
        """POST the delivery; True once the endpoint took it, False when none is configured."""
        if self._url is None:
            activity.logger.info(
                "No webhook endpoint configured (TASKPOOL_WEBHOOK_URL): %s not sent",
                delivery.delivery_id,
            )
            return False
        body = delivery.model_dump_json().encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "taskpool-webhooks",
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: delivery.delivery_id,
        }
        if self._secret is not None:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(self._secret, timestamp, body)
        try:
            # Deliveries are rare: a session of their own each keeps nothing open in between.
            async with (
                aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session,
                session.post(self._url, data=body, headers=headers) as response,
            ):
                status = response.status
                answer = await response.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as err:
            raise ApplicationError(
                f"the webhook endpoint did not answer: {err!r}", type="webhook_unreachable"
            ) from err
        if 200 <= status < 300:
            return True
        # The endpoint's own trouble (or a limit on its side) passes; any other refusal would
        # be refused again.
        passing = status in (408, 429) or status >= 500
        raise ApplicationError(
            f"the webhook endpoint answered {status}: {answer[:200]}",
            type="webhook_refused",
            non_retryable=not passing,
        )

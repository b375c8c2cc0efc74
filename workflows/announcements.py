"""Announcer: the batch's webhooks: when to announce, and the delivery each announcement starts.

Every batch announces that it finished, and each time it comes to await review. A delivery is a
WebhookWorkflow of its own (workflows/webhook.py) that the batch starts and abandons: it retries on
its own, and the batch goes on (or ends) meanwhile. Where it goes is the workers' configuration.
Deterministic: the workflow passes the clock and the start of a delivery; tests pass fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from taskpool.domain import names
    from taskpool.domain.batch import BatchState, BatchStatus, WebhookDelivery, WebhookEvent


async def start_webhook_workflow(delivery: WebhookDelivery) -> None:
    """Start a delivery inside the batch workflow and leave it running."""
    try:
        await workflow.start_child_workflow(
            names.WEBHOOK_WORKFLOW,
            delivery,
            id=delivery.delivery_id,
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            static_summary=f"{delivery.event} webhook of batch {delivery.batch_id}"[:200],
        )
    except (WorkflowAlreadyStartedError, FailureError) as err:
        workflow.logger.warning("Webhook %s not started: %s", delivery.delivery_id, err)


class Announcer:
    def __init__(
        self,
        batch_id: str,
        *,
        sent: int,
        review_announced: bool,
        now: Callable[[], datetime],
        start_delivery: Callable[[WebhookDelivery], Awaitable[None]] = start_webhook_workflow,
    ) -> None:
        """`sent` and `review_announced` carry on from the batch's previous run."""
        self._batch_id = batch_id
        self._now = now
        self._start_delivery = start_delivery
        # Deliveries started so far (their ids count on), and whether the batch has announced
        # that it awaits review since it last had something to run.
        self.sent = sent
        self.review_announced = review_announced

    async def review_when_due(self, status: BatchStatus) -> None:
        """Announce each time the batch comes to await review (once, across continue-as-new)."""
        awaiting = status.state is BatchState.AWAITING_REVIEW
        if awaiting == self.review_announced:
            return
        self.review_announced = awaiting
        if awaiting:
            await self.announce("batch.awaiting_review", status)

    async def announce(self, event: WebhookEvent, status: BatchStatus) -> None:
        self.sent += 1
        delivery = WebhookDelivery(
            event=event,
            # The same on every retry of the delivery, so a receiver can take it once.
            delivery_id=names.webhook_workflow_id(self._batch_id, self.sent),
            batch_id=self._batch_id,
            state=status.state,
            total=status.total,
            counts=status.counts,
            usage=status.usage,
            llm_calls=status.llm_calls,
            at=self._now(),
        )
        await self._start_delivery(delivery)

"""WebhookWorkflow: delivers one of a batch's webhooks, retrying until the endpoint takes it.

A workflow of its own, which the batch starts and abandons, so a batch can finish (and its result
be read) while the endpoint is down; the delivery goes on retrying for up to a day, and one that
never lands shows in the Temporal UI as a failed workflow next to its batch.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from taskpool.domain import names
    from taskpool.domain.activity_options import WEBHOOK_DELIVERY_OPTIONS
    from taskpool.domain.batch import WebhookDelivery


@workflow.defn(name=names.WEBHOOK_WORKFLOW)
class WebhookWorkflow:
    @workflow.run
    async def run(self, delivery: WebhookDelivery) -> bool:
        delivered: bool = await workflow.execute_activity(
            names.DELIVER_WEBHOOK, delivery, result_type=bool, **WEBHOOK_DELIVERY_OPTIONS
        )
        return delivered

"""taskpool worker: polls the task queue and runs batch and task workflows and their activities.

Configuration comes from the environment (see taskpool.infra.settings and README); Temporal
connection settings from the SDK's standard env config (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator

import openai
import structlog
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.llm.turn import LlmActivities
from activities.store_writes import LifecycleActivities
from activities.webhooks import WebhookActivities
from taskpool.infra.log_config import configure_logging
from taskpool.infra.ratelimit import (
    InMemoryTokenBudget,
    TokenBudget,
    open_token_budget,
    task_queue_rate,
)
from taskpool.infra.settings import Settings, SettingsError
from taskpool.infra.store import TaskStore, opened_store
from taskpool.infra.temporal_connection import connect, ensure_search_attributes
from workflows.batch import BatchWorkflow
from workflows.task import TaskWorkflow
from workflows.webhook import WebhookWorkflow

log = structlog.get_logger("taskpool.worker")

# Workflow-task slots beyond those local model turns may hold: the SDK's default count.
WORKFLOW_TASK_HEADROOM = 100


def build_openai_client(settings: Settings) -> openai.AsyncOpenAI:
    # Temporal owns retries: one HTTP attempt per activity attempt, all visible in history.
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return openai.AsyncOpenAI(
        api_key=api_key or "not-needed",
        base_url=settings.openai_base_url,
        max_retries=0,
    )


def build_worker(
    client: Client,
    settings: Settings,
    *,
    llm_client: openai.AsyncOpenAI,
    store: TaskStore,
    budget: TokenBudget | None = None,
) -> Worker:
    """The worker for these settings. With TASKPOOL_TPM set and no `budget` given, the token
    budget covers this process only (running_worker passes the one shared through a file)."""
    if budget is None and settings.tokens_per_minute is not None:
        budget = InMemoryTokenBudget(settings.tokens_per_minute)
    rpm = settings.requests_per_minute
    llm = LlmActivities(
        llm_client,
        default_model=settings.model,
        tool_mode=settings.tool_mode,
        budget=budget,
        temperature=settings.temperature,
        json_max_string_length=settings.json_max_string_length,
        store=store,
        local_turns_refused_because=(
            None
            if rpm is None
            else "TASKPOOL_RPM limits requests through the task queue, which local activities "
            "bypass; start the batch with --model-calls activity"
        ),
    )
    lifecycle = LifecycleActivities(store)
    url, secret = settings.webhook_url, settings.webhook_secret
    webhooks = WebhookActivities(
        None if url is None else url.get_secret_value(),
        None if secret is None else secret.get_secret_value(),
    )
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[BatchWorkflow, TaskWorkflow, WebhookWorkflow],
        activities=[
            llm.chat_turn,
            lifecycle.register_tasks,
            lifecycle.record_tasks,
            webhooks.deliver,
        ],
        max_concurrent_activities=settings.max_concurrent_activities,
        # A model turn run as a local activity (model_calls="local") holds a local-activity slot
        # and, for as long as it runs, its workflow's workflow-task slot: so as many of each as
        # of model calls, and room beyond them for the workflow tasks of everything else.
        max_concurrent_local_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_activities + WORKFLOW_TASK_HEADROOM,
        max_cached_workflows=settings.max_cached_workflows,
        workflow_runner=(
            SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()
        ),
        # The server enforces this across every worker polling the queue. Store writes are local
        # activities, and a batch delivers a webhook or two in its life, so it limits model calls.
        max_task_queue_activities_per_second=None if rpm is None else task_queue_rate(rpm),
        # Eager execution hands the LLM activity to this worker in the reply to the workflow
        # task that scheduled it (one server round trip less per turn), but it bypasses the
        # task-queue rate limit, so a rate-limited worker does without.
        disable_eager_activity_execution=rpm is not None,
    )


@contextlib.asynccontextmanager
async def running_worker(client: Client, settings: Settings) -> AsyncIterator[Worker]:
    """A started worker with its clients; everything is closed on exit."""
    await ensure_search_attributes(client)
    async with opened_store(settings.store_url) as store:
        llm_client = build_openai_client(settings)
        budget = open_token_budget(settings)
        try:
            worker = build_worker(
                client, settings, llm_client=llm_client, store=store, budget=budget
            )
            async with worker:
                yield worker
        finally:
            await llm_client.close()
            if budget is not None:
                await budget.close()


async def serve(settings: Settings) -> None:
    client = await connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_worker(client, settings):
        log.info(
            "worker started",
            task_queue=settings.task_queue,
            namespace=client.namespace,
            model=settings.model,
            base_url=settings.openai_base_url or "https://api.openai.com/v1",
            store=settings.store_url,
            webhooks="on" if settings.webhook_url is not None else "off",
        )
        await stop.wait()
        log.info("worker stopping: finishing what it holds")


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"worker: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except RuntimeError as err:
        # Connection failures surface as RuntimeError from the SDK's core: one clear line, as
        # for any other configuration mistake, not a traceback.
        print(f"worker: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
